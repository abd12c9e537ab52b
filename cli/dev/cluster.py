"""The local cluster: `swarmctl dev up|status|down` on one Linux machine, as root.

    root namespace     192.168.77.1  etcd :2379, swarm-controller :2377 (join port
         |                           :2378), registry :5000, and the operator's swarmctl;
         |                           with --controllers N / --etcd-members M, the i-th
         |                           controller and etcd member (from 0) on the port
         |                           above + 100*i (:2477, :2479...)
    <prefix>ul         the underlay bridge (a namespace of its own: see hosts.py)
         |
    <prefix>h1..hN     192.168.77.11..  one simulated host each, running a real
                                        swarm-agent (entered with nsenter --net)

Everything a cluster makes is named after it and recorded in its state file
(/var/lib/swarm-dev/NAME/cluster.json) as it is made, so that `down` -- or an
`up` after a crash or a reboot -- finds and removes all of it: processes (by
pid and start time), the agents' containers, mounts and cgroups, namespaces
and links, files, and the swarmctl context.

Mutual TLS is on, as in production: the controller starts with --init (its
KEK in secrets/kek) and writes an admin identity (admin/), the agents join
with the worker token, and the swarmctl context names the admin identity.
`insecure=True` (`dev up --insecure`) runs everything in plaintext instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING

from swarm.host.mounts import remove_tree

from .context import Context, invoking_user, remove_context, write_context
from .daemons import Daemon, alive, spawn, stop
from .etcd import etcd_argv
from .hosts import FIRST_HOST_OFFSET, Hosts, nsenter_argv, remove_namespaces
from .images import PATH_ENV, build_image, busybox_entries
from .registry import REGISTRY_BINARY, write_registry_config

if TYPE_CHECKING:
    import grpc

log = logging.getLogger(__name__)

STATE_ROOT = Path("/var/lib/swarm-dev")
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")  # it names links: 15 characters at most
CONTROLLER_PORT, ETCD_PORT, ETCD_PEER_PORT, REGISTRY_PORT = 2377, 2379, 2380, 5000
PORT_STRIDE = 100  # the i-th controller or etcd member listens on the port above + 100*i
MAX_CONTROLLERS = MAX_ETCD_MEMBERS = 7
# Metrics and health (--metrics-addr): the i-th controller on the gateway's port
# METRICS_PORT + 100*i, each agent on its host's address (docker's metrics port).
METRICS_PORT = 9323
DEMO_IMAGE = "demo"

# The demo image's web server: a page naming the task and the node that answered.
DEMO_WEB = b"""#!/bin/sh
mkdir -p /www
echo "hello from ${TASK_NAME:-$(hostname)} on ${NODE_NAME:-an unnamed node}" > /www/index.html
exec httpd -f -p "${PORT:-80}" -h /www
"""


class ClusterError(Exception):
    """The local cluster cannot be brought up or down; the message says why."""


@dataclass
class NodeRecord:
    host: str  # h1...
    netns: str
    address: str
    state_dir: str


@dataclass
class ClusterState:
    name: str
    subnet: str
    gateway: str = ""
    daemons: list[Daemon] = field(default_factory=list)
    nodes: list[NodeRecord] = field(default_factory=list)
    insecure: bool = False
    controllers: int = 1
    etcd_members: int = 1
    metrics: bool = False  # whether the daemons serve metrics (clusters made before: not)

    @property
    def controller(self) -> str:
        """The first controller: what the swarmctl context names."""
        return self.controller_addrs[0]

    @property
    def controller_addrs(self) -> list[str]:
        return [f"{self.gateway}:{CONTROLLER_PORT + PORT_STRIDE * i}"
                for i in range(self.controllers)]

    @property
    def etcd_endpoints(self) -> list[str]:
        return [f"{self.gateway}:{ETCD_PORT + PORT_STRIDE * i}" for i in range(self.etcd_members)]

    @property
    def registry(self) -> str:
        return f"{self.gateway}:{REGISTRY_PORT}"

    @property
    def prefix(self) -> str:
        return namespace_prefix(self.name)


def validate_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ClusterError(f"--name {name!r}: expected a lowercase letter then up to 9 "
                           "lowercase letters or digits")
    return name


def namespace_prefix(name: str) -> str:
    return f"swd-{name}-"


def root_link(name: str) -> str:
    return f"swd-{name}"


def state_dir(name: str) -> Path:
    return STATE_ROOT / name


def _state_file(name: str) -> Path:
    return state_dir(name) / "cluster.json"


def save_state(state: ClusterState) -> None:
    path = _state_file(state.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(asdict(state), indent=1))
    partial.replace(path)


def load_state(name: str) -> ClusterState | None:
    try:
        data = json.loads(_state_file(name).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise ClusterError(f"{_state_file(name)}: unreadable ({error}); "
                           f"run `swarmctl dev down --name {name}`") from None
    return ClusterState(
        name=data["name"], subnet=data["subnet"], gateway=data.get("gateway", ""),
        daemons=[Daemon(**d) for d in data.get("daemons", [])],
        nodes=[NodeRecord(**n) for n in data.get("nodes", [])],
        insecure=bool(data.get("insecure", False)),
        controllers=int(data.get("controllers", 1)), etcd_members=int(data.get("etcd_members", 1)),
        metrics=bool(data.get("metrics", False)))


def _require_root() -> None:
    if os.geteuid() != 0:
        raise ClusterError("the local cluster needs root (namespaces, runc, cgroups): "
                           "run it with sudo")


def _wait(what: str, ready: Callable[[], bool], daemon: Daemon | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if daemon is not None and not alive(daemon):
            raise ClusterError(f"{what} exited while starting; see {daemon.log}")
        if time.monotonic() > deadline:
            raise ClusterError(f"{what} not ready within {timeout:.0f}s"
                               + (f"; see {daemon.log}" if daemon is not None else ""))
        time.sleep(0.1)


def _listening(host: str, port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False
    return check


def _registry_answers(addr: str) -> Callable[[], bool]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def check() -> bool:
        try:
            with opener.open(f"http://{addr}/v2/", timeout=1):
                return True
        except (urllib.error.URLError, OSError):
            return False
    return check


def push_demo_image(registry: str) -> str:
    """The demo image: Debian's static busybox and a web server script."""
    entries = busybox_entries({"/bin/demo-web": DEMO_WEB})
    # busybox_entries makes files 0644: the script must be executable.
    for info, _ in entries:
        if info.name == "bin/demo-web":
            info.mode = 0o755
    config = {"Cmd": ["/bin/demo-web"], "Env": [PATH_ENV], "ExposedPorts": {"80/tcp": {}}}
    return build_image(registry, DEMO_IMAGE, "latest", [entries], config)


def admin_dir(name: str) -> Path:
    """The admin identity the controller writes (--admin-out) for swarmctl."""
    return state_dir(name) / "admin"


def control_channel(state: ClusterState) -> grpc.Channel:
    """A channel to the cluster's controllers with its admin identity: any one
    that answers (every controller serves the control API)."""
    from swarm.api import channels
    from swarm.api.pki import NodeIdentity

    from ..client import grpc_target

    identity = None if state.insecure else NodeIdentity.load(admin_dir(state.name))
    target = grpc_target(",".join(state.controller_addrs))
    return channels.blocking_client_channel(target, identity, insecure=state.insecure)


def worker_token(state: ClusterState) -> str:
    from swarm.api.v1 import ca_pb2 as capb
    from swarm.api.v1 import ca_pb2_grpc as cagrpc

    with control_channel(state) as channel:
        return cagrpc.CAAdminStub(channel).GetJoinToken(
            capb.GetJoinTokenRequest(role=capb.JOIN_ROLE_WORKER), timeout=10).token


def _give_to_sudo_user(directory: Path) -> None:
    """`sudo swarmctl dev up` makes the admin identity; the operator's own
    swarmctl (not root) is to use it."""
    user = invoking_user()
    if user is None:
        return
    for path in (directory, *directory.iterdir()):
        with contextlib.suppress(OSError):
            os.chown(path, user.uid, user.gid)


def _ready_nodes(state: ClusterState) -> int:
    from swarm.api.v1 import control_pb2 as cpb
    from swarm.api.v1 import control_pb2_grpc as cgrpc
    from swarm.api.v1 import objects_pb2 as pb

    with control_channel(state) as channel:
        try:
            response = cgrpc.ControlStub(channel).ListNodes(cpb.ListNodesRequest(), timeout=2)
        except grpc.RpcError:
            return -1
    return sum(node.status.state == pb.NodeStatus.READY for node in response.nodes)


def up(name: str, nodes: int, subnet: str, say: Callable[[str], None], *,
       insecure: bool = False, dns_forwarders: Sequence[str] = (), controllers: int = 1,
       etcd_members: int = 1, agent_args: Sequence[str] = (),
       host_agent_args: Mapping[str, Sequence[str]] | None = None,
       node_disk_bytes: int = 0) -> ClusterState:
    """Bring the cluster up (after removing whatever an earlier run left).
    dns_forwarders: the agents' upstream resolvers (IP[:PORT], reachable from
    the hosts: the gateway's address); none by default, as the hosts have no
    route out: names that are not the cluster's are refused at once.
    controllers, etcd_members: how many of each (an etcd cluster of that many
    members). agent_args: more flags for every agent (tests); host_agent_args:
    more flags for one host's agent, by host name (h1, h2, ...: e.g. the one
    host with a GPU). node_disk_bytes:
    give each agent's state dir a tmpfs of this size (a small disk that tests
    can fill; 0: the state dirs are plain directories)."""
    _require_root()
    validate_name(name)
    if not 1 <= nodes <= 50:
        raise ClusterError(f"--nodes {nodes}: expected 1 to 50")
    if not 1 <= controllers <= MAX_CONTROLLERS:
        raise ClusterError(f"--controllers {controllers}: expected 1 to {MAX_CONTROLLERS}")
    if not 1 <= etcd_members <= MAX_ETCD_MEMBERS:
        raise ClusterError(f"--etcd-members {etcd_members}: expected 1 to {MAX_ETCD_MEMBERS}")
    try:
        network = IPv4Network(subnet)
    except ValueError as error:
        raise ClusterError(f"--subnet {subnet!r}: {error}") from None
    if network.num_addresses < FIRST_HOST_OFFSET + nodes + 2:
        raise ClusterError(f"--subnet {subnet}: too small for {nodes} nodes")
    per_host = {host: tuple(args) for host, args in (host_agent_args or {}).items()}
    if problem := host_args_error(per_host, nodes):
        raise ClusterError(problem)
    existing = load_state(name)
    if existing is not None and existing.daemons and all(alive(d) for d in existing.daemons):
        raise ClusterError(f"cluster {name!r} is up already (swarmctl dev status / dev down)")
    if existing is not None or _leftovers(name):
        say(f"removing what an earlier run of {name!r} left")
        down(name, say=lambda _: None)
    for daemon_path in (REGISTRY_BINARY, "/usr/sbin/runc", "/usr/bin/conmon", "/usr/bin/skopeo"):
        if not os.path.exists(daemon_path):
            raise ClusterError(f"{daemon_path} missing: run deploy/setup.sh")
    state = ClusterState(name=name, subnet=str(network), insecure=insecure,
                         controllers=controllers, etcd_members=etcd_members, metrics=True)
    save_state(state)
    try:
        _bring_up(state, nodes, say, tuple(dns_forwarders) or ("none",), tuple(agent_args),
                  node_disk_bytes, per_host)
    except BaseException:
        say("start failed: removing what was made")
        with contextlib.suppress(Exception):
            down(name, say=lambda _: None)
        raise
    return state


def host_names(nodes: int) -> list[str]:
    return [f"h{i}" for i in range(1, nodes + 1)]


def host_args_error(per_host: Mapping[str, Sequence[str]], nodes: int) -> str:
    """'' when every host named has a place in a cluster of `nodes` hosts."""
    names = host_names(nodes)
    for host in per_host:
        if host not in names:
            return (f"--agent-arg {host}:...: no host {host!r} in a cluster of {nodes} "
                    f"(hosts {names[0]} to {names[-1]})")
    return ""


def _leftovers(name: str) -> bool:
    prefix = namespace_prefix(name)
    netns_dir = Path("/run/netns")
    has_netns = netns_dir.is_dir() and any(n.startswith(prefix) for n in os.listdir(netns_dir))
    return has_netns or state_dir(name).exists() or Path(f"/sys/class/net/{root_link(name)}").exists()


def _bring_up(state: ClusterState, nodes: int, say: Callable[[str], None],
              dns_forwarders: tuple[str, ...], agent_args: tuple[str, ...] = (),
              node_disk_bytes: int = 0,
              host_agent_args: Mapping[str, tuple[str, ...]] | None = None) -> None:
    directory = state_dir(state.name)
    logs = directory / "logs"
    say(f"creating {nodes} hosts on {state.subnet}")
    hosts = Hosts.create(nodes, prefix=state.prefix, subnet=state.subnet)
    state.gateway = str(hosts.attach_root(root_link(state.name)).ip)
    state.nodes = [NodeRecord(host.name, host.netns, str(host.ip),
                              str(directory / "nodes" / host.name)) for host in hosts]
    save_state(state)
    gateway = state.gateway

    def start(role: str, argv: list[str], env: dict[str, str] | None = None) -> Daemon:
        daemon = spawn(role, argv, logs / f"{role.replace(' ', '-')}.log", env)
        state.daemons.append(daemon)
        save_state(state)  # recorded before anything waits on it
        return daemon

    _start_etcd(state, start, say)

    say("starting the registry and pushing the demo image")
    (directory / "registry").mkdir(parents=True, exist_ok=True)
    config = write_registry_config(directory / "registry", state.registry)
    registry = start("registry", [REGISTRY_BINARY, "serve", str(config)],
                     {"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    _wait("registry", _registry_answers(state.registry), registry, 30)
    image = push_demo_image(state.registry)
    say(f"  {image}")

    say(f"starting {state.controllers} controller(s)"
        + (" (INSECURE: plaintext)" if state.insecure else ""))
    for index, addr in enumerate(state.controller_addrs):
        # The first initialises the cluster (and its KEK) alone; the others share the KEK.
        controller = start(controller_role(state, index), controller_argv(state, index))
        _wait(controller.role, _listening(gateway, int(addr.rsplit(":", 1)[1])), controller, 30)
    agent_security = ["--insecure"] if state.insecure else ["--join-token", worker_token(state)]

    if node_disk_bytes:
        for node in state.nodes:
            # Removed by `down` with the rest of the state dir (mounts first).
            Path(node.state_dir).mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={node_disk_bytes}", "tmpfs",
                            node.state_dir], check=True, capture_output=True)
    say(f"starting {nodes} agents")
    agents = []
    for index, node in enumerate(state.nodes):
        # The first host is a manager (placement's node.role), as a one-manager
        # Swarm's first node is: stacks pinned to node.role==manager land there.
        role = ["--role", "manager" if index == 0 else "worker"]
        agents.append(start(f"agent {node.host}", nsenter_argv(node.netns, [
            sys.executable, "-m", "swarm.agent.main",
            *(f"--controller={addr}" for addr in state.controller_addrs),
            "--state-dir", node.state_dir, "--advertise-addr", node.address,
            "--hostname", f"{state.name}-{node.host}", "--registry-insecure", state.registry,
            # The monitoring example reads the host's /proc through a bind mount.
            "--bind-root", "/proc", *role, *agent_security,
            *(["--metrics-addr", f"{node.address.split('/')[0]}:{METRICS_PORT}"]
              if state.metrics else []),
            *(f"--dns-forwarder={upstream}" for upstream in dns_forwarders), *agent_args,
            *(host_agent_args or {}).get(node.host, ())])))
    _wait(f"{nodes} nodes", lambda: _ready_nodes(state) >= nodes, None, 60)
    for agent in agents:
        if not alive(agent):
            raise ClusterError(f"{agent.role} exited; see {agent.log}")
    # Every controller, comma-separated: plain swarmctl uses any that answers.
    controllers = ",".join(state.controller_addrs)
    if state.insecure:
        write_context(Context(name=state.name, controller=controllers))
    else:
        admin = admin_dir(state.name)
        _give_to_sudo_user(admin)
        write_context(Context(name=state.name, controller=controllers,
                              cert=str(admin / "node.crt"), key=str(admin / "node.key"),
                              ca=str(admin / "ca.crt")))


def etcd_role(state: ClusterState, index: int) -> str:
    return "etcd" if state.etcd_members == 1 else f"etcd {index + 1}"


def controller_role(state: ClusterState, index: int) -> str:
    return "controller" if state.controllers == 1 else f"controller {index + 1}"


def etcd_member_argv(state: ClusterState, index: int) -> list[str]:
    """Member index of the cluster's etcd; the same argv restarts it (chaos tests)."""
    gateway = state.gateway
    peers = [(f"{state.name}-e{i}", f"http://{gateway}:{ETCD_PEER_PORT + PORT_STRIDE * i}")
             for i in range(state.etcd_members)]
    data_dir = state_dir(state.name) / ("etcd" if state.etcd_members == 1 else f"etcd{index}")
    client_url = f"http://{state.etcd_endpoints[index]}"
    if state.etcd_members == 1:
        return etcd_argv(state.name, str(data_dir), client_url, peers[0][1])
    name, peer_url = peers[index]
    return etcd_argv(name, str(data_dir), client_url, peer_url, initial_cluster=peers,
                     token=f"swarm-dev-{state.name}")


def controller_argv(state: ClusterState, index: int) -> list[str]:
    """Controller index; the same argv restarts it (chaos tests)."""
    directory = state_dir(state.name)
    addr = state.controller_addrs[index]
    security = ["--insecure"] if state.insecure else [
        "--kek-file", str(directory / "secrets" / "kek"),
        *(["--init", "--admin-out", str(admin_dir(state.name))] if index == 0 else [])]
    metrics = ["--metrics-addr", f"{state.gateway}:{METRICS_PORT + PORT_STRIDE * index}"] \
        if state.metrics else []
    return [sys.executable, "-m", "swarm.controller.main", "--listen", addr,
            *(f"--etcd={endpoint}" for endpoint in state.etcd_endpoints),
            "--heartbeat-period", "2", *security, *metrics]


def _start_etcd(state: ClusterState, start: Callable[[str, list[str]], Daemon],
                say: Callable[[str], None]) -> None:
    say(f"starting etcd ({state.etcd_members} member{'s' if state.etcd_members > 1 else ''})")
    members = [start(etcd_role(state, i), etcd_member_argv(state, i))
               for i in range(state.etcd_members)]
    # Members of a new cluster answer once a quorum has met: start all, then wait.
    for member, endpoint in zip(members, state.etcd_endpoints, strict=True):
        host, port = endpoint.rsplit(":", 1)
        _wait(member.role, _listening(host, int(port)), member, 30)


def down(name: str, say: Callable[[str], None]) -> None:
    """Remove everything the cluster made; safe to repeat, and after a crash."""
    _require_root()
    validate_name(name)
    state = load_state(name)
    if state is not None:
        # Agents first (they would restart what is removed), then their
        # containers, then the control plane.
        for daemon in state.daemons:
            if daemon.role.startswith("agent") and stop(daemon):
                say(f"stopped {daemon.role}")
        for node in state.nodes:
            count = purge_node(Path(node.state_dir))
            if count:
                say(f"removed {count} containers of {node.host}")
        for daemon in state.daemons:
            if not daemon.role.startswith("agent") and stop(daemon):
                say(f"stopped {daemon.role}")
    removed = remove_namespaces(namespace_prefix(name))
    if removed:
        say(f"removed {len(removed)} network namespaces")
    _remove_link(root_link(name))
    # Mounts an interrupted run left (container rootfs overlays), then the files.
    remove_tree(state_dir(name))
    remove_context(name)


def purge_node(node_state_dir: Path) -> int:
    """Stop and remove every container an agent with this state dir ran: asked
    of `swarm-agent purge`, since the agent knows its own layout."""
    if not node_state_dir.exists():
        return 0
    done = subprocess.run([sys.executable, "-m", "swarm.agent.main", "purge", "--state-dir",
                           str(node_state_dir)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ClusterError(f"purging {node_state_dir}: {done.stderr.strip() or done.returncode}")
    return int(done.stdout.strip() or 0)


def _remove_link(link: str) -> None:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=link)
        if found:
            with contextlib.suppress(NetlinkError):
                ipr.link("del", index=found[0])


def process_address(state: ClusterState, role: str) -> str:
    """Where a process of the cluster listens (an agent: its host's address)."""
    for i in range(state.etcd_members):
        if role == etcd_role(state, i):
            return state.etcd_endpoints[i]
    for i, addr in enumerate(state.controller_addrs):
        if role == controller_role(state, i):
            return addr
    if role == "registry":
        return state.registry
    for node in state.nodes:
        if role == f"agent {node.host}":
            return node.address.split("/")[0]
    return ""


def metrics_url(state: ClusterState, role: str) -> str:
    """A controller's or agent's /metrics ('' for the others, or metrics off)."""
    if not state.metrics:
        return ""
    for i in range(state.controllers):
        if role == controller_role(state, i):
            return f"http://{state.gateway}:{METRICS_PORT + PORT_STRIDE * i}/metrics"
    if role.startswith("agent "):
        address = process_address(state, role)
        return f"http://{address}:{METRICS_PORT}/metrics" if address else ""
    return ""


def processes(state: ClusterState) -> list[dict[str, object]]:
    """Every process the cluster runs: role, pid, address, whether it runs, and its
    metrics URL (null when it has none)."""
    return [{"role": d.role, "pid": d.pid, "address": process_address(state, d.role),
             "running": alive(d), "log": d.log,
             "metrics": metrics_url(state, d.role) or None} for d in state.daemons]


def status(name: str) -> ClusterState:
    validate_name(name)
    state = load_state(name)
    if state is None:
        raise ClusterError(f"no cluster {name!r} (swarmctl dev up --name {name})")
    return state

