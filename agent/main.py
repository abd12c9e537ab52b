"""`swarm-agent`: one node's agent -- registers with the controllers, runs its
assigned tasks as runc containers (conmon-monitored), reports their status.

    swarm-agent --controller 10.0.0.1:2377 [--controller ...] --state-dir /var/lib/swarm-agent \\
        --advertise-addr 10.0.0.5 --join-token SWMTKN-1-... [--label zone=a]... \\
        [--registry-insecure HOST]... [--registry-auth-file FILE] \\
        [--hostname NAME] [--bind-root DIR]... [--cgroup-parent NAME] \\
        [--image-gc-high PCT] [--image-gc-low PCT] [--image-gc-max-bytes N] \\
        [--dns-forwarder IP[:PORT]... | --dns-forwarder none]

The first start needs --join-token (from `swarmctl cluster join-token worker`):
the agent checks the controller's CA against the token, makes its key and
gets its node certificate through the join port (--join-addr, default each
controller's port + 1). Later starts use the identity kept in the state dir
and need no token. --insecure (development only) talks plaintext instead.

Registry credentials: a task's own come with its assignment (its service's,
`swarmctl service create --with-registry-auth`); --registry-auth-file FILE
(docker's config.json format, `{"auths": {"HOST": {"auth": base64 of
user:password}}}`) gives the node's own for the registries tasks bring none
for. Read once at start; handed to skopeo in memory (agent/images/store.py),
never on a command line or in a log.

Everything the agent keeps lives under --state-dir:

    certs/         node.key (0600, never leaves the node), node.crt, ca.crt;
                   renewed at a random 50-80 % of the certificate's life
    node-id        the node ID (the certificate's CN; kept, so a restarted
                   agent is the same node and adopts its containers)
    runtime/       runc root, bundles, conmon exit files, logs, named volumes
                   (the state dir and the runtime's directories are 0700, a
                   container's config.json 0600: it holds its environment)

Task logs are rotated at 10 MiB with 3 files kept, unless the service's
--log-opt max-size/max-file say otherwise (agent/logfile.py). Containers get
the project's seccomp profile (agent/runtime/seccomp.py) and, where the node
has AppArmor, the agent's swarm-default profile (agent/apparmor.py).
    images/        the image store (layers unpacked once, shared)

Image garbage collection (agent.images.ImageGcSettings): when the filesystem
holding the image store is more than --image-gc-high percent full (default
80), images no container uses go, least recently used first, until it is at
most --image-gc-low percent full (default 60). With --image-gc-max-bytes N
the store's own size is measured against N bytes instead. It runs every 5
minutes and after every container removal; images of containers (running,
created, being removed), of pulls in progress and images asked for in the
last 2 minutes are never removed.

Published ports (agent/published.py): nftables rules of the agent (table
swarm-mesh-<8 hex> in its namespace, and one in its ingress sandbox) forward
each port published in ingress mode, TCP and UDP, through the sandbox to a
ready task of the service on any node; host-mode ports only where a task
runs, straight to the task (which sees the client's address). The userspace
proxy serves connections from this node to 127.0.0.1, ports with
proxy-protocol=v2, and every port when nft is missing; a port it cannot
listen on is logged and retried. Stopping the agent leaves the kernel's
tables (the routing mesh serves on through an upgrade, as the containers
run on; only the loopback proxy stops), and so does a crash: while no
agent renews the sandbox's liveness, it sends connections to this node's
own tasks only, after mesh.LIVE_PERIODS heartbeat periods (agent/network/
mesh.py). The next agent takes the tables over; purge removes them.

The cgroup parent (and the network-namespace prefix derived from it) comes
from the state dir's path unless --cgroup-parent says otherwise, so several
agents on one machine, each with its own state dir, never touch each other's
containers, and a restarted agent finds its own again.

Containers on overlay networks get a DNS responder at 127.0.0.11 in their
namespace (service and task names of the networks they are on; see
agent/network/dns.py) and nftables rules balancing the services' VIPs over
their ready tasks (agent/network/lb.py). Names that are not the cluster's
are forwarded, from the agent's namespace, to the nameservers of the
agent's /etc/resolv.conf, or to each --dns-forwarder instead (in order;
`none`: not forwarded, answered REFUSED).

SIGTERM or SIGINT stops the agent cleanly and leaves the containers running;
the next agent with the same state dir adopts them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import hashlib
import ipaddress
import logging
import os
import platform
import shutil
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import swarm
from swarm.api import generic_resources, logformat, sdnotify
from swarm.api.certfiles import NodeCertificate
from swarm.api.loops import cancel_all, start_supervised
from swarm.api.registryauth import AuthFileError, Credential, parse_auth_file
from swarm.api.telemetry import metrics_addr_error
from swarm.api.v1 import objects_pb2 as pb
from swarm.host.netns import NETNS_DIR, remove_netns_blocking

from . import apparmor, timing
from .conditions import ConditionSettings, conditions_of
from .discovery import Discovery
from .identity import IdentityKeeper, JoinError, join_address, join_in_child
from .images import ImageGarbageCollector, ImageGcSettings, ImageStore, InUse
from .logs import LogPublisher
from .network import OverlayManager, OverlaySettings, lb
from .network.dns import Forwarder, Upstream, upstreams_from_resolv_conf
from .node_resources import NodeResources, discover
from .published import SANDBOX, PublishedPorts, remove_kernel_state
from .runtime import RuncRuntime, RuncSettings
from .session import AgentSession, SessionSettings, insecure_channels
from .worker import Worker

if TYPE_CHECKING:
    from swarm.api.metrics import MetricsServer

log = logging.getLogger("agent")

AGENT_VERSION = f"swarm-agent {swarm.__version__}"  # in each node description
_SUN_PATH_MAX = 107
_LONGEST_SOCKET_SUFFIX = len("/") + 64 + len("/attach")  # conmon's socket under the dir


@dataclass(frozen=True)
class AgentConfig:
    controllers: tuple[str, ...]
    state_dir: Path
    advertise_addr: str
    hostname: str
    labels: dict[str, str]
    insecure_registries: tuple[str, ...]
    cgroup_parent: str
    bind_roots: tuple[Path, ...] = ()
    image_gc: ImageGcSettings = field(default_factory=ImageGcSettings)
    log_level: str = "INFO"
    join_token: str = ""
    join_addrs: tuple[str, ...] = ()  # default: each controller's port + 1
    insecure: bool = False
    # Upstream resolvers for names that are not the cluster's; None: the
    # nameservers of /etc/resolv.conf; empty: no forwarding.
    dns_forwarders: tuple[Upstream, ...] | None = None
    conditions: ConditionSettings = field(default_factory=ConditionSettings)
    # --registry-auth-file, by registry (a Credential's repr hides its password).
    registry_credentials: dict[str, Credential] = field(default_factory=dict, repr=False)
    # The role the node registers with (placement's node.role): --role, else
    # registration_role's default.
    role: pb.NodeSpec.Role.ValueType = pb.NodeSpec.WORKER
    metrics_addr: str = ""  # --metrics-addr: Prometheus metrics and health (agent/metrics.py)
    log_format: str = "text"
    log_task_timing: bool = False  # --log-task-timing (agent/timing.py)
    # --generic-resource flags and NVIDIA devices found under --device-dir
    # (agent/node_resources.py): advertised, and the devices behind units.
    resources: NodeResources = field(default_factory=NodeResources)

    @property
    def certs_dir(self) -> Path:
        return self.state_dir / "certs"

    @property
    def runtime_dir(self) -> Path:
        return self.state_dir / "runtime"

    @property
    def images_dir(self) -> Path:
        return self.state_dir / "images"

    @property
    def node_id_file(self) -> Path:
        return self.state_dir / "node-id"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage dump: scripts and humans both read it.
        self.exit(2, f"{self.prog}: error: {message}\n")


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return value


_ROLES = {"worker": pb.NodeSpec.WORKER, "manager": pb.NodeSpec.MANAGER}


def registration_role(given: str | None, controllers: Sequence[str],
                      advertise_addr: str) -> pb.NodeSpec.Role.ValueType:
    """The role a new node registers with: --role when given, else manager when
    a controller runs beside the agent (one of --controller is on loopback or on
    the node's own --advertise-addr), as a Swarm manager node runs tasks too;
    else worker. Only the first registration uses it: after that the cluster's
    record (`swarmctl node promote/demote`) wins."""
    if given is not None:
        return _ROLES[given]
    for controller in controllers:
        host = controller.rpartition(":")[0].strip("[]")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            if host == "localhost":
                return pb.NodeSpec.MANAGER
            continue
        if address.is_loopback or str(address) == advertise_addr:
            return pb.NodeSpec.MANAGER
    return pb.NodeSpec.WORKER


def _label(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    return key.strip(), val


def _ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {value!r}") from None


def _percent(value: str) -> float:
    try:
        number = float(value.strip().removesuffix("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage, got {value!r}") from None
    if not 0 <= number <= 100:
        raise argparse.ArgumentTypeError(f"expected 0 to 100, got {value!r}")
    return number


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of bytes, got {value!r}")
    return int(value)


def _forwarder(value: str) -> Upstream | None:
    if value.strip().lower() == "none":
        return None
    try:
        return Upstream.parse(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def default_cgroup_parent(state_dir: Path) -> str:
    """Stable per state dir, short (it prefixes netns names)."""
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:10]
    return f"swarm-{digest}"


def parse_args(argv: Sequence[str] | None = None) -> AgentConfig:
    parser = _Parser(prog="swarm-agent",
                     description="Run a node agent: runs the tasks the controllers assign to "
                                 "this node as runc containers.")
    parser.add_argument("--version", action="version", version=f"swarm-agent {swarm.__version__}")
    parser.add_argument("--controller", action="append", type=_host_port, required=True,
                        metavar="HOST:PORT", help="a controller (repeatable; fails over)")
    parser.add_argument("--state-dir", required=True, type=Path,
                        help="where the agent keeps node ID, containers and images")
    parser.add_argument("--advertise-addr", required=True, type=_ip,
                        help="this node's address for the other nodes")
    parser.add_argument("--label", action="append", type=_label, default=[], metavar="K=V",
                        help="node label (repeatable)")
    parser.add_argument("--registry-insecure", action="append", default=[], metavar="HOST",
                        help="registry reachable over plain HTTP (repeatable; loopback always is)")
    parser.add_argument("--registry-auth-file", type=Path, default=None, metavar="FILE",
                        help="registry credentials for every task of this node, in docker's "
                             "config.json format (a task's own, --with-registry-auth, win)")
    parser.add_argument("--hostname", default="", help="node name (default: the host's)")
    parser.add_argument("--role", choices=sorted(_ROLES), default=None,
                        help="role for placement (node.role) when the node first registers "
                             "(default: manager when a --controller is on loopback or on "
                             "--advertise-addr, else worker)")
    parser.add_argument("--generic-resource", action="append", default=[],
                        metavar="KIND=COUNT|KIND=UNIT[,UNIT...]",
                        help="a resource this node offers to services that reserve it "
                             "(repeatable): a count (gpu=2) or named units "
                             "(gpu=GPU-UUID1,GPU-UUID2); default: gpu units for the "
                             "NVIDIA devices found under --device-dir")
    parser.add_argument("--device-dir", type=Path, default=Path("/dev"), metavar="DIR",
                        help="where to look for NVIDIA devices (nvidiaN; default /dev)")
    parser.add_argument("--cgroup-parent", default="",
                        help="cgroup parent of the containers (default: derived from --state-dir)")
    parser.add_argument("--bind-root", action="append", type=Path, default=[], metavar="DIR",
                        help="host directory whose subtree bind mounts may use (repeatable; "
                             "default: bind mounts refused, named volumes only)")
    defaults = ImageGcSettings()
    parser.add_argument("--image-gc-high", type=_percent, default=defaults.high_percent,
                        metavar="PCT", help="collect unused images above this usage "
                        f"(percent; default {defaults.high_percent:g})")
    parser.add_argument("--image-gc-low", type=_percent, default=defaults.low_percent,
                        metavar="PCT", help="... down to this usage "
                        f"(percent; default {defaults.low_percent:g})")
    parser.add_argument("--image-gc-max-bytes", type=_positive_int, default=None, metavar="N",
                        help="measure the image store's own size against N bytes "
                             "(default: the usage of its filesystem)")
    parser.add_argument("--disk-min-free", type=_positive_int,
                        default=ConditionSettings().min_free_bytes, metavar="BYTES",
                        help="report disk-pressure (no new tasks) when the state dir's file "
                             "system has less free than this, or less than 5 %% of its size "
                             "(default 256 MiB)")
    parser.add_argument("--join-token", default="", metavar="SWMTKN-1-...",
                        help="join token (`swarmctl cluster join-token worker`); needed the "
                             "first time, the identity is then kept in --state-dir/certs")
    parser.add_argument("--join-addr", action="append", type=_host_port, default=[],
                        metavar="HOST:PORT",
                        help="a controller's join port (default: each --controller's port + 1)")
    parser.add_argument("--dns-forwarder", action="append", type=_forwarder, default=[],
                        metavar="IP[:PORT]",
                        help="upstream resolver for names that are not the cluster's "
                             "(repeatable, tried in order; `none`: do not forward; default: "
                             "the nameservers of /etc/resolv.conf)")
    parser.add_argument("--insecure", action="store_true",
                        help="plaintext gRPC to --insecure controllers (development only)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)
    parser.add_argument("--log-format", default="text", choices=logformat.LOG_FORMATS,
                        help="text (default) or json: one JSON object per line")
    parser.add_argument("--log-task-timing", action="store_true",
                        help="log how long each step of each task's start took, from its "
                             "assignment to RUNNING (logger swarm.agent.timing)")
    parser.add_argument("--metrics-addr", default="", metavar="HOST:PORT",
                        help="serve Prometheus metrics on /metrics, and /healthz and /readyz, "
                             "on this address (default: off)")
    args = parser.parse_args(argv)
    if args.metrics_addr and metrics_addr_error(args.metrics_addr):
        parser.error(f"--metrics-addr: {metrics_addr_error(args.metrics_addr)}")
    try:
        generic = generic_resources.merge(args.generic_resource)
    except ValueError as error:
        parser.error(f"--generic-resource: {error}")
    state_dir: Path = args.state_dir.absolute()
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        state_dir.chmod(0o700)  # keys, environments and logs: root's alone
    except OSError as error:
        parser.error(f"--state-dir {state_dir}: {error.strerror or error}")
    cgroup_parent = args.cgroup_parent or default_cgroup_parent(state_dir)
    try:
        image_gc = ImageGcSettings(high_percent=args.image_gc_high,
                                   low_percent=args.image_gc_low,
                                   max_bytes=args.image_gc_max_bytes)
    except ValueError as error:
        parser.error(f"--image-gc-low/--image-gc-high: {error}")
    forwarders: tuple[Upstream, ...] | None = None
    if args.dns_forwarder:
        if None in args.dns_forwarder and len(args.dns_forwarder) > 1:
            parser.error("--dns-forwarder: `none` cannot be combined with resolvers")
        forwarders = tuple(f for f in args.dns_forwarder if f is not None)
    try:
        RuncSettings(state_dir=state_dir, cgroup_parent=cgroup_parent)
    except ValueError as error:
        parser.error(f"--cgroup-parent: {error}")
    credentials: dict[str, Credential] = {}
    if args.registry_auth_file is not None:
        try:
            credentials = parse_auth_file(args.registry_auth_file.read_bytes(),
                                          str(args.registry_auth_file))
        except OSError as error:
            parser.error(f"--registry-auth-file {args.registry_auth_file}: "
                         f"{error.strerror or error}")
        except AuthFileError as error:
            parser.error(f"--registry-auth-file {error}")
    return AgentConfig(
        registry_credentials=credentials,
        controllers=tuple(args.controller), state_dir=state_dir,
        advertise_addr=args.advertise_addr, hostname=args.hostname or socket.gethostname(),
        labels=dict(args.label), insecure_registries=tuple(args.registry_insecure),
        cgroup_parent=cgroup_parent, bind_roots=tuple(p.absolute() for p in args.bind_root),
        log_level=args.log_level, image_gc=image_gc, join_token=args.join_token,
        join_addrs=tuple(args.join_addr), insecure=args.insecure,
        dns_forwarders=forwarders,
        conditions=ConditionSettings(min_free_bytes=args.disk_min_free),
        role=registration_role(args.role, args.controller, args.advertise_addr),
        metrics_addr=args.metrics_addr, log_format=args.log_format,
        log_task_timing=args.log_task_timing,

        resources=discover(generic, args.device_dir.absolute()))


def _memory_bytes() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def describe(config: AgentConfig) -> pb.NodeDescription:
    return pb.NodeDescription(
        hostname=config.hostname,
        addresses=[config.advertise_addr],
        resources=pb.Resources(nano_cpus=(os.cpu_count() or 1) * 1_000_000_000,
                               memory_bytes=_memory_bytes(),
                               generic=config.resources.advertised),
        engine_labels=config.labels,
        platform=pb.Platform(os=platform.system().lower(), architecture=platform.machine()),
        advertise_addr=config.advertise_addr,
        agent_version=AGENT_VERSION,
    )


def runc_settings(config: AgentConfig) -> RuncSettings:
    socket_dir: Path | None = None
    default_socket_dir = config.runtime_dir / "sock"
    if len(str(default_socket_dir)) + _LONGEST_SOCKET_SUFFIX > _SUN_PATH_MAX:
        # conmon's attach socket must fit a sockaddr_un: a deep state dir
        # gets its sockets under /run instead (stable: named for the cgroup parent).
        socket_dir = Path("/run/swarm-agent") / config.cgroup_parent
    return RuncSettings(state_dir=config.runtime_dir, cgroup_parent=config.cgroup_parent,
                        socket_dir=socket_dir, allowed_bind_roots=config.bind_roots,
                        resource_devices=config.resources.devices)


def _read_node_id(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text().strip()
    return ""


def _registered(config: AgentConfig, worker: Worker, node_id: str) -> None:
    worker.node_id = node_id
    _write_node_id(config.node_id_file, node_id)


def _write_node_id(path: Path, node_id: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(node_id + "\n")
    os.replace(tmp, path)


async def load_or_join(config: AgentConfig) -> NodeCertificate:
    """The identity kept in the state dir (read without cryptography), or a
    new one got with the join token. Raises JoinError."""
    if (config.certs_dir / "node.crt").exists():
        try:
            return NodeCertificate.load(config.certs_dir)
        except (OSError, ValueError) as error:
            raise JoinError(f"{config.certs_dir}: {error}") from None
    if not config.join_token:
        raise JoinError("this node has not joined a cluster yet: give --join-token "
                        "(swarmctl cluster join-token worker), or --insecure for development")
    identity = await join_in_child(
        config.join_addrs or [join_address(c) for c in config.controllers], config.join_token,
        config.certs_dir)
    _write_node_id(config.node_id_file, identity.node_id)
    return identity


async def run(config: AgentConfig, stop: asyncio.Event | None = None) -> None:
    """Run the agent until `stop` is set (or SIGTERM/SIGINT)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    keeper: IdentityKeeper | None = None
    if config.insecure:
        log.warning("INSECURE: --insecure: plaintext gRPC to the controllers, no node identity. "
                    "Development only.")
    else:
        keeper = IdentityKeeper(await load_or_join(config), config.controllers,
                                directory=config.certs_dir)
        log.info("node %s (%s), certificate valid until %s", keeper.node_id,
                 keeper.identity.role.value, keeper.identity.not_after)
    node_id = _read_node_id(config.node_id_file)
    if keeper is not None and node_id != keeper.node_id:
        node_id = ""  # registering binds the certificate's ID
    runtime = RuncRuntime(dataclasses.replace(runc_settings(config),
                                              apparmor_profile=await apparmor.load_default()))
    images = ImageStore(config.images_dir, insecure_registries=config.insecure_registries,
                        gc=config.image_gc,
                        credentials={registry: (c.username, c.password)
                                     for registry, c in config.registry_credentials.items()})
    overlay = OverlayManager(overlay_settings(config))
    discovery = Discovery(Forwarder(dns_upstreams(config)))
    missing = [tool for tool in (lb.NSENTER, lb.NFT) if shutil.which(tool) is None]
    for tool in missing:
        log.warning("%s not found: tasks on overlay networks will be rejected (service "
                    "discovery needs nsenter and nftables; deploy/setup.sh installs them), and "
                    "published ports are served by the userspace proxy", tool)
    ports = PublishedPorts(overlay, overlay.settings.sandbox_name(SANDBOX), kernel=not missing,
                           local_vtep=str(overlay.settings.advertise_addr))
    worker = Worker(runtime, images, overlay=overlay, netns_path=runtime.netns_path, ports=ports,
                    discovery=discovery)

    async def in_use() -> InUse:
        return worker.images_in_use(), await asyncio.to_thread(runtime.mounted_layers)

    collector = ImageGarbageCollector(images, in_use)
    worker.on_removed = lambda task_id: collector.kick()
    worker.node_id = node_id
    worker.node_hostname = describe(config).hostname
    await worker.start()  # before the first assignment: know what to adopt
    session = AgentSession(
        config.controllers, describe(config), worker,
        keeper.channel if keeper is not None else insecure_channels(),
        node_id=node_id, labels=config.labels, role=config.role,
        on_registered=lambda node_id: _registered(config, worker, node_id),
        settings=SessionSettings(),
        services=[("log-subscriptions", LogPublisher(runtime.log_path).serve)],
        conditions=lambda: conditions_of(config.state_dir, config.conditions))
    worker.report = session.report
    session.on_beat = ports.beat
    worker.fetch_payloads = session.task_payloads
    metrics: MetricsServer | None = None
    if config.metrics_addr:
        from .metrics import serve_agent_metrics  # prometheus_client only with metrics on

        metrics = await serve_agent_metrics(config.metrics_addr, worker, session, images,
                                            discovery, ports)
    if keeper is not None:
        keeper.follow(lambda: session.controllers)
    log.info("agent starting: state dir %s, cgroup parent %s, controllers %s",
             config.state_dir, config.cgroup_parent, ", ".join(config.controllers))
    loops = [start_supervised("agent-session", session.run),
             start_supervised("image-gc", collector.run),
             start_supervised("log-rotation", runtime.rotate_logs_forever),
             start_supervised("published-ports", ports.run),
             start_supervised("routing-mesh-liveness", ports.keep_live),
             start_supervised("discovery-load-balancer", discovery.run)]
    if keeper is not None:
        loops.append(start_supervised("certificate-renewal", keeper.renew_forever))
    loops.append(start_supervised("systemd-watchdog", sdnotify.watchdog))
    sdnotify.notify("READY=1")  # Type=notify units (deploy/systemd)
    try:
        await stop.wait()
    finally:
        log.info("shutting down; containers keep running")
        sdnotify.notify("STOPPING=1")
        if metrics is not None:
            await metrics.stop()
        await cancel_all(loops)
        await ports.close(keep_kernel=True)  # the mesh serves on while no agent runs
        if keeper is not None:
            await keeper.close()
        await worker.close()
        await discovery.close()
        await images.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def dns_upstreams(config: AgentConfig,
                  resolv_conf: Path = Path("/etc/resolv.conf")) -> tuple[Upstream, ...]:
    if config.dns_forwarders is not None:
        upstreams = config.dns_forwarders
    else:
        try:
            upstreams = tuple(upstreams_from_resolv_conf(resolv_conf.read_text()))
        except OSError as error:
            log.warning("%s: %s", resolv_conf, error.strerror or error)
            upstreams = ()
    if upstreams:
        log.info("DNS: names that are not the cluster's go to %s",
                 ", ".join(map(str, upstreams)))
    else:
        log.warning("DNS: no upstream resolver: names that are not the cluster's are refused")
    return upstreams


def overlay_settings(config: AgentConfig) -> OverlaySettings:
    """Overlay namespaces are named per agent (the namespace directory is
    machine-wide, and several agents may share a machine)."""
    return OverlaySettings(advertise_addr=IPv4Address(config.advertise_addr or "127.0.0.1"),
                           netns_prefix=f"ov-{config.cgroup_parent}-")


async def purge(config: AgentConfig) -> int:
    """Stop (SIGKILL, no grace) and remove every container of this agent's state
    dir -- for tearing a node down for good, with the agent stopped. Returns how
    many there were."""
    runtime = RuncRuntime(runc_settings(config))
    containers = await runtime.list()
    for task_id in containers:
        await runtime.shutdown(task_id, "SIGKILL", 0)
        await runtime.remove(task_id)
    # The routing mesh's table (and link), this agent's overlay namespaces
    # (their devices go with them) and its ingress sandbox (same prefix).
    if shutil.which(lb.NFT) is not None and shutil.which(lb.NSENTER) is not None:
        await remove_kernel_state(None, overlay_settings(config).sandbox_name(SANDBOX))
    prefix = overlay_settings(config).netns_prefix
    if NETNS_DIR.is_dir():
        for name in sorted(os.listdir(NETNS_DIR)):
            if name.startswith(prefix):
                await asyncio.to_thread(remove_netns_blocking, name)
    root = runtime.settings.cgroup_root
    for hierarchy in (sorted(root.iterdir()) if root.is_dir() else []):
        with contextlib.suppress(OSError):
            (hierarchy / config.cgroup_parent).rmdir()  # empty by now
    return len(containers)


def purge_state_dir(state_dir: Path, cgroup_parent: str = "") -> int:
    """purge() for the agent that ran with this state dir (and cgroup parent, if
    it was not the default)."""
    state_dir = state_dir.absolute()
    config = AgentConfig(controllers=(), state_dir=state_dir, advertise_addr="", hostname="",
                         labels={}, insecure_registries=(),
                         cgroup_parent=cgroup_parent or default_cgroup_parent(state_dir))
    return asyncio.run(purge(config))


def purge_main(argv: Sequence[str]) -> None:
    """`swarm-agent purge --state-dir DIR`: purge_state_dir, printing how many
    containers there were."""
    parser = argparse.ArgumentParser(
        prog="swarm-agent purge",
        description="Stop and remove every container, overlay namespace and cgroup of the agent "
                    "that ran with this state dir (stop the agent first): a node torn down for good.")
    parser.add_argument("--state-dir", required=True, type=Path, metavar="DIR")
    parser.add_argument("--cgroup-parent", default="", help="if the agent ran with one")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("swarm-agent purge: error: must run as root")
    print(purge_state_dir(args.state_dir, args.cgroup_parent))


M_ARENA_MAX = -8  # glibc's mallopt parameter
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """At most `arenas` glibc malloc arenas (default: 8 per core, one per
    thread that allocates): the agent's worker threads (netlink, netns
    entries, gRPC's core) each keep freed memory in an arena of their own,
    which an idle agent does not need (about 2 MiB less with 50 tasks).
    Before any thread starts; False where there is no glibc mallopt."""
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def reap_children_with_pidfds() -> bool:
    """asyncio's subprocesses (conmon, runc) reaped through a pidfd on the
    event loop, as Python 3.12 does by default, instead of 3.11's thread per
    child blocked in waitpid: 50 concurrent `runc --version` through
    asyncio cost the calling process 24 ms of CPU this way against 41 ms
    (bench/spawn.py), and a burst of 50 task starts spawns about 100
    processes. False where there is nothing to change."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return False
    asyncio.get_event_loop_policy().set_child_watcher(asyncio.PidfdChildWatcher())
    return True


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["purge"]:
        purge_main(argv[1:])
        return
    config = parse_args(argv)
    logformat.configure(config.log_level, config.log_format)
    if config.log_task_timing:
        logging.getLogger(timing.log.name).setLevel(logging.DEBUG)
    if os.geteuid() != 0:
        sys.exit("swarm-agent: error: must run as root (runc, overlayfs, cgroups, namespaces)")
    limit_malloc_arenas()
    reap_children_with_pidfds()
    try:
        asyncio.run(run(config))
    except JoinError as error:
        sys.exit(f"swarm-agent: error: {error}")


if __name__ == "__main__":
    main()
