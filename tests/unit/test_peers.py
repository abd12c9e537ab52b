"""What nodes are told about overlay networks: the endpoint index and the
per-node assignment (peers on other nodes, not DOWN ones), and the agent-side
sync with replace semantics."""

from __future__ import annotations

from ipaddress import IPv4Address

from hypothesis import given
from hypothesis import strategies as st

from agent.network.model import Peer, mac_from_ip
from agent.overlay_sync import PeerSets, RecordingOverlay, peers_of, sync_networks
from controller.peers import OverlayIndex, PeerTable, network_assignment, vtep
from swarmapi.overlay import mac_for_ip
from swarmapi.v1 import dispatcher_pb2 as dpb
from swarmapi.v1 import objects_pb2 as pb


def task(task_id: str, node_id: str, address: str, state: int = pb.RUNNING,
         network_id: str = "net") -> pb.Task:
    result = pb.Task(id=task_id, node_id=node_id, desired_state=pb.RUNNING)
    result.status.state = state  # type: ignore[assignment]
    result.networks.add(network_id=network_id, addresses=[address])
    return result


def node(node_id: str, addr: str, state: int = pb.NodeStatus.READY) -> pb.Node:
    result = pb.Node(id=node_id)
    result.status.state = state  # type: ignore[assignment]
    result.status.addr = addr
    return result


NET = pb.Network(id="net", vni=4096, subnet="10.0.0.0/24", gateway="10.0.0.1",
                 address_cursor="10.0.0.9")


def test_index_tracks_present_endpoints_and_node_networks() -> None:
    index = OverlayIndex()
    assigned = task("t1", "n1", "10.0.0.2/24", pb.ASSIGNED)
    assert index.apply(None, task("t0", "n1", "10.0.0.9/24", pb.PENDING)) == set()
    assert index.apply(None, assigned) == {"net"}
    assert index.networks_of("n1") == {"net"}
    running = task("t1", "n1", "10.0.0.2/24", pb.RUNNING)
    assert index.apply(assigned, running) == set(), "same endpoint: nothing to tell"
    assert index.apply(running, task("t1", "n1", "10.0.0.2/24", pb.COMPLETE)) == {"net"}
    assert index.networks_of("n1") == set()
    assert not index.endpoints


def test_assignment_lists_peers_on_other_live_nodes() -> None:
    index = OverlayIndex([task("a", "n1", "10.0.0.2/24"), task("b", "n2", "10.0.0.3/24"),
                          task("c", "n3", "10.0.0.4/24")])
    nodes = {"n1": node("n1", "192.168.1.1"), "n2": node("n2", "192.168.1.2:4789"),
             "n3": node("n3", "192.168.1.3", pb.NodeStatus.DOWN)}
    got = network_assignment(NET, PeerTable().refresh("net", index, nodes), "n1", None)
    assert got is not None
    assert not got.delta
    assert [(p.task_id, p.address, p.mac, p.vtep) for p in got.peers] == \
        [("b", "10.0.0.3/24", "02:42:0a:00:00:03", "192.168.1.2")]
    assert got.network.vni == 4096
    assert not got.network.address_cursor
    assert not got.network.HasField("meta")


def test_vtep_strips_ports() -> None:
    assert vtep(node("n", "10.1.1.1:2377")) == "10.1.1.1"
    assert vtep(node("n", "[fd00::1]:2377")) == "fd00::1"
    assert vtep(node("n", "fd00::1")) == "fd00::1"


@given(st.integers(0, (1 << 32) - 1))
def test_controller_and_agent_derive_the_same_mac(address: int) -> None:
    assert mac_for_ip(str(IPv4Address(address))) == mac_from_ip(IPv4Address(address))


def test_peers_convert_for_the_data_plane_and_bad_ones_are_skipped() -> None:
    entry = dpb.NetworkAssignment(network=NET, peers=[
        dpb.OverlayPeer(task_id="b", address="10.0.0.3/24", mac="02:42:0a:00:00:03",
                        vtep="192.168.1.2"),
        dpb.OverlayPeer(task_id="c", address="10.0.0.4/24", vtep="host-c.example")])
    assert peers_of(entry.peers) == [Peer.create("10.0.0.3", "192.168.1.2")]


async def test_sync_replaces_peers_and_complete_removes_the_rest() -> None:
    overlay, sets = RecordingOverlay(), PeerSets()
    peer = dpb.OverlayPeer(task_id="b", address="10.0.0.3/24", vtep="192.168.1.2")
    other = pb.Network(id="other", vni=4097, subnet="10.0.1.0/24", gateway="10.0.1.1")
    await sync_networks(overlay, dpb.Assignments(type=dpb.Assignments.INCREMENTAL, networks=[
        dpb.NetworkAssignment(network=NET, peers=[peer]), dpb.NetworkAssignment(network=other)]), sets)
    assert overlay.networks() == ["net", "other"]
    assert overlay.peers["net"] == [Peer.create("10.0.0.3", "192.168.1.2")]
    await sync_networks(overlay, dpb.Assignments(type=dpb.Assignments.INCREMENTAL, networks=[
        dpb.NetworkAssignment(network=NET)], removed_networks=["other"]), sets)
    assert overlay.networks() == ["net"]
    assert overlay.peers["net"] == []
    await sync_networks(overlay, dpb.Assignments(type=dpb.Assignments.COMPLETE), sets)
    assert overlay.networks() == []


def test_peer_table_rebuilds_only_after_a_change() -> None:
    index = OverlayIndex([task("a", "n1", "10.0.0.2/24")])
    nodes = {"n1": node("n1", "192.168.1.1")}
    table = PeerTable()
    first = table.refresh("net", index, nodes)
    assert (first.version, list(first.peers)) == (1, ["a"])
    assert table.refresh("net", index, nodes).version == 1, "nothing changed"
    index.apply(None, task("b", "n1", "10.0.0.3/24"))
    assert table.refresh("net", index, nodes).version == 2
    nodes["n1"] = node("n1", "192.168.1.1", pb.NodeStatus.DOWN)
    assert table.refresh("net", index, nodes).version == 2, "node changes are the caller's to signal"
    table.nodes_generation += 1
    assert table.refresh("net", index, nodes).peers == {}


def test_nodes_get_the_full_set_then_deltas_then_nothing() -> None:
    index = OverlayIndex([task("a", "n1", "10.0.0.2/24"), task("b", "n2", "10.0.0.3/24")])
    nodes = {"n1": node("n1", "192.168.1.1"), "n2": node("n2", "192.168.1.2")}
    table = PeerTable()
    full = network_assignment(NET, table.refresh("net", index, nodes), "n1", None)
    assert full is not None
    assert [p.task_id for p in full.peers] == ["b"]
    assert network_assignment(NET, table.refresh("net", index, nodes), "n1", 1) is None
    index.apply(task("b", "n2", "10.0.0.3/24"), None)
    index.apply(None, task("c", "n2", "10.0.0.4/24"))
    index.apply(None, task("d", "n1", "10.0.0.5/24"))  # its own: never a peer
    delta = network_assignment(NET, table.refresh("net", index, nodes), "n1", 1)
    assert delta is not None
    assert delta.delta
    assert [p.task_id for p in delta.peers] == ["c"]
    assert list(delta.removed_peers) == ["b", "d"]


def test_a_session_behind_the_trimmed_log_gets_the_full_set() -> None:
    index = OverlayIndex([task("a", "n1", "10.0.0.2/24")])
    nodes = {"n1": node("n1", "192.168.1.1")}
    table = PeerTable(log_limit=2)
    table.refresh("net", index, nodes)
    for i in range(3, 6):
        index.apply(None, task(f"t{i}", "n1", f"10.0.0.{i}/24"))
        table.refresh("net", index, nodes)
    current = table.refresh("net", index, nodes)
    assert current.floor > 1
    behind = network_assignment(NET, current, "n9", 1)
    assert behind is not None
    assert not behind.delta
    assert len(behind.peers) == 4


@given(st.lists(st.tuples(st.sampled_from(["add", "remove", "down", "up"]), st.integers(0, 7),
                          st.sampled_from(["n1", "n2", "n3"])), max_size=30),
       st.integers(1, 6))
def test_deltas_applied_by_the_agent_equal_the_full_set(
        steps: list[tuple[str, int, str]], log_limit: int) -> None:
    """Random endpoint and node changes, each node's agent applying what it is
    sent (PeerSets) at random points: what it holds is always exactly the
    full set it would get from scratch."""
    index = OverlayIndex()
    nodes = {n: node(n, f"192.168.1.{i}") for i, n in enumerate(["n1", "n2", "n3"], start=1)}
    table = PeerTable(log_limit=log_limit)
    agents = {n: PeerSets() for n in nodes}
    sent: dict[str, int | None] = dict.fromkeys(nodes)
    present: dict[int, pb.Task] = {}
    for action, number, node_id in steps:
        if action == "add" and number not in present:
            present[number] = task(f"t{number}", node_id, f"10.0.0.{number + 2}/24")
            index.apply(None, present[number])
        elif action == "remove" and number in present:
            index.apply(present.pop(number), None)
        elif action in ("down", "up"):
            state = pb.NodeStatus.DOWN if action == "down" else pb.NodeStatus.READY
            nodes[node_id] = node(node_id, nodes[node_id].status.addr, state)
            table.nodes_generation += 1
        current = table.refresh("net", index, nodes)
        receiver = ["n1", "n2", "n3"][number % 3]
        entry = network_assignment(NET, current, receiver, sent[receiver])
        sent[receiver] = current.version
        if entry is not None:
            agents[receiver].apply(entry)
        full = network_assignment(NET, current, receiver, None)
        assert full is not None
        assert agents[receiver].apply(dpb.NetworkAssignment(network=NET, delta=True)) == \
            peers_of(full.peers)
