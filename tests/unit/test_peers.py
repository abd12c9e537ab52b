"""What nodes are told about overlay networks: the endpoint index and the
per-node assignment (peers on other nodes, not DOWN ones), and the agent-side
sync with replace semantics."""

from __future__ import annotations

from ipaddress import IPv4Address

from hypothesis import given
from hypothesis import strategies as st

from agent.network.model import Peer, mac_from_ip
from agent.overlay_sync import RecordingOverlay, peers_of, sync_networks
from controller.peers import OverlayIndex, PeerTable, build_peers, network_assignment, vtep
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
    got = network_assignment(NET, build_peers(index.endpoints["net"], nodes), "n1")
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
    assert peers_of(entry) == [Peer.create("10.0.0.3", "192.168.1.2")]


async def test_sync_replaces_peers_and_complete_removes_the_rest() -> None:
    overlay = RecordingOverlay()
    peer = dpb.OverlayPeer(task_id="b", address="10.0.0.3/24", vtep="192.168.1.2")
    other = pb.Network(id="other", vni=4097, subnet="10.0.1.0/24", gateway="10.0.1.1")
    await sync_networks(overlay, dpb.Assignments(type=dpb.Assignments.INCREMENTAL, networks=[
        dpb.NetworkAssignment(network=NET, peers=[peer]), dpb.NetworkAssignment(network=other)]))
    assert overlay.networks() == ["net", "other"]
    assert overlay.peers["net"] == [Peer.create("10.0.0.3", "192.168.1.2")]
    await sync_networks(overlay, dpb.Assignments(type=dpb.Assignments.INCREMENTAL, networks=[
        dpb.NetworkAssignment(network=NET)], removed_networks=["other"]))
    assert overlay.networks() == ["net"]
    assert overlay.peers["net"] == []
    await sync_networks(overlay, dpb.Assignments(type=dpb.Assignments.COMPLETE))
    assert overlay.networks() == []


def test_peer_table_rebuilds_only_after_a_change() -> None:
    index = OverlayIndex([task("a", "n1", "10.0.0.2/24")])
    nodes = {"n1": node("n1", "192.168.1.1")}
    table = PeerTable()
    first = table.peers("net", index, nodes)
    assert table.peers("net", index, nodes) is first
    index.apply(None, task("b", "n1", "10.0.0.3/24"))
    second = table.peers("net", index, nodes)
    assert [p.task_id for _, p in second] == ["a", "b"]
    nodes["n1"] = node("n1", "192.168.1.1", pb.NodeStatus.DOWN)
    assert table.peers("net", index, nodes) is second, "node changes are the caller's to signal"
    table.nodes_generation += 1
    assert table.peers("net", index, nodes) == []
