"""Mass-disconnect protection's decision (controller/orchestrator/disruption.py)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.orchestrator.disruption import (
    DisruptionGate,
    DisruptionSettings,
    HeldView,
    released,
)

PERIOD = 1.0  # window 2 s, leader grace 5 s, one release per 2 s
SETTINGS = DisruptionSettings()
LONG_AGO = -1000.0  # the election


def decide(down: dict[str, float], now: float, total: int = 9,
           already: frozenset[str] = frozenset(), last: float = -math.inf,
           leader_since: float = LONG_AGO) -> tuple[set[str], float, float | None]:
    verdict = released(down, already, total, leader_since, last, now, SETTINGS, PERIOD)
    return set(verdict.release), verdict.released_at, verdict.recheck_at


def test_a_lone_node_is_released_after_one_window() -> None:
    assert decide({"a": 100.0}, now=101.0) == (set(), -math.inf, 102.0)
    assert decide({"a": 100.0}, now=102.0)[0] == {"a"}


def test_a_few_nodes_apart_are_each_released() -> None:
    # 3 of 9 is not more than a third.
    release, _, recheck = decide({"a": 100.0, "b": 100.5, "c": 101.0}, now=103.0)
    assert release == {"a", "b", "c"}
    assert recheck is None


def test_a_burst_is_released_one_node_per_interval() -> None:
    down = {n: 100.0 + i * 0.3 for i, n in enumerate("abcd")}  # 4 of 9 within a window
    release, last, recheck = decide(down, now=103.0)
    assert release == {"a"}  # the oldest first
    assert (last, recheck) == (103.0, 105.0)
    release, last, recheck = decide(down, now=104.0, already=frozenset({"a"}), last=103.0)
    assert release == set()
    assert recheck == 105.0
    release, last, _ = decide(down, now=105.0, already=frozenset({"a"}), last=103.0)
    assert release == {"b"}


def test_just_after_an_election_even_one_node_is_held() -> None:
    # DOWN 3 s after the election (grace 5 s): a failover, most likely.
    release, _, _ = decide({"a": 103.0, "b": 103.0}, now=106.0, leader_since=100.0,
                           last=105.5)
    assert release == set()
    assert decide({"a": 103.0}, now=106.0, leader_since=100.0)[0] == {"a"}  # at the rate


def test_the_gate_forgets_nodes_that_return() -> None:
    gate = DisruptionGate(SETTINGS)
    gate.restart(LONG_AGO)
    nodes = {n: pb.Node(id=n, status=pb.NodeStatus(state=pb.NodeStatus.READY)) for n in "abcdef"}
    for n in "abc":  # 3 of 6: a burst
        nodes[n] = pb.Node(id=n, status=pb.NodeStatus(state=pb.NodeStatus.DOWN))
    gate.observe(nodes, 100.0)
    assert gate.decide(len(nodes), 102.0, PERIOD)[0] == {"a"}
    assert gate.held == {"b", "c"}
    view = HeldView(nodes, gate.held)
    assert view["b"].status.state == pb.NodeStatus.READY  # the planner leaves its tasks
    assert view["a"].status.state == pb.NodeStatus.DOWN
    assert nodes["b"].status.state == pb.NodeStatus.DOWN  # the cache's object is untouched
    for n in "bc":  # they come back
        nodes[n] = pb.Node(id=n, status=pb.NodeStatus(state=pb.NodeStatus.READY))
    gate.observe(nodes, 103.0)
    assert gate.held == set()
    assert gate.decide(len(nodes), 110.0, PERIOD) == (frozenset(), None)


@given(st.dictionaries(st.sampled_from("abcdefghij"), st.floats(0, 20), max_size=10),
       st.floats(0, 40))
def test_never_more_than_one_burst_node_per_interval(down: dict[str, float], now: float) -> None:
    """Whatever went DOWN when: at most one node is released under the rate
    limit per decision, and all nodes judged normal are released at once."""
    release, last, _ = decide(down, now=now, total=10)
    window, _, _ = SETTINGS.scaled(PERIOD)
    rate_limited = {n for n in release
                    if sum(1 for t in down.values() if abs(t - down[n]) <= window) > 10 / 3}
    assert len(rate_limited) <= 1
    assert all(now - down[n] >= window for n in release)
    assert last in (-math.inf, now)
