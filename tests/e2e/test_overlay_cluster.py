"""Overlay networks on the local cluster (`swarmctl dev up`): real agents,
runc containers and VXLAN between simulated hosts. What issue 4 asks of the
data plane as the controller drives it: every host's FDB and neighbour
entries are exactly the remote tasks of the network, follow scale-downs and
dead hosts, devices go with a host's last task, replacements are reachable,
and two networks cannot reach each other.

The entries are read from each agent's overlay namespace with pyroute2, as the
agent writes them (agent/network/overlay.py); what they should be is derived
from the tasks the controller lists and the hosts' underlay addresses. Each
cluster takes a while to start, so each test checks several things on one.
Every cluster is removed (`dev down`) also when a test fails, then checked for
leftovers.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from swarm.agent.main import default_cgroup_parent
from swarm.agent.network import mac_from_ip
from swarm.agent.network.overlay import VXLAN
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli.dev import cluster
from swarm.cli.dev.cluster import ClusterState, NodeRecord
from swarm.cli.dev.daemons import alive
from swarm.cli.dev.hosts import connect_in, ipr_in
from swarm.host.netns import netns_path
from tests.e2e.test_dev_cluster import netns_with, page, swarmctl
from tests.waiting import until

pytestmark = pytest.mark.timeout(300)

# Underlays of their own (test_dev_cluster.py uses 192.168.91-96.0/24).
PEERS_SUBNET = "192.168.131.0/24"
DEAD_HOST_SUBNET = "192.168.132.0/24"
CONVERGE = 60.0  # seconds: tasks starting or moving, agents applying peers


@pytest.fixture
def up() -> Iterator[Callable[[int, str], ClusterState]]:
    """Brings a local cluster up; `dev down` after the test, failed or not,
    then nothing of it may be left."""
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("the local cluster needs root (namespaces, runc); CI runs it as root")
    name = "o" + secrets.token_hex(3)
    made: list[ClusterState] = []

    def bring_up(nodes: int, subnet: str) -> ClusterState:
        made.append(cluster.up(name, nodes, subnet, say=lambda _: None))
        return made[-1]

    try:
        yield bring_up
    finally:
        cluster.down(name, say=lambda _: None)
        for state in made:
            assert not any(alive(d) for d in state.daemons)
            assert netns_with(cluster.namespace_prefix(name)) == []
            for node in state.nodes:  # the agents' task and overlay namespaces
                parent = default_cgroup_parent(Path(node.state_dir))
                assert netns_with(f"{parent}-") == netns_with(f"ov-{parent}-") == []
            assert not cluster.state_dir(name).exists()


# ---------------------------------------------------------------- reading the cluster


class View:
    """What the controller says (over the admin channel) and where things are
    on the simulated hosts."""

    def __init__(self, state: ClusterState, channel: grpc.Channel) -> None:
        self.state = state
        self.stub = cgrpc.ControlStub(channel)

    def nodes(self) -> dict[str, pb.Node]:
        return {n.id: n for n in self.stub.ListNodes(cpb.ListNodesRequest(), timeout=10).nodes}

    def record(self, node: pb.Node) -> NodeRecord:
        """The simulated host a node runs on (the dev cluster names them NAME-hN)."""
        return next(r for r in self.state.nodes
                    if node.description.hostname == f"{self.state.name}-{r.host}")

    def tasks(self) -> list[pb.Task]:
        return list(self.stub.ListTasks(cpb.ListTasksRequest(), timeout=10).tasks)

    def running(self, service: str) -> list[pb.Task]:
        return [t for t in self.tasks() if t.service_name == service and is_running(t)]

    def network_id(self, name: str) -> str:
        return self.stub.GetNetwork(cpb.GetRequest(ref=name), timeout=10).network.id


def is_running(task: pb.Task) -> bool:
    return task.desired_state == pb.RUNNING and task.status.state == pb.RUNNING


def address(task: pb.Task, network_id: str) -> str:
    (attachment,) = [a for a in task.networks if a.network_id == network_id]
    return attachment.addresses[0].split("/")[0]


def task_netns(task: pb.Task) -> str:
    (netns,) = [n for n in netns_with("swarm-") if n.endswith(task.id)]
    return netns


def overlay_netns(record: NodeRecord, network_id: str) -> str:
    """The agent's namespace for the network (agent.main.overlay_settings)."""
    return f"ov-{default_cgroup_parent(Path(record.state_dir))}-{network_id}"


@dataclass(frozen=True)
class Entries:
    fdb: frozenset[tuple[str, str]]  # (MAC, VTEP) on the VXLAN device
    neigh: frozenset[tuple[str, str]]  # (address, MAC) on the VXLAN device


def read_entries(netns: str) -> Entries | None:
    """The VXLAN device's FDB and neighbour entries; None when the network has
    no namespace on the host (or no VXLAN device in it)."""
    if not netns_path(netns).exists():
        return None
    try:
        with ipr_in(netns) as ipr:
            found = ipr.link_lookup(ifname=VXLAN)
            if not found:
                return None
            fdb = frozenset((str(m.get("lladdr")), str(m.get("dst"))) for m in ipr.fdb("dump")
                            if m["ifindex"] == found[0] and m.get("dst"))
            neigh = frozenset((str(m.get("dst")), str(m.get("lladdr")))
                              for m in ipr.neigh("dump", family=2) if m["ifindex"] == found[0])
    except FileNotFoundError:  # removed while we looked
        return None
    return Entries(fdb, neigh)


def vteps(entries: Entries) -> set[str]:
    return {vtep for _, vtep in entries.fdb}


def link_kinds(netns: str) -> set[str]:
    with ipr_in(netns) as ipr:
        return {str(m.get(("linkinfo", "kind"))) for m in ipr.link("dump")}


def peers_mismatch(view: View, network_id: str) -> str:
    """'' when every live host is as it should be for the network: a host
    running tasks on it has exactly the remote running tasks (on live nodes)
    as FDB and neighbour entries; a host with none has no namespace for it.
    Otherwise what differs (a host with a task still starting or stopping
    is not settled yet)."""
    nodes = view.nodes()
    tasks = [t for t in view.tasks() if any(a.network_id == network_id for a in t.networks)]
    live = {node_id for node_id, node in nodes.items() if node.status.state == pb.NodeStatus.READY}
    problems = []
    for node_id in sorted(live):
        record = view.record(nodes[node_id])
        local = [t for t in tasks if t.node_id == node_id and t.status.state <= pb.RUNNING]
        netns = overlay_netns(record, network_id)
        got = read_entries(netns)
        if not all(is_running(t) for t in local):
            problems.append(f"{record.host}: tasks not settled")
            continue
        if not local:
            if netns_path(netns).exists():
                problems.append(f"{record.host}: runs no task on the network but has its "
                                f"namespace (entries {got})")
            continue
        remote = [t for t in tasks if is_running(t) and t.node_id in live and t.node_id != node_id]
        want = Entries(
            frozenset((mac_from_ip(address(t, network_id)), view.record(nodes[t.node_id]).address)
                      for t in remote),
            frozenset((address(t, network_id), mac_from_ip(address(t, network_id))) for t in remote))
        if got != want:
            problems.append(f"{record.host}: has {got}, wants {want}")
    return "; ".join(problems)


def reachable(task: pb.Task, ip: str, port: int = 80) -> bool:
    """Whether a TCP connection from the task's namespace to ip:port opens
    (2 s: a task on another network gets no answer at all)."""
    try:
        connect_in(task_netns(task), (ip, port), timeout=2.0).close()
    except OSError:
        return False
    return True


def ping(task: pb.Task, ip: str) -> bool:
    result = subprocess.run(["nsenter", f"--net=/run/netns/{task_netns(task)}", "busybox", "ping",
                             "-c", "1", "-W", "2", ip], capture_output=True, timeout=20, check=False)
    return result.returncode == 0


def create_service(state: ClusterState, name: str, network: str, replicas: int) -> None:
    swarmctl("service", "create", name, "--image", f"{state.registry}/{cluster.DEMO_IMAGE}:latest",
             "--replicas", str(replicas), "--network", network, "--max-replicas-per-node", "1",
             "--env", "TASK_NAME={{.Task.Name}}", "--env", "NODE_NAME={{.Node.Hostname}}",
             "--timeout", "60s")


# ---------------------------------------------------------------- tests


def test_peers_follow_the_tasks_and_networks_are_isolated(
        up: Callable[[int, str], ClusterState]) -> None:
    state = up(3, PEERS_SUBNET)
    swarmctl("network", "create", "front", "--subnet", "10.131.1.0/24")
    swarmctl("network", "create", "back", "--subnet", "10.131.2.0/24")
    create_service(state, "web", "front", 3)
    create_service(state, "db", "back", 2)
    with cluster.control_channel(state) as channel:
        view = View(state, channel)
        front, back = view.network_id("front"), view.network_id("back")
        until(lambda: peers_mismatch(view, front), CONVERGE)
        until(lambda: peers_mismatch(view, back), CONVERGE)
        webs, dbs = view.running("web"), view.running("db")
        assert len({t.node_id for t in webs}) == 3
        assert len({t.node_id for t in dbs}) == 2
        nodes = view.nodes()
        by_host = {view.record(nodes[t.node_id]).host: t for t in webs}

        # From a container on h1 to one on h3: ping and HTTP by address.
        target = address(by_host["h3"], front)
        assert ping(by_host["h1"], target)
        assert f".{by_host['h3'].id} on {state.name}-h3" in page(task_netns(by_host["h1"]),
                                                                 f"http://{target}/")

        # Each network reaches its own tasks, never the other's -- not even
        # from a host where both have a task.
        db_a, db_b = dbs
        assert f".{db_b.id} on " in page(task_netns(db_a), f"http://{address(db_b, back)}/")
        for web in webs:
            assert not reachable(web, address(db_a, back)), web.id
            assert not reachable(db_a, address(web, front)), web.id
        # (the same check does see a task on its own network)
        assert reachable(db_a, address(db_b, back))
        assert reachable(by_host["h1"], address(by_host["h2"], front))

        # Scale down: the gone tasks' entries leave every host, and hosts
        # left with no task on the network lose its namespace and devices.
        swarmctl("service", "scale", "web=1", "--timeout", "60s")
        until(lambda: peers_mismatch(view, front), CONVERGE)
        (last,) = view.running("web")
        holders = [r for r in state.nodes if netns_path(overlay_netns(r, front)).exists()]
        assert [r.host for r in holders] == [view.record(view.nodes()[last.node_id]).host]
        assert read_entries(overlay_netns(holders[0], front)) == Entries(frozenset(), frozenset())
        for record in state.nodes:
            # The host's own namespace never holds overlay devices.
            assert not link_kinds(record.netns) & {"vxlan", "bridge"}, record.host
        # The other network is untouched.
        assert peers_mismatch(view, back) == ""
        assert reachable(db_a, address(db_b, back))


def test_a_dead_host_leaves_the_overlay_and_its_tasks_are_replaced(
        up: Callable[[int, str], ClusterState]) -> None:
    state = up(3, DEAD_HOST_SUBNET)
    swarmctl("network", "create", "front", "--subnet", "10.132.1.0/24")
    create_service(state, "web", "front", 2)
    with cluster.control_channel(state) as channel:
        view = View(state, channel)
        front = view.network_id("front")
        until(lambda: peers_mismatch(view, front), CONVERGE)
        nodes = view.nodes()
        doomed, survivor = view.running("web")
        victim = view.record(nodes[doomed.node_id])
        before = read_entries(overlay_netns(view.record(nodes[survivor.node_id]), front))
        assert before is not None
        assert victim.address in vteps(before)

        # The host dies: its agent is killed and its underlay link cut (its
        # containers, which outlive the agent, can no longer answer either).
        agent = next(d for d in state.daemons if d.role == f"agent {victim.host}")
        os.kill(agent.pid, signal.SIGKILL)
        with ipr_in(state.prefix + "ul") as underlay:
            (port,) = underlay.link_lookup(ifname=victim.host)
            underlay.link("del", index=port)

        def down() -> str:
            node = view.nodes()[doomed.node_id]
            return "" if node.status.state == pb.NodeStatus.DOWN else f"{victim.host} is {node.status}"

        # Heartbeats every 2 s in the dev cluster; DOWN after 3 missed.
        until(down, 30)

        def replaced() -> str:
            running = [t for t in view.running("web") if t.node_id != doomed.node_id]
            return "" if len(running) == 2 else f"running elsewhere: {[t.id for t in running]}"

        until(replaced, CONVERGE)
        # The live hosts' entries: the survivor and the replacement only, no
        # entry pointing at the dead host's VTEP.
        until(lambda: peers_mismatch(view, front), CONVERGE)
        for record in state.nodes:
            entries = read_entries(overlay_netns(record, front))
            if record is not victim and entries is not None:
                assert victim.address not in vteps(entries), record.host

        (replacement,) = [t for t in view.running("web") if t.id != survivor.id]
        assert replacement.node_id not in (doomed.node_id, survivor.node_id)
        new_host = view.record(view.nodes()[replacement.node_id]).host
        assert f".{replacement.id} on {state.name}-{new_host}" in page(
            task_netns(survivor), f"http://{address(replacement, front)}/")
        assert f".{survivor.id} on " in page(task_netns(replacement),
                                             f"http://{address(survivor, front)}/")
