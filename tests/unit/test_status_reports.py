"""The agent's status reports (agent.session.AgentSession._flush_statuses):
what goes in which UpdateTaskStatus call, and when. A recording stub stands
in for the controller; the session's real flush loop runs on the real clock.

A task's way to RUNNING (ACCEPTED ... STARTING) is news nobody waits for and
waits status_progress_pause after the latest such report (at most
status_progress_max after the first); a RUNNING that comes meanwhile
replaces the STARTING and goes status_first_pause later: the STARTING sent just
before the RUNNING no longer holds it back by a flush interval (discovery
latency). The rate stays at most one call per status_flush_interval.
"""

from __future__ import annotations

import asyncio
import itertools
import time

from hypothesis import given
from hypothesis import strategies as st

from swarm.agent.session import AgentSession, SessionSettings, insecure_channels, status_due
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import objects_pb2 as pb

SETTINGS = SessionSettings(status_flush_interval=0.05, status_first_pause=0.005,
                           status_progress_pause=0.3, status_progress_max=2.0)


class _Worker:
    async def apply(self, assignments: dpb.Assignments) -> None:
        return None

    def statuses(self) -> dict[str, pb.TaskStatus]:
        return {}


class _Stub:
    def __init__(self) -> None:
        self.calls: list[tuple[float, dict[str, int]]] = []
        self.called = asyncio.Event()

    async def calls_made(self, count: int) -> None:
        while len(self.calls) < count:
            self.called.clear()
            await self.called.wait()

    async def UpdateTaskStatus(self, request: dpb.UpdateTaskStatusRequest,
                               timeout: float) -> dpb.UpdateTaskStatusResponse:
        self.calls.append((time.monotonic(), {u.task_id: u.status.state
                                              for u in request.updates}))
        self.called.set()
        return dpb.UpdateTaskStatusResponse()


def _session() -> AgentSession:
    return AgentSession(["127.0.0.1:1"], pb.NodeDescription(hostname="n"), _Worker(),
                        insecure_channels(), node_id="n", settings=SETTINGS)


async def test_a_running_after_starting_goes_at_once_in_one_report() -> None:
    session, stub = _session(), _Stub()
    flush = asyncio.create_task(session._flush_statuses(stub))  # type: ignore[arg-type]
    try:
        start = time.monotonic()
        session.report("t1", pb.TaskStatus(state=pb.STARTING))
        await asyncio.sleep(0.03)  # runc start
        session.report("t1", pb.TaskStatus(state=pb.RUNNING))
        running = time.monotonic()
        await stub.calls_made(1)
        sent, updates = stub.calls[0]
        assert updates == {"t1": pb.RUNNING}  # the STARTING was replaced, not sent first
        assert sent - running < 0.03  # first pause (0.005), not the progress pause
        assert sent - start < 0.3
        # Progress alone waits the progress pause.
        session.report("t2", pb.TaskStatus(state=pb.PREPARING))
        asked = time.monotonic()
        await stub.calls_made(2)
        assert stub.calls[1][1] == {"t2": pb.PREPARING}
        assert stub.calls[1][0] - asked >= 0.25
    finally:
        flush.cancel()
        await asyncio.gather(flush, return_exceptions=True)


async def test_a_burst_of_news_is_still_one_call_per_interval() -> None:
    session, stub = _session(), _Stub()
    flush = asyncio.create_task(session._flush_statuses(stub))  # type: ignore[arg-type]
    try:
        began = time.monotonic()
        for n in range(40):  # a task RUNNING every 5 ms for 0.2 s
            session.report(f"t{n}", pb.TaskStatus(state=pb.RUNNING))
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.1)
        times = [at for at, _ in stub.calls]
        assert sum(len(updates) for _, updates in stub.calls) == 40
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # Each call is paced from the previous one's send time, taken a moment
        # before the stub sees it: a call delayed in that moment (CI saw 10 ms
        # on a loaded machine) shortens the next gap, never the average.
        assert all(gap >= 0.03 for gap in gaps), gaps
        assert sum(gaps) / len(gaps) >= 0.045, gaps
        assert len(times) <= 2 + (time.monotonic() - began) / 0.05
    finally:
        flush.cancel()
        await asyncio.gather(flush, return_exceptions=True)


async def test_a_starting_just_before_the_progress_is_due_waits_for_its_running() -> None:
    """PREPARING, then STARTING just before the PREPARING would go: the
    STARTING moves the time on, so the RUNNING that follows replaces it."""
    session, stub = _session(), _Stub()
    flush = asyncio.create_task(session._flush_statuses(stub))  # type: ignore[arg-type]
    try:
        session.report("t1", pb.TaskStatus(state=pb.PREPARING))
        await asyncio.sleep(0.25)
        session.report("t1", pb.TaskStatus(state=pb.STARTING))
        await asyncio.sleep(0.1)  # past the PREPARING's 0.3 s
        assert stub.calls == []
        session.report("t1", pb.TaskStatus(state=pb.RUNNING))
        running = time.monotonic()
        await stub.calls_made(1)
        assert stub.calls[0][1] == {"t1": pb.RUNNING}
        assert stub.calls[0][0] - running < 0.03
    finally:
        flush.cancel()
        await asyncio.gather(flush, return_exceptions=True)


times = st.floats(0, 10, allow_nan=False)


@given(now=times, sent_at=times, since=times, news=st.none() | times, progress=times)
def test_status_due_keeps_the_pace_and_never_waits_past_its_bounds(
        now: float, sent_at: float, since: float, news: float | None, progress: float) -> None:
    due = status_due(SETTINGS, now=now, sent_at=sent_at, waiting_since=since, news_at=news,
                     progress_at=progress)
    paced = sent_at + SETTINGS.status_flush_interval
    assert due >= paced - 1e-9  # never two calls within an interval
    if news is not None:  # news: its first pause, or the pace
        assert due <= max(news + SETTINGS.status_first_pause, paced) + 1e-9
    else:  # progress: its pause after the latest, never past the cap after the first
        assert due <= max(progress + SETTINGS.status_progress_pause, paced) + 1e-9
        assert due <= max(since + SETTINGS.status_progress_max, paced) + 1e-9
