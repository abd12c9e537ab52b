"""An agent keeps its session with a controller that is slow to answer a
call but still streams to it (busy, not gone), and ends it when the stream
has been silent for a period too (paused or dead: fail over)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from swarm.agent.session import AgentSession, insecure_channels
from swarm.agent.simulated import FakeWorker
from swarm.api import channels
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import dispatcher_pb2_grpc as dgrpc
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


@contextlib.asynccontextmanager
async def _session_with(servicer: dgrpc.DispatcherServicer) -> AsyncIterator[AgentSession]:
    """A real gRPC server with this dispatcher, and an agent session
    connected to it; both stopped on the way out."""
    server = channels.new_server()
    dgrpc.add_DispatcherServicer_to_server(servicer, server)
    port = channels.listen(server, "127.0.0.1:0", None, insecure=True)
    await server.start()
    session = AgentSession([f"127.0.0.1:{port}"], pb.NodeDescription(hostname="h"),
                           FakeWorker(), insecure_channels())
    runner = asyncio.create_task(session.run())
    try:
        await asyncio.wait_for(session.connected.wait(), 10)
        yield session
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await server.stop(None)


def _first_message() -> dpb.SessionMessage:
    """A session's first message: everything (nothing), a 0.5 s period."""
    message = dpb.SessionMessage(session_id="s1",
                                 assignments=dpb.Assignments(type=dpb.Assignments.COMPLETE))
    message.heartbeat_period.FromMilliseconds(500)
    return message


class _SlowReports(dgrpc.DispatcherServicer):
    """A controller that answers a status report only after `hold` seconds
    and counts the heartbeats it is sent meanwhile."""

    def __init__(self, hold: float) -> None:
        self.hold = hold
        self.beats: list[float] = []  # when each heartbeat came
        self.reports: list[tuple[float, float, float]] = []  # (came, answered, deadline sent)
        self.reported = asyncio.Event()

    async def Register(self, request: dpb.RegisterRequest, context: Any) -> dpb.RegisterResponse:
        return dpb.RegisterResponse(node_id="n1")

    async def Session(self, request: dpb.SessionRequest,
                      context: Any) -> AsyncIterator[dpb.SessionMessage]:
        message = _first_message()
        yield message
        while True:  # the stream stays open and quiet
            await asyncio.sleep(0.05)
            if False:
                yield message

    async def Heartbeat(self, request: dpb.HeartbeatRequest,
                        context: Any) -> dpb.HeartbeatResponse:
        self.beats.append(time.monotonic())
        response = dpb.HeartbeatResponse()
        response.period.FromMilliseconds(500)
        return response

    async def UpdateTaskStatus(self, request: dpb.UpdateTaskStatusRequest,
                               context: Any) -> dpb.UpdateTaskStatusResponse:
        came = time.monotonic()
        await asyncio.sleep(self.hold)
        self.reports.append((came, time.monotonic(), request.timeout.ToNanoseconds() / 1e9))
        self.reported.set()
        return dpb.UpdateTaskStatusResponse()


async def test_a_status_report_on_its_way_stands_in_for_the_heartbeat() -> None:
    """While a report waits in a busy controller, the agent sends no
    heartbeat beside it (the report counts as one there, from when it
    arrived: it carries its deadline); once answered, beats go on."""
    servicer = _SlowReports(hold=1.2)  # type: ignore[abstract]  # only what a session uses
    async with _session_with(servicer) as session:
        await asyncio.sleep(0.6)  # beats flow: every 0.4 s (0.8 period)
        assert servicer.beats
        session.report("t1", pb.TaskStatus(state=pb.RUNNING))
        await asyncio.wait_for(servicer.reported.wait(), 10)
        came, answered, deadline = servicer.reports[0]
        assert deadline >= 1.5  # its deadline, for the controller's arrival time
        assert [b for b in servicer.beats if came + 0.1 < b < answered] == []
        await asyncio.sleep(1.0)
        assert [b for b in servicer.beats if b > answered], "beats go on after the answer"


class _GrowingPeriod(dgrpc.DispatcherServicer):
    """A controller whose heartbeat period grows while the node is
    connected (more nodes joined): it says so on the session stream and
    answers beats without a period, as if their answers were stuck."""

    def __init__(self) -> None:
        self.beat_deadlines: list[tuple[float, float]] = []  # (came, deadline sent)
        self.grown_at = 0.0

    async def Register(self, request: dpb.RegisterRequest, context: Any) -> dpb.RegisterResponse:
        return dpb.RegisterResponse(node_id="n1")

    async def Session(self, request: dpb.SessionRequest,
                      context: Any) -> AsyncIterator[dpb.SessionMessage]:
        yield _first_message()
        await asyncio.sleep(0.5)
        grown = dpb.SessionMessage(session_id="s1", assignments=dpb.Assignments(
            type=dpb.Assignments.INCREMENTAL))
        grown.heartbeat_period.FromMilliseconds(4000)
        self.grown_at = time.monotonic()
        yield grown
        await asyncio.sleep(3600)

    async def Heartbeat(self, request: dpb.HeartbeatRequest,
                        context: Any) -> dpb.HeartbeatResponse:
        self.beat_deadlines.append((time.monotonic(), request.timeout.ToNanoseconds() / 1e9))
        return dpb.HeartbeatResponse()  # no period: unchanged

    async def UpdateTaskStatus(self, request: dpb.UpdateTaskStatusRequest,
                               context: Any) -> dpb.UpdateTaskStatusResponse:
        return dpb.UpdateTaskStatusResponse()


async def test_a_period_grown_on_the_stream_lengthens_the_beats_deadline() -> None:
    """A node that joined when the cluster was small learns the longer
    period from the stream: its beats then wait 3 of those periods for an
    answer (at 5,000 nodes early joiners kept a 5 s period, and their beats
    stuck in the busy controller's queue timed out after 15 s)."""
    servicer = _GrowingPeriod()  # type: ignore[abstract]  # only what a session uses
    async with _session_with(servicer):
        await asyncio.sleep(0.5 + 0.5 + 0.8)  # the growth, then one more beat of the old pace
        # A beat sent as the message travels may carry either: not judged.
        before = [d for came, d in servicer.beat_deadlines if came < servicer.grown_at]
        after = [d for came, d in servicer.beat_deadlines if came > servicer.grown_at + 0.2]
        assert before, servicer.beat_deadlines
        assert after, servicer.beat_deadlines
        assert set(before) == {1.5}, servicer.beat_deadlines
        assert set(after) == {12.0}, servicer.beat_deadlines
