"""swarm.api.overlay.group_peers / ungroup: compact peers grouped by node,
service and prefix length for the wire, and back."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from swarm.agent.compact_deltas import entry_peers
from swarm.api.overlay import group_peers, ungroup
from swarm.api.v1 import dispatcher_pb2 as dpb

_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=25)


@st.composite
def _peer(draw: st.DrawFn) -> dpb.OverlayPeer:
    octets = draw(st.lists(st.integers(0, 255), min_size=4, max_size=4))
    return dpb.OverlayPeer(
        task_id=draw(_ids), address=".".join(map(str, octets)) + f"/{draw(st.integers(8, 32))}",
        vtep=draw(st.sampled_from(["192.168.1.1", "192.168.1.2", "10.9.9.9"])),
        service_id=draw(st.sampled_from(["", "s1", "s2"])),
        task_name=draw(st.sampled_from(["", "web.1", "db.node7"])), ready=draw(st.booleans()))


@given(st.lists(_peer(), max_size=60))
def test_ungroup_gives_back_every_peer_by_group(peers: list[dpb.OverlayPeer]) -> None:
    groups = group_peers(peers)
    wire = [dpb.PeerGroup.FromString(g.SerializeToString()) for g in groups]
    back = ungroup(wire)
    assert sorted(back, key=lambda p: p.SerializeToString()) == \
        sorted(peers, key=lambda p: p.SerializeToString())
    # One group per node, service and prefix length; each keeps its peers' order.
    assert len(groups) == len({(p.vtep, p.service_id, p.address.split("/")[1]) for p in peers})
    for group in groups:
        assert list(group.task_ids) == [p.task_id for p in peers
                                        if (p.vtep, p.service_id) == (group.vtep, group.service_id)
                                        and p.address.endswith(f"/{group.prefix_length}")]


def test_a_task_start_is_one_small_group() -> None:
    """What one task start costs each node on the wire, grouped and not."""
    peer = dpb.OverlayPeer(task_id="x" * 25, address="10.128.3.7/16", vtep="127.0.0.12",
                           service_id="y" * 25, task_name="bench.4711", ready=True)
    grouped = dpb.NetworkAssignment(peer_groups=group_peers([peer]))
    plain = dpb.NetworkAssignment(peers=[peer])
    assert grouped.ByteSize() <= plain.ByteSize()


def test_a_malformed_group_loses_its_odd_peers_not_the_session() -> None:
    group = dpb.PeerGroup(vtep="192.168.1.1", prefix_length=24, task_ids=["a", "b"],
                          addresses=bytes([10, 0, 0, 2, 10, 0]), task_names=["", ""],
                          ready=[True, False])
    assert [(p.task_id, p.address) for p in ungroup([group])] == [("a", "10.0.0.2/24")]


def test_entry_peers_makes_grouped_peers_whole_on_every_call() -> None:
    """Discovery and the data plane each file the same entry: each gets
    whole names, once each."""
    peer = dpb.OverlayPeer(task_id="t1", address="10.0.0.3/24", vtep="192.168.1.2",
                           service_id="s", task_name="web.1", ready=True)
    entry = dpb.NetworkAssignment(peers_compact=True, peer_groups=group_peers([peer]))
    for _ in range(2):
        assert [(p.task_id, p.task_name, p.address) for p in entry_peers(entry)] == [
            ("t1", "web.1.t1", "10.0.0.3/24")]
