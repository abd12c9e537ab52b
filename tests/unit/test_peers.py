"""What nodes are told about overlay networks: the endpoint index, the
service records, the per-node assignment (every endpoint on nodes not DOWN,
the node's own included, with readiness; the services with their VIPs), and
the agent-side sync with replace semantics."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.agent.compact_deltas import CompactDeltas
from swarm.agent.network.model import OverlayNetwork, Peer, mac_from_ip
from swarm.agent.network.overlay import OverlayError
from swarm.agent.overlay_sync import PeerSets, RecordingOverlay, add_networks, peers_of, sync_networks
from swarm.api.overlay import mac_for_ip
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.dispatcher.assignments import Assignments
from swarm.controller.dispatcher.sessions import Session, Sessions
from swarm.controller.peers import (
    OverlayIndex,
    PeerTable,
    ServiceIndex,
    is_ready,
    network_assignment,
    network_news,
    service_records,
    vtep,
)
from swarm.controller.store import NetworkChange, TaskChange
from swarm.controller.wire import Encoded


def task(task_id: str, node_id: str, address: str, state: int = pb.RUNNING,
         network_id: str = "net", health: int = pb.TaskStatus.NO_HEALTHCHECK,
         desired: int = pb.RUNNING) -> pb.Task:
    result = pb.Task(id=task_id, node_id=node_id, desired_state=desired,  # type: ignore[arg-type]
                     service_id="svc", service_name="web", slot=1)
    result.status.state = state  # type: ignore[assignment]
    result.status.health = health  # type: ignore[assignment]
    result.networks.add(network_id=network_id, addresses=[address])
    return result


def node(node_id: str, addr: str, state: int = pb.NodeStatus.READY) -> pb.Node:
    result = pb.Node(id=node_id)
    result.status.state = state  # type: ignore[assignment]
    result.status.addr = addr
    return result


NET = pb.Network(id="net", vni=4096, subnet="10.0.0.0/24", gateway="10.0.0.1",
                 address_cursor="10.0.0.9")
NO_SERVICES = ServiceIndex()


def service(service_id: str, name: str, *networks: str, vips: dict[str, str] | None = None,
            mode: int = pb.EndpointSpec.VIP) -> pb.Service:
    result = pb.Service(id=service_id)
    result.spec.name = name
    result.spec.endpoint.mode = mode  # type: ignore[assignment]
    result.spec.task.networks.extend(pb.NetworkAttachmentConfig(target=n) for n in networks)
    result.endpoint.virtual_ips.extend(pb.VirtualIP(network_id=n, addr=a)
                                       for n, a in (vips or {}).items())
    return result


def test_index_tracks_present_endpoints_and_node_networks() -> None:
    index = OverlayIndex()
    assigned = task("t1", "n1", "10.0.0.2/24", pb.ASSIGNED)
    assert index.apply(None, task("t0", "n1", "10.0.0.9/24", pb.PENDING)) == set()
    assert index.apply(None, assigned) == {"net"}
    assert index.networks_of("n1") == {"net"}
    preparing = task("t1", "n1", "10.0.0.2/24", pb.PREPARING)
    assert index.apply(assigned, preparing) == set(), "same endpoint: nothing to tell"
    running = task("t1", "n1", "10.0.0.2/24", pb.RUNNING)
    assert index.apply(preparing, running) == {"net"}, "it became ready"
    assert index.endpoints["net"]["t1"].ready
    assert index.endpoints["net"]["t1"].task_name == "web.1.t1"
    assert index.apply(running, task("t1", "n1", "10.0.0.2/24", pb.COMPLETE)) == {"net"}
    assert index.networks_of("n1") == set()
    assert not index.endpoints


def test_a_task_is_a_peer_from_starting_on_and_its_node_has_the_network_before() -> None:
    index = OverlayIndex()
    nodes = {"n1": node("n1", "192.168.1.1"), "n2": node("n2", "192.168.1.2")}
    table = PeerTable()
    assigned = task("t1", "n1", "10.0.0.2/24", pb.ASSIGNED)
    assert index.apply_split(None, assigned) == ({"net"}, set()), "only its node is told"
    assert index.networks_of("n1") == {"net"}
    assert list(index.nodes_on("net")) == ["n1"]
    assert table.refresh("net", index, NO_SERVICES, nodes).peers == {}
    preparing = task("t1", "n1", "10.0.0.2/24", pb.PREPARING)
    assert index.apply_split(assigned, preparing) == (set(), set())
    starting = task("t1", "n1", "10.0.0.2/24", pb.STARTING)
    assert index.apply_split(preparing, starting) == ({"net"}, {"net"})
    current = table.refresh("net", index, NO_SERVICES, nodes)
    assert [(p.task_id, p.ready) for p in current.peers.values()] == [("t1", False)]
    # Told to stop before it started: never a peer.
    index.apply(None, task("t2", "n2", "10.0.0.3/24", pb.ASSIGNED))
    stopping = task("t2", "n2", "10.0.0.3/24", pb.ASSIGNED, desired=pb.SHUTDOWN)
    assert index.apply_split(task("t2", "n2", "10.0.0.3/24", pb.ASSIGNED), stopping)[1] == set()
    assert list(table.refresh("net", index, NO_SERVICES, nodes).peers) == ["t1"]


@pytest.mark.parametrize(("state", "health", "desired", "ready"), [
    (pb.RUNNING, pb.TaskStatus.NO_HEALTHCHECK, pb.RUNNING, True),
    (pb.RUNNING, pb.TaskStatus.HEALTHY, pb.RUNNING, True),
    (pb.RUNNING, pb.TaskStatus.HEALTH_STARTING, pb.RUNNING, False),
    (pb.RUNNING, pb.TaskStatus.UNHEALTHY, pb.RUNNING, False),
    (pb.STARTING, pb.TaskStatus.NO_HEALTHCHECK, pb.RUNNING, False),
    (pb.RUNNING, pb.TaskStatus.HEALTHY, pb.SHUTDOWN, False),
])
def test_readiness(state: int, health: int, desired: int, ready: bool) -> None:
    assert is_ready(task("t", "n1", "10.0.0.2/24", state, health=health, desired=desired)) is ready


def test_a_health_change_is_a_delta_of_one_peer_to_every_node() -> None:
    starting = task("a", "n1", "10.0.0.2/24", health=pb.TaskStatus.HEALTH_STARTING)
    index = OverlayIndex([starting, task("b", "n2", "10.0.0.3/24")])
    nodes = {"n1": node("n1", "192.168.1.1"), "n2": node("n2", "192.168.1.2")}
    table = PeerTable()
    first = table.refresh("net", index, NO_SERVICES, nodes)
    assert [p.ready for p in first.peers.values()] == [False, True]
    sent = first.version
    assert index.apply(starting, task("a", "n1", "10.0.0.2/24",
                                      health=pb.TaskStatus.HEALTHY)) == {"net"}
    current = table.refresh("net", index, NO_SERVICES, nodes)
    delta = network_assignment(NET, current, sent)
    assert delta is not None
    assert delta.delta
    assert [(p.task_id, p.ready) for p in delta.peers] == [("a", True)]
    assert not delta.removed_peers


def test_assignment_lists_every_endpoint_on_live_nodes() -> None:
    index = OverlayIndex([task("a", "n1", "10.0.0.2/24"), task("b", "n2", "10.0.0.3/24"),
                          task("c", "n3", "10.0.0.4/24")])
    nodes = {"n1": node("n1", "192.168.1.1"), "n2": node("n2", "192.168.1.2:4789"),
             "n3": node("n3", "192.168.1.3", pb.NodeStatus.DOWN)}
    got = network_assignment(NET, PeerTable().refresh("net", index, NO_SERVICES, nodes), None)
    assert got is not None
    assert not got.delta
    assert [(p.task_id, p.address, p.mac, p.vtep, p.node_id) for p in got.peers] == [
        ("a", "10.0.0.2/24", "02:42:0a:00:00:02", "192.168.1.1", "n1"),
        ("b", "10.0.0.3/24", "02:42:0a:00:00:03", "192.168.1.2", "n2")]
    assert [(p.service_id, p.task_name, p.ready) for p in got.peers] == [
        ("svc", "web.1.a", True), ("svc", "web.1.b", True)]
    assert got.network.vni == 4096
    assert not got.network.address_cursor
    assert not got.network.HasField("meta")


def test_service_records_per_network() -> None:
    vip = service("s1", "api", "net", "other", vips={"net": "10.0.0.2/24"})
    records = service_records(vip)
    assert set(records) == {"net", "other"}
    assert (records["net"].id, records["net"].name, records["net"].vip) == \
        ("s1", "api", "10.0.0.2/24")
    assert records["other"].vip == "", "not allocated yet"
    dnsrr = service_records(service("s2", "db", "net", mode=pb.EndpointSpec.DNSRR))
    assert (dnsrr["net"].mode, dnsrr["net"].vip) == (pb.EndpointSpec.DNSRR, "")
    assert service_records(None) == {}
    # A stack service answers to its short name on the stack's networks too
    # (compose.py adds it as the first alias); its own name is not repeated.
    stacked = service("s3", "shop_kv", "net")
    stacked.spec.task.networks[0].aliases.extend(["kv", "store", "kv", "shop_kv"])
    assert list(service_records(stacked)["net"].aliases) == ["kv", "store"]


def test_service_changes_resend_the_records_without_peers() -> None:
    index = OverlayIndex([task("a", "n1", "10.0.0.2/24")])
    nodes = {"n1": node("n1", "192.168.1.1")}
    services = ServiceIndex([service("s1", "web", "net")])
    table = PeerTable()
    first = table.refresh("net", index, services, nodes)
    full = network_assignment(NET, first, None)
    assert full is not None
    assert [(r.name, r.vip) for r in full.services] == [("web", "")]
    # The VIP arrives (the same write as the service): every node is told.
    with_vip = service("s1", "web", "net", vips={"net": "10.0.0.9/24"})
    assert services.apply(service("s1", "web", "net"), with_vip) == {"net"}
    assert services.apply(None, service("s2", "api", "net", "elsewhere")) == {"net", "elsewhere"}
    current = table.refresh("net", index, services, nodes)
    assert current.version == 2
    delta = network_assignment(NET, current, 1)
    assert delta is not None
    assert delta.delta
    assert not delta.peers
    assert not delta.removed_peers
    assert [(r.name, r.vip) for r in delta.services] == [("api", ""), ("web", "10.0.0.9/24")]
    # A change elsewhere (labels, replicas) changes no record: nothing to send.
    relabelled = service("s1", "web", "net", vips={"net": "10.0.0.9/24"})
    relabelled.spec.labels["a"] = "b"
    assert services.apply(with_vip, relabelled) == set()
    assert network_assignment(NET, table.refresh("net", index, services, nodes), 2) is None
    assert services.apply(relabelled, None) == {"net"}
    gone = network_assignment(NET, table.refresh("net", index, services, nodes), 2)
    assert gone is not None
    assert [r.name for r in gone.services] == ["api"]


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


async def test_a_network_that_cannot_be_set_up_does_not_stop_the_others() -> None:
    class RefusingOverlay(RecordingOverlay):
        async def ensure_network(self, network: OverlayNetwork) -> None:
            if network.network_id == "net":
                raise OverlayError("network net: the underlay MTU 1300 leaves 1250 for the overlay")
            await super().ensure_network(network)

    overlay, sets = RefusingOverlay(), PeerSets()
    other = pb.Network(id="other", vni=4097, subnet="10.0.1.0/24", gateway="10.0.1.1")
    failed = await add_networks(overlay, dpb.Assignments(networks=[
        dpb.NetworkAssignment(network=NET), dpb.NetworkAssignment(network=other)]), sets)
    assert failed == {"net": "network net: the underlay MTU 1300 leaves 1250 for the overlay"}
    assert overlay.networks() == ["other"]


def test_peer_table_rebuilds_only_after_a_change() -> None:
    index = OverlayIndex([task("a", "n1", "10.0.0.2/24")])
    nodes = {"n1": node("n1", "192.168.1.1")}
    table = PeerTable()
    first = table.refresh("net", index, NO_SERVICES, nodes)
    assert (first.version, list(first.peers)) == (1, ["a"])
    assert table.refresh("net", index, NO_SERVICES, nodes).version == 1, "nothing changed"
    index.apply(None, task("b", "n1", "10.0.0.3/24"))
    assert table.refresh("net", index, NO_SERVICES, nodes).version == 2
    nodes["n1"] = node("n1", "192.168.1.1", pb.NodeStatus.DOWN)
    assert table.refresh("net", index, NO_SERVICES, nodes).version == 2, \
        "node changes are the caller's to signal"
    table.nodes_generation += 1
    assert table.refresh("net", index, NO_SERVICES, nodes).peers == {}


def test_a_node_change_marks_only_that_nodes_endpoints() -> None:
    index = OverlayIndex([task("a", "n1", "10.0.0.2/24"), task("b", "n2", "10.0.0.3/24"),
                          task("c", "n1", "10.0.0.4/24")])
    nodes = {"n1": node("n1", "192.168.1.1"), "n2": node("n2", "192.168.1.2")}
    table = PeerTable()
    assert sorted(table.refresh("net", index, NO_SERVICES, nodes).peers) == ["a", "b", "c"]
    nodes["n1"] = node("n1", "192.168.1.1", pb.NodeStatus.DOWN)
    assert index.node_changed("n1") == {"net"}
    assert index.take_changes("net") == {"a", "c"}
    index.node_changed("n1")
    down = table.refresh("net", index, NO_SERVICES, nodes)
    assert (down.version, list(down.peers)) == (2, ["b"])
    index.apply(task("c", "n1", "10.0.0.4/24"), None)  # gone: no longer the node's
    nodes["n1"] = node("n1", "192.168.1.1")
    index.node_changed("n1")
    assert sorted(table.refresh("net", index, NO_SERVICES, nodes).peers) == ["a", "b"]
    assert index.node_changed("n3") == set()


def test_nodes_get_the_full_set_then_deltas_then_nothing() -> None:
    index = OverlayIndex([task("a", "n1", "10.0.0.2/24"), task("b", "n2", "10.0.0.3/24")])
    nodes = {"n1": node("n1", "192.168.1.1"), "n2": node("n2", "192.168.1.2")}
    table = PeerTable()
    full = network_assignment(NET, table.refresh("net", index, NO_SERVICES, nodes), None)
    assert full is not None
    assert [p.task_id for p in full.peers] == ["a", "b"]
    assert network_assignment(NET, table.refresh("net", index, NO_SERVICES, nodes), 1) is None
    index.apply(task("b", "n2", "10.0.0.3/24"), None)
    index.apply(None, task("c", "n2", "10.0.0.4/24"))
    index.apply(None, task("d", "n1", "10.0.0.5/24"))  # n1's own: a peer too
    delta = network_assignment(NET, table.refresh("net", index, NO_SERVICES, nodes), 1)
    assert delta is not None
    assert delta.delta
    assert [p.task_id for p in delta.peers] == ["c", "d"]
    assert list(delta.removed_peers) == ["b"]


def test_a_session_behind_the_trimmed_log_gets_the_full_set() -> None:
    index = OverlayIndex([task("a", "n1", "10.0.0.2/24")])
    nodes = {"n1": node("n1", "192.168.1.1")}
    table = PeerTable(log_limit=2)
    table.refresh("net", index, NO_SERVICES, nodes)
    for i in range(3, 6):
        index.apply(None, task(f"t{i}", "n1", f"10.0.0.{i}/24"))
        table.refresh("net", index, NO_SERVICES, nodes)
    current = table.refresh("net", index, NO_SERVICES, nodes)
    assert current.floor > 1
    behind = network_assignment(NET, current, 1)
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
            if number % 2:
                table.nodes_generation += 1  # everything looked at again
            else:
                index.node_changed(node_id)  # only the node's endpoints
        current = table.refresh("net", index, NO_SERVICES, nodes)
        receiver = ["n1", "n2", "n3"][number % 3]
        entry = network_assignment(NET, current, sent[receiver])
        sent[receiver] = current.version
        if entry is not None:
            agents[receiver].apply(entry)
        full = network_assignment(NET, current, None)
        assert full is not None
        assert agents[receiver].apply(dpb.NetworkAssignment(network=NET, delta=True)) == \
            peers_of(full.peers)
        assert agents[receiver].endpoints("net") == list(full.peers)


# ---------------------------------------------------------------- compact deltas


def _wire(entry: dpb.NetworkAssignment) -> dpb.NetworkAssignment:
    """The entry as an agent receives it (a copy: entries are shared)."""
    return dpb.NetworkAssignment.FromString(entry.SerializeToString())


def test_a_compact_delta_is_the_changed_peers_alone() -> None:
    index = OverlayIndex([task("a", "n1", "10.0.0.2/24")])
    nodes = {"n1": node("n1", "192.168.1.1"), "n2": node("n2", "192.168.1.2")}
    records = ServiceIndex([service("svc", "web", "net", vips={"net": "10.0.0.250/24"})])
    table = PeerTable()
    first = table.refresh("net", index, records, nodes).version
    full = network_assignment(NET, table.refresh("net", index, records, nodes), None,
                              compact=True)
    assert full is not None
    assert (full.delta, full.network.vni, len(full.services)) == (False, 4096, 1)
    index.apply(None, task("b", "n2", "10.0.0.3/24"))
    current = table.refresh("net", index, records, nodes)
    delta = network_assignment(NET, current, first, compact=True)
    assert delta is not None
    assert delta.network == pb.Network(id="net")
    assert (delta.network_unchanged, delta.services_unchanged) == (True, True)
    assert list(delta.services) == []
    assert [(p.task_id, p.mac, p.node_id, p.task_name) for p in delta.peers] == [
        ("b", "", "", "web.1")], "the MAC is derived, the node unused, the name's suffix known"
    verbose = network_assignment(NET, current, first)
    assert verbose is not None
    assert delta.ByteSize() < verbose.ByteSize()
    # Shared: every session at the same point gets the same entry, built once.
    assert network_assignment(NET, current, first, compact=True) is delta
    # A service change resends the records; a network change the network.
    records.apply(None, service("api", "api", "net"))
    relabelled = pb.Network()
    relabelled.CopyFrom(NET)
    relabelled.spec.labels["tier"] = "front"
    table.network_changed("net")
    after = table.refresh("net", index, records, nodes)
    changed = network_assignment(relabelled, after, first + 1, compact=True)
    assert changed is not None
    assert (changed.network_unchanged, changed.services_unchanged) == (False, False)
    assert changed.network.spec.labels["tier"] == "front"
    assert [r.name for r in changed.services] == ["api", "web"]
    assert list(changed.peers) == []


@given(st.lists(st.tuples(st.sampled_from(["add", "remove", "ready", "down", "up", "service",
                                           "network", "reconnect"]),
                          st.integers(0, 7), st.sampled_from(["n1", "n2", "n3"])), max_size=30),
       st.integers(1, 6), st.booleans())
def test_compact_deltas_in_order_rebuild_exactly_the_full_set(
        steps: list[tuple[str, int, str]], log_limit: int, grouped: bool) -> None:
    """Random endpoint, readiness, node, service and network changes, and
    reconnects (a new stream: a full snapshot, then deltas), each node's agent
    taking what it is sent (compact, as on the wire) at random points through
    CompactDeltas, PeerSets and the data plane's deltas: its peers, the
    network and the service records are always exactly what a full set from
    scratch gives, and the data plane was never given a full set for a delta."""
    index = OverlayIndex()
    nodes = {n: node(n, f"192.168.1.{i}") for i, n in enumerate(["n1", "n2", "n3"], start=1)}
    services = ServiceIndex()
    table = PeerTable(log_limit=log_limit)
    network = pb.Network()
    network.CopyFrom(NET)
    agents = {n: (CompactDeltas(), PeerSets(), RecordingOverlay()) for n in nodes}
    sent: dict[str, int | None] = dict.fromkeys(nodes)
    complete_sets = dict.fromkeys(nodes, 0)
    present: dict[int, pb.Task] = {}
    for action, number, node_id in steps:
        if action == "add" and number not in present:
            present[number] = task(f"t{number}", node_id, f"10.0.0.{number + 2}/24",
                                   state=pb.STARTING)
            index.apply(None, present[number])
        elif action == "remove" and number in present:
            index.apply(present.pop(number), None)
        elif action == "ready" and number in present:
            old = present[number]
            present[number] = task(old.id, old.node_id, old.networks[0].addresses[0])
            index.apply(old, present[number])
        elif action in ("down", "up"):
            state = pb.NodeStatus.DOWN if action == "down" else pb.NodeStatus.READY
            nodes[node_id] = node(node_id, nodes[node_id].status.addr, state)
            if number % 2:
                table.nodes_generation += 1  # everything looked at again
            else:
                index.node_changed(node_id)  # only the node's endpoints
        elif action == "service":
            services.apply(None, service(f"s{number}", f"svc{number}", "net"))
        elif action == "network":
            network.spec.labels["step"] = str(number)
            table.network_changed("net")
        receiver = ["n1", "n2", "n3"][number % 3]
        compact, sets, overlay = agents[receiver]
        if action == "reconnect":
            sent[receiver] = None
            compact = CompactDeltas()
            agents[receiver] = (compact, sets, overlay)
        current = table.refresh("net", index, services, nodes)
        shared = network_assignment(network, current, sent[receiver], compact=True,
                                    grouped=grouped)
        sent[receiver] = current.version
        if shared is not None:
            before = shared.SerializeToString()
            message = dpb.Assignments(type=dpb.Assignments.INCREMENTAL, networks=[_wire(shared)])
            compact.expand(message)
            asyncio.run(add_networks(overlay, message, sets))
            assert shared.SerializeToString() == before, "a shared entry is never changed"
            complete_sets[receiver] += not message.networks[0].delta
            expected_network = pb.Network()
            expected_network.CopyFrom(network)
            expected_network.ClearField("meta")
            expected_network.address_cursor = ""
            assert message.networks[0].network == expected_network
        full = network_assignment(network, current, None)
        assert full is not None
        assert sets.peers("net") == peers_of(full.peers)
        assert [p.task_id for p in sets.endpoints("net")] == [p.task_id for p in full.peers]
        assert [p.ready for p in sets.endpoints("net")] == [p.ready for p in full.peers]
        assert [p.task_name for p in sets.endpoints("net")] == [p.task_name for p in full.peers]
        assert sets.services("net") == list(full.services)
        assert sorted(overlay.peers.get("net", []), key=str) == sorted(peers_of(full.peers), key=str)
        assert overlay.full_sets == complete_sets[receiver]


# ---------------------------------------------------------------- the dispatcher's fan-out


class _Cache:
    """What Assignments reads of the watch cache, kept by hand."""

    def __init__(self, nodes: list[pb.Node]) -> None:
        self.tasks: dict[str, pb.Task] = {}
        self.tasks_by_node: dict[str, dict[str, pb.Task]] = {}
        self.nodes = {n.id: n for n in nodes}
        self.networks = {"net": NET}
        self.services: dict[str, pb.Service] = {}

    def put(self, new: pb.Task | None, old: pb.Task | None) -> None:
        if old is not None:
            self.tasks.pop(old.id, None)
            self.tasks_by_node.get(old.node_id, {}).pop(old.id, None)
        if new is not None:
            self.tasks[new.id] = new
            self.tasks_by_node.setdefault(new.node_id, {})[new.id] = new


@given(st.lists(st.tuples(st.sampled_from(["add", "ready", "remove", "send", "reconnect"]),
                          st.integers(0, 7), st.sampled_from(["n1", "n2", "n3"])), max_size=40))
@settings(deadline=None)
def test_a_burst_wakes_each_holder_once_and_loses_no_change(
        steps: list[tuple[str, int, str]]) -> None:
    """Task changes wake only the holders with nothing pending (and the
    task's node), yet no change is lost: with sessions sending at random
    points and reconnecting, once every woken session has sent, every
    node holds exactly the network's full set (or nothing, if it left)."""
    node_ids = ["n1", "n2", "n3"]
    cache = _Cache([node(n, f"192.168.1.{i}") for i, n in enumerate(node_ids, start=1)])
    sessions = Sessions()
    assignments = Assignments(cache, sessions)  # type: ignore[arg-type]
    agents: dict[str, tuple[CompactDeltas, PeerSets, RecordingOverlay]] = {}

    def deliver(node_id: str, message: Encoded | None) -> None:
        if message is None:
            return
        wire = dpb.Assignments.FromString(message.data)
        compact, sets, overlay = agents[node_id]
        compact.expand(wire)
        asyncio.run(sync_networks(overlay, wire, sets))

    def connect(node_id: str) -> None:
        session = Session(node_id=node_id, session_id=f"{node_id}-{len(agents)}",
                          compact_deltas=True, peer_groups=len(agents) % 2 == 1)
        previous = sessions.get(node_id)
        sessions.open(session)
        if previous is not None:
            assignments.ended(previous)
        agents[node_id] = (CompactDeltas(), PeerSets(), RecordingOverlay())
        deliver(node_id, assignments.complete(session))

    def send(node_id: str) -> None:
        session = sessions[node_id]
        if session.wake.is_set():
            session.wake.clear()
            deliver(node_id, assignments.incremental(session))

    for node_id in node_ids:
        connect(node_id)
    present: dict[int, pb.Task] = {}
    for action, number, node_id in steps:
        old = present.get(number)
        new: pb.Task | None = None
        if action == "add" and old is None:
            new = task(f"t{number}", node_id, f"10.0.0.{number + 2}/24", state=pb.STARTING)
        elif action == "ready" and old is not None:
            new = task(old.id, old.node_id, old.networks[0].addresses[0])
        elif action == "remove" and old is not None:
            new = None
        elif action == "send":
            send(node_id)
            continue
        elif action == "reconnect":
            connect(node_id)
            continue
        else:
            continue
        if new is None:
            present.pop(number)
        else:
            present[number] = new
        cache.put(new, old)
        assignments.on_change(TaskChange(object_id=f"t{number}", old=old, new=new))
    for node_id in node_ids:
        send(node_id)
    table = assignments.peers.refresh("net", assignments.overlay, assignments.services,
                                      cache.nodes)
    full = network_assignment(NET, table, None)
    assert full is not None
    for node_id in node_ids:
        _, sets, overlay = agents[node_id]
        if assignments.overlay.uses(node_id, "net"):
            assert sets.peers("net") == peers_of(full.peers)
            assert overlay.networks() == ["net"]
        else:
            assert overlay.networks() == []


def test_a_moved_allocation_cursor_is_no_news_to_the_nodes() -> None:
    """Every address given out moves the network's cursor (a network write):
    nodes are told nothing and no session is woken; a real change is news."""
    moved = pb.Network()
    moved.CopyFrom(NET)
    moved.address_cursor = "10.0.0.10"
    moved.meta.version = 7
    assert not network_news(NET, moved)
    relabelled = pb.Network()
    relabelled.CopyFrom(moved)
    relabelled.spec.labels["tier"] = "front"
    assert network_news(moved, relabelled)
    assert network_news(None, NET)
    assert network_news(NET, None)
    cache = _Cache([node("n1", "192.168.1.1")])
    sessions = Sessions()
    assignments = Assignments(cache, sessions)  # type: ignore[arg-type]
    session = Session(node_id="n1", session_id="s", compact_deltas=True)
    sessions.open(session)
    running = task("t1", "n1", "10.0.0.2/24")
    cache.put(running, None)
    assignments.on_change(TaskChange(object_id="t1", old=None, new=running))
    assignments.complete(session)
    session.wake.clear()
    assignments.on_change(NetworkChange(object_id="net", old=NET, new=moved))
    assert not session.wake.is_set()
    assignments.on_change(NetworkChange(object_id="net", old=moved, new=relabelled))
    assert session.wake.is_set()
    cache.networks["net"] = relabelled
    encoded = assignments.incremental(session)
    assert encoded is not None
    message = dpb.Assignments.FromString(encoded.data)
    assert message.networks[0].network.spec.labels["tier"] == "front"
    assert message.networks[0].network.address_cursor == ""


async def test_a_network_removed_while_a_stopping_task_holds_it_goes_with_that_task() -> None:
    """The controller says a network is no longer needed once, often in the
    message that stops the node's last task on it; the agent keeps it until
    that task's container is gone, then takes it down with the message that
    removes the task (the e2e scale-down left hosts holding it before)."""
    from typing import cast

    from swarm.agent.dependencies import NetworkDependencies
    from swarm.agent.network.overlay import OverlayManager
    from swarm.agent.runtime.base import Runtime

    INCREMENTAL = dpb.Assignments.INCREMENTAL
    overlay = RecordingOverlay()
    deps = NetworkDependencies(cast(Runtime, None), overlay=cast(OverlayManager, overlay))
    other = pb.Network(id="other", vni=4097, subnet="10.0.1.0/24", gateway="10.0.1.1")
    await deps.apply(dpb.Assignments(type=dpb.Assignments.INCREMENTAL, networks=[
        dpb.NetworkAssignment(network=NET), dpb.NetworkAssignment(network=other)]))
    assert overlay.networks() == ["net", "other"]
    stop = dpb.Assignments(type=dpb.Assignments.INCREMENTAL, removed_networks=["other"])
    await deps.apply(stop)
    await deps.remove_unused(stop, in_use={"net", "other"})  # its task still stops
    assert overlay.networks() == ["net", "other"]
    removal = dpb.Assignments(type=dpb.Assignments.INCREMENTAL, removed=["t1"])
    await deps.apply(removal)
    await deps.remove_unused(removal, in_use={"net"})
    assert overlay.networks() == ["net"]
    # Named again before its task went: it stays.
    await deps.apply(dpb.Assignments(type=INCREMENTAL, networks=[dpb.NetworkAssignment(network=other)]))
    await deps.remove_unused(dpb.Assignments(type=INCREMENTAL, removed_networks=["other"]), in_use={"other"})
    again = dpb.Assignments(type=INCREMENTAL, networks=[dpb.NetworkAssignment(network=other)])
    await deps.apply(again)
    await deps.remove_unused(again, in_use={"other"})
    await deps.remove_unused(dpb.Assignments(type=INCREMENTAL, removed=["t2"]), in_use=set())
    assert overlay.networks() == ["net", "other"]


def test_a_simulated_node_can_keep_peers_as_task_ids_only() -> None:
    from swarm.agent.simulated import FakeWorker

    worker = FakeWorker(record_peers=False)
    full = dpb.Assignments(type=dpb.Assignments.COMPLETE, networks=[dpb.NetworkAssignment(
        network=NET, peers=[dpb.OverlayPeer(task_id="a"), dpb.OverlayPeer(task_id="b")])])
    asyncio.run(worker.apply(full))
    assert worker.peer_ids == {"net": {"a", "b"}}
    delta = dpb.Assignments(type=dpb.Assignments.INCREMENTAL, networks=[dpb.NetworkAssignment(
        network=NET, delta=True, peers=[dpb.OverlayPeer(task_id="c")], removed_peers=["a"])])
    asyncio.run(worker.apply(delta))
    assert worker.peer_ids == {"net": {"b", "c"}}
    assert worker.overlay.peers == {}, "nothing filed as a data plane would"
    asyncio.run(worker.apply(dpb.Assignments(type=dpb.Assignments.INCREMENTAL,
                                             removed_networks=["net"])))
    assert worker.peer_ids == {}


def test_the_peer_news_window_widens_with_the_sessions_to_keep_a_message_rate() -> None:
    from swarm.controller.dispatcher.sessions import network_window

    assert network_window(0.1, 3) == 0.1, "a small cluster keeps the base window"
    assert network_window(0.1, 100) == 0.1
    assert network_window(0.1, 500) == 0.5
    assert network_window(0.1, 5000, rate=1000) == 5.0
    for sessions in (1, 10, 200, 1000, 4000):
        window = network_window(0.1, sessions)
        assert sessions / window <= 1000 + 1e-9  # one message per window each


def test_compact_names_are_put_back_once_when_two_peer_sets_take_the_entry() -> None:
    """The agent's data plane and its discovery each file the same entry
    (two PeerSets): a compact peer's name gets its ".TASKID" suffix back
    once, not once per PeerSets."""
    entry = dpb.NetworkAssignment(network=pb.Network(id="net"), peers_compact=True, peers=[
        dpb.OverlayPeer(task_id="t1", address="10.0.0.3/24", vtep="192.168.1.2",
                        task_name="web.1"),
        dpb.OverlayPeer(task_id="node:n1", address="10.0.0.2/24", vtep="192.168.1.1")])
    first, second = PeerSets(), PeerSets()
    first.apply_changes(entry)
    second.apply_changes(entry)
    for sets in (first, second):
        assert [p.task_name for p in sets.endpoints("net")] == ["", "web.1.t1"]
