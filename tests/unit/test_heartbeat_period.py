"""The heartbeat period the controllers set (controller/heartbeat.py), the
agent's patience (agent/session.py), and why the two together keep a live
node READY on a controller that answers late: pure arithmetic and the real
Heartbeats bookkeeping on a fake clock."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from swarm.agent.session import heartbeat_timeout
from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.dispatcher.heartbeats import HEARTBEAT_MISSES, Heartbeats
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


def test_an_agent_waits_two_periods_for_a_heartbeats_answer() -> None:
    assert heartbeat_timeout(5.0) == 10.0
    assert heartbeat_timeout(20.0) == 40.0
    assert heartbeat_timeout(0.2) == 1.0


@given(st.lists(st.floats(min_value=0.0, max_value=0.999), min_size=1, max_size=60))
def test_a_node_whose_beats_are_answered_within_the_agents_patience_stays_alive(
        lags: list[float]) -> None:
    """The node beats every 0.8 period; each beat reaches the dispatcher's
    handler late by any amount the agent waits for (under 2 periods, the
    fraction drawn here), because the controller is busy but its monitor
    wakes on time (no stall to forgive): it is never found overdue."""
    period = 1.0
    clock = FakeClock()
    beats = Heartbeats(clock)
    beats.beat("n")  # the session opened
    sent = [0.8 * period * (i + 1) for i in range(len(lags))]
    handled = sorted(s + lag * heartbeat_timeout(period) for s, lag in zip(sent, lags, strict=True))
    tick = period / 2
    end = handled[-1]
    events = sorted([(t, "beat") for t in handled] +
                    [(tick * (i + 1), "tick") for i in range(int(end / tick))])
    for when, what in events:
        clock.now = when
        if what == "beat":
            beats.beat("n")
        else:
            assert beats.expired(tick, period) == {}, f"marked down at {when:.2f}"


def test_beats_that_stop_still_expire_after_the_missed_periods() -> None:
    clock = FakeClock()
    beats = Heartbeats(clock)
    beats.beat("n")
    while not beats.expired(0.5, 1.0):
        clock.now += 0.5
    assert HEARTBEAT_MISSES * 1.0 < clock.now <= HEARTBEAT_MISSES * 1.0 + 0.5
