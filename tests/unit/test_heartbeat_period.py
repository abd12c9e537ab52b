"""The heartbeat period the controllers set (controller/heartbeat.py), the
agent's patience (agent/session.py), and the lag the dispatcher does not
count (dispatcher/heartbeats.py): why together they keep a live node READY
on a controller that answers late. Pure arithmetic and the real Heartbeats
bookkeeping on a fake clock."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from swarm.agent.session import heartbeat_timeout
from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.dispatcher.heartbeats import (
    HEARTBEAT_MISSES,
    Heartbeats,
    backlog_limit,
    judged_until,
    worst_detection,
)
from swarm.controller.heartbeat import MAX_BEAT_RATE, heartbeat_period, scaled_period


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_period_is_the_configured_one_until_the_beat_rate_would_pass_its_cap() -> None:
    assert scaled_period(5.0, 0) == 5.0
    assert scaled_period(5.0, 1_000) == 5.0
    assert scaled_period(5.0, 1_250) == 5.0
    assert scaled_period(5.0, 2_000) == 8.0
    assert scaled_period(5.0, 5_000) == 20.0
    assert scaled_period(0.5, 4) == 0.5  # the tests' short periods are left alone


@given(st.floats(min_value=0.1, max_value=60.0), st.integers(min_value=0, max_value=100_000))
def test_the_cluster_never_beats_faster_than_the_cap_nor_slower_than_it_must(
        base: float, nodes: int) -> None:
    period = scaled_period(base, nodes)
    assert period >= base
    assert nodes / period <= MAX_BEAT_RATE * (1 + 1e-9)
    if period > base:  # stretched no further than the cap needs
        assert math.isclose(nodes / period, MAX_BEAT_RATE)


def test_the_cluster_objects_period_is_stretched_too() -> None:
    cluster = pb.Cluster()
    cluster.spec.dispatcher.heartbeat_period.FromSeconds(10)
    assert heartbeat_period([cluster], 5.0, nodes=1_000) == 10.0
    assert heartbeat_period([cluster], 5.0, nodes=5_000) == 20.0
    assert heartbeat_period([], 2.0, nodes=10) == 2.0


def test_an_agent_waits_three_periods_for_a_heartbeats_answer() -> None:
    assert heartbeat_timeout(5.0) == 15.0
    assert heartbeat_timeout(20.0) == 60.0
    assert heartbeat_timeout(0.2) == 1.0


def _run_beats(lags: list[float], period: float, report_lag: bool) -> list[float]:
    """A node beating every 0.8 period on schedule (agent/session.py), each
    beat handled lags[i] after it was sent, on a controller whose monitor
    wakes on time every half period (no stall to forgive); the times the
    node was found overdue."""
    clock = FakeClock()
    beats = Heartbeats(clock)
    beats.beat("n")  # the session opened
    sent = [0.8 * period * (i + 1) for i in range(len(lags))]
    handled = sorted((s + lag, lag) for s, lag in zip(sent, lags, strict=True))
    tick = period / 2
    end = handled[-1][0]
    events = sorted([(t, 0, lag) for t, lag in handled] +
                    [(tick * (i + 1), 1, 0.0) for i in range(int(end / tick))])
    found = []
    for when, what, lag in events:
        clock.now = when
        if what == 0:
            beats.beat("n")
            if report_lag:
                beats.lag(lag)
        elif beats.expired(tick, period):
            found.append(when)
            beats.beat("n")  # judged again from here
    return found


@given(st.lists(st.floats(min_value=0.0, max_value=0.999), min_size=1, max_size=60))
def test_a_node_whose_beats_wait_within_the_agents_patience_stays_alive(
        fractions: list[float]) -> None:
    """However long each beat waits in a busy controller's queue, up to two
    periods (what a lone node's own beats reveal of the lag; with more nodes
    every handled beat reveals it, up to the agents' deadline of three), the
    node is never found overdue: the controller does not count the time it
    was behind."""
    period = 1.0
    lags = [f * 2 * period for f in fractions]
    assert _run_beats(lags, period, report_lag=True) == []


def test_a_controller_behind_its_agents_patience_marks_no_one_down_for_it() -> None:
    """Beats that waited longer than their agents' deadline are lost (the
    agents reconnect); the beats that do get through show how far behind
    the controller is, and no node is judged for that time."""
    clock = FakeClock()
    beats = Heartbeats(clock)
    beats.beat("a")
    beats.beat("b")
    lost_from = 0.5  # b's beats are lost from here; a's get through, 2.5 periods late
    found: set[str] = set()
    while clock.now < 5.0:  # 5 s of silence from b: more than 3 periods
        clock.now += 0.5
        if clock.now >= lost_from + 2.5:
            beats.beat("a")
            beats.lag(2.5)
        found |= set(beats.expired(0.5, 1.0))
    assert found == set()
    clock.now += 1.0  # caught up (no more lag) and b still silent: b is found
    beats.beat("a")
    found |= set(beats.expired(0.5, 1.0))
    clock.now += 0.5
    found |= set(beats.expired(0.5, 1.0))
    assert found == {"b"}


def test_a_dead_node_is_found_once_the_controller_has_caught_up() -> None:
    clock = FakeClock()
    beats = Heartbeats(clock)
    beats.beat("dead")
    beats.lag(2.0)  # another node's beat waited 2 s: judged 2 s behind
    found_at = None
    while found_at is None:
        clock.now += 0.5
        if beats.expired(0.5, 1.0):
            found_at = clock.now
    assert found_at == 3.5  # 3 periods, a tick later: the lag was seen two ticks ago
    assert judged_until(10.0, (0.5, 2.0)) == 8.0


def test_beats_that_stop_still_expire_after_the_missed_periods() -> None:
    clock = FakeClock()
    beats = Heartbeats(clock)
    beats.beat("n")
    while not beats.expired(0.5, 1.0):
        clock.now += 0.5
    assert HEARTBEAT_MISSES * 1.0 < clock.now <= HEARTBEAT_MISSES * 1.0 + 0.5


# ---------------------------------------------------------------- the probe (caught_up)


def test_nodes_are_judged_no_later_than_the_last_probe_back_nor_earlier_than_the_limit() -> None:
    assert judged_until(10.0, (0.0, 0.0), caught_up=4.0) == 4.0
    assert judged_until(10.0, (0.0, 3.0), caught_up=9.0) == 7.0  # the lag says less
    assert judged_until(10.0, (0.0, 0.0), caught_up=1.0, limit=3.0) == 7.0  # bounded
    assert judged_until(10.0, (0.0, 8.0), limit=3.0) == 7.0
    assert judged_until(10.0, (0.0, 0.0)) == 10.0


@given(now=st.floats(min_value=0.0, max_value=1e6),
       lag=st.floats(min_value=0.0, max_value=1e3),
       behind=st.floats(min_value=0.0, max_value=1e3),
       period=st.floats(min_value=0.1, max_value=60.0))
def test_the_judgement_never_runs_ahead_of_the_queue_within_the_limit(
        now: float, lag: float, behind: float, period: float) -> None:
    limit = backlog_limit(period)
    until = judged_until(now, (0.0, lag), caught_up=now - behind, limit=limit)
    assert until <= now
    assert until >= now - limit - 1e-6  # a dead node is found in bounded time
    if max(lag, behind) <= limit:  # within the tolerance: never past what was handled
        assert until <= now - max(lag, behind) + 1e-6


def _queue_run(period: float, waits: list[float], dead_after: float | None
               ) -> tuple[list[float], float]:
    """One node beating every 0.8 period into a controller whose queue makes
    every call sent at i*step wait waits[i] (FIFO: a call waits at least as
    long as the one before it less the step); the monitor probes through the
    same queue and ticks every half period on time. The node stops beating
    at `dead_after` (None: never). Returns when it was found overdue, and
    the time the run ended."""
    step = 0.05
    clock = FakeClock()
    beats = Heartbeats(clock)
    beats.beat("n")
    handled: list[tuple[float, int, float]] = []  # (when, kind, sent): 0 beat, 1 probe
    next_beat = 0.8 * period
    next_probe = 0.0
    for i, wait in enumerate(waits):
        sent = i * step
        if sent >= next_beat:
            next_beat += 0.8 * period
            if dead_after is None or sent < dead_after:
                handled.append((sent + wait, 0, sent))
        if sent >= next_probe:
            next_probe = sent + 0.5
            handled.append((sent + wait, 1, sent))
    ticks = [(period / 2 * (k + 1), 2, 0.0) for k in range(int(len(waits) * step / (period / 2)))]
    found: list[float] = []
    for when, kind, sent in sorted(handled + ticks):
        clock.now = when
        if kind == 0:
            beats.beat("n", lag=when - sent)
        elif kind == 1:
            beats.caught_up(sent)
        elif beats.expired(period / 2, period):
            found.append(when)
    return found, len(waits) * step


def _fifo_waits(raw: list[float], step: float = 0.05) -> list[float]:
    """Waits a FIFO queue can give: each call is handled no earlier than the
    one sent before it."""
    waits: list[float] = []
    for wait in raw:
        if waits:
            wait = max(wait, waits[-1] - step)
        waits.append(wait)
    return waits


@given(st.lists(st.floats(min_value=0.0, max_value=2.9), min_size=200, max_size=600))
def test_a_live_node_behind_a_growing_queue_is_never_marked_down(raw: list[float]) -> None:
    """The failure measured at 2,000 nodes: the queue grows faster than the
    lags of handled beats show. With the probe, however the queue's wait
    goes (up to the agents' patience of three periods), a live node is
    never found overdue."""
    period = 1.0
    found, _ = _queue_run(period, _fifo_waits(raw), dead_after=None)
    assert found == []


def test_a_queue_that_fills_at_once_fooled_the_lag_alone() -> None:
    """A burst fills the queue at once (every call from 2 s on waits 2.9 s):
    the lags of the beats handled so far said nothing of it, and without
    the probe the live node was found overdue; with it, it is not."""
    period = 1.0
    waits = [0.0 if i * 0.05 < 2.0 else 2.9 for i in range(200)]
    clock = FakeClock()
    beats = Heartbeats(clock)
    beats.beat("n")
    events: list[tuple[float, int, float]] = []
    for k in range(1, 12):
        sent = 0.8 * period * k
        wait = waits[min(int(sent / 0.05), len(waits) - 1)]
        events.append((sent + wait, 0, wait))
    events += [(0.5 * (k + 1), 1, 0.0) for k in range(20)]
    found = []
    for when, kind, wait in sorted(events):
        clock.now = when
        if kind == 0:
            beats.beat("n")
            beats.lag(wait)
        elif beats.expired(0.5, period):
            found.append(when)
            beats.beat("n")
    assert found  # the lag alone marked it down
    assert _queue_run(period, waits, dead_after=None)[0] == []  # the probe does not


@given(st.lists(st.floats(min_value=0.0, max_value=2.9), min_size=400, max_size=400),
       st.floats(min_value=1.0, max_value=8.0))
def test_a_dead_node_is_found_within_the_documented_bound(raw: list[float],
                                                            dead_after: float) -> None:
    period = 1.0
    found, _ = _queue_run(period, _fifo_waits(raw), dead_after=dead_after)
    assert found, "never found"
    last_beat = (int(dead_after / (0.8 * period) - 1e-9)) * 0.8 * period
    # Found no earlier than its missed periods, no later than the bound.
    assert found[0] - last_beat >= HEARTBEAT_MISSES * period - 1e-6
    assert found[0] - last_beat <= worst_detection(period, period / 2) + 0.05 + 1e-6
