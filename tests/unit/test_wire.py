"""controller/wire.py: session messages assembled from separately encoded
parts parse exactly as the messages built whole."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.wire import assignments, entry_field, session_message, varint

_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=30)


@st.composite
def _entries(draw: st.DrawFn) -> dpb.NetworkAssignment:
    peers = [dpb.OverlayPeer(task_id=task_id, address=f"10.0.{i // 250}.{i % 250 + 2}/16",
                             vtep="192.168.1.1", task_name=draw(_ids), ready=draw(st.booleans()))
             for i, task_id in enumerate(draw(st.lists(_ids, max_size=300)))]
    return dpb.NetworkAssignment(network=pb.Network(id=draw(_ids)), peers=peers,
                                 delta=draw(st.booleans()),
                                 removed_peers=draw(st.lists(_ids, max_size=5)),
                                 version=draw(st.integers(0, 2**64 - 1)))


@given(st.integers(1, 2**64 - 1))  # proto3 leaves a 0 out
def test_varint_is_what_protobuf_writes(value: int) -> None:
    assert varint(value) == dpb.AppliedNetwork(version=value).SerializeToString()[1:]


@given(st.lists(_entries(), max_size=4), st.lists(_ids, max_size=3),
       st.lists(_ids, max_size=3), _ids)
def test_assembled_messages_parse_as_the_whole_message(
        entries: list[dpb.NetworkAssignment], removed: list[str], controllers: list[str],
        session_id: str) -> None:
    header = dpb.Assignments(type=dpb.Assignments.INCREMENTAL, removed=removed,
                             tasks=[pb.Task(id=i) for i in removed])
    encoded = assignments(header, [entry_field(e) for e in entries],
                          sum(len(e.peers) for e in entries))
    whole = dpb.Assignments()
    whole.CopyFrom(header)
    whole.networks.extend(entries)
    assert dpb.Assignments.FromString(encoded.data) == whole
    assert encoded.network_bytes == sum(len(entry_field(e)) for e in entries)
    assert encoded.peers == sum(len(e.peers) for e in entries)
    message = dpb.SessionMessage(session_id=session_id, controllers=controllers)
    message.heartbeat_period.FromSeconds(5)
    expected = dpb.SessionMessage()
    expected.CopyFrom(message)
    expected.assignments.CopyFrom(whole)
    assert dpb.SessionMessage.FromString(session_message(message, encoded)) == expected
