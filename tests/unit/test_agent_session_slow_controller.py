"""An agent keeps its session with a controller that is slow to answer a
call but still streams to it (busy, not gone), and ends it when the stream
has been silent for a period too (paused or dead: fail over)."""

from __future__ import annotations

import time

import grpc

from swarm.agent.session import AgentSession, insecure_channels
from swarm.agent.simulated import FakeWorker
from swarm.api.v1 import objects_pb2 as pb


def _error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "late", None)


def test_a_timed_out_call_keeps_the_session_only_while_the_stream_lives() -> None:
    session = AgentSession(["127.0.0.1:1"], pb.NodeDescription(hostname="h"), FakeWorker(),
                           insecure_channels())
    late = _error(grpc.StatusCode.DEADLINE_EXCEEDED)
    session._heard_at = time.monotonic()
    assert session._busy_not_gone(late, 5.0), "a message just came: busy, not gone"
    assert not session._busy_not_gone(_error(grpc.StatusCode.UNAVAILABLE), 5.0)
    assert not session._busy_not_gone(_error(grpc.StatusCode.NOT_FOUND), 5.0)
    session._heard_at = time.monotonic() - 6.0
    assert not session._busy_not_gone(late, 5.0), "silent for a period: fail over"
