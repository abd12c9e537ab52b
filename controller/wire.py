"""Session messages encoded once per shared part, sent as bytes.

A network entry (peers.network_assignment) is the same for every node at
the same point of the network's history, and during a burst the same delta
goes to hundreds of sessions. Built as a message per session, it was copied
into each node's Assignments, copied again into its SessionMessage and
serialized by gRPC once per session: at 500 nodes, 500 times the same peers
(4.9 million peers, 490 MB while 10,000 tasks start). Here an entry is
serialized once, with its field key in front (`entry_field`), and each
session's message is its own small header (tasks, removed, session id,
period, controllers) followed by the shared entries' bytes.

This relies on the protobuf wire format: a message is a sequence of
(key, value) fields in any order, a repeated message field being one
length-delimited field per element, so the concatenation of a header's
bytes and the entries' encoded fields parses exactly as the message with
those entries appended (a test checks it round-trips). Nothing changes on
the wire: agents parse the same SessionMessage.

The Session method is registered with a serializer that passes those bytes
through (`add_dispatcher`): grpc.aio calls the method handler's
response_serializer on each yielded response and sends what it returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import dispatcher_pb2_grpc as dgrpc

_LENGTH_DELIMITED = 2
_NETWORKS = dpb.Assignments.DESCRIPTOR.fields_by_name["networks"].number
_ASSIGNMENTS = dpb.SessionMessage.DESCRIPTOR.fields_by_name["assignments"].number


def varint(value: int) -> bytes:
    """A non-negative integer as a protobuf base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """One length-delimited field (an embedded message) as it is on the wire:
    key, length, payload."""
    return varint(field_number << 3 | _LENGTH_DELIMITED) + varint(len(payload)) + payload


def entry_field(entry: dpb.NetworkAssignment) -> bytes:
    """A network entry as one element of Assignments.networks, ready to be
    appended to any node's Assignments bytes."""
    return length_delimited(_NETWORKS, entry.SerializeToString())


@dataclass(frozen=True, slots=True)
class Encoded:
    """A node's Assignments as bytes, and what its network entries weigh
    (bytes, peers named: added, changed or removed), for the counts."""

    data: bytes
    network_bytes: int = 0
    peers: int = 0


def assignments(header: dpb.Assignments, entries: Sequence[bytes], peers: int = 0) -> Encoded:
    """The header (everything but the networks) followed by the entries
    (entry_field's), which are the message's networks in that order."""
    network_bytes = sum(len(e) for e in entries)
    return Encoded(header.SerializeToString() + b"".join(entries), network_bytes, peers)


def session_message(header: dpb.SessionMessage, encoded: Encoded) -> bytes:
    """A SessionMessage: the header (session id, period, controllers) with
    the encoded Assignments as its `assignments`."""
    return header.SerializeToString() + length_delimited(_ASSIGNMENTS, encoded.data)


def _as_is(data: bytes) -> bytes:
    return data


class _Captured:
    """Stands for a server while the generated code registers its handlers."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.service, self.handlers = service, dict(handlers)


def add_dispatcher(servicer: dgrpc.DispatcherServicer, server: grpc.aio.Server) -> None:
    """dgrpc.add_DispatcherServicer_to_server, but Session yields bytes
    (session_message) that are sent as they are."""
    captured = _Captured()
    dgrpc.add_DispatcherServicer_to_server(servicer, captured)  # type: ignore[arg-type]
    handlers = captured.handlers
    handlers["Session"] = handlers["Session"]._replace(response_serializer=_as_is)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(captured.service, handlers),))
    # As the generated code does (grpcio >= 1.63; not in its type stubs).
    server.add_registered_method_handlers(captured.service, handlers)  # type: ignore[attr-defined]
