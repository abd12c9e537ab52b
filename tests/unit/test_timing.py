"""agent/timing.py: the start timeline's line, as the agent logs it and
bench.containers --timing reads it back."""

from __future__ import annotations

import asyncio
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarm.agent import timing


def test_marks_follow_the_task_that_set_the_timeline(caplog: pytest.LogCaptureFixture) -> None:
    ticks = iter([0.0, 0.010, 0.025, 0.040])
    timeline = timing.StartTimeline(clock=lambda: next(ticks))

    async def task() -> None:
        timing.use(timeline)
        timing.mark("mount")
        await asyncio.create_task(inner())  # a task made from here sees it too
        timing.finish("t1", timeline, "report")

    async def inner() -> None:
        timing.mark("netns")

    async def other() -> None:
        timing.mark("ignored")  # no timeline in this task: nothing happens

    async def both() -> None:
        await asyncio.gather(task(), other())

    with caplog.at_level(logging.DEBUG, logger=timing.log.name):
        asyncio.run(both())
        timing.finish("t1", timeline, "again")  # once only
    assert [m for m, _ in timeline.marks] == ["mount", "netns", "report"]
    lines = [r.getMessage() for r in caplog.records if r.name == timing.log.name]
    assert lines == ["task t1 start 40.0 ms: mount 10.0, netns 15.0, report 15.0"]
    assert timing.parse_line(f"2026-12-05 15:40:01,123 DEBUG swarm.agent.timing: {lines[0]}") \
        == ("t1", {"mount": 10.0, "netns": 15.0, "report": 15.0})


def test_off_unless_the_logger_is_at_debug() -> None:
    timing.log.setLevel(logging.INFO)
    try:
        assert timing.begin() is None
        timing.log.setLevel(logging.DEBUG)
        assert timing.begin() is not None
    finally:
        timing.log.setLevel(logging.NOTSET)


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c-d"]),
                          st.floats(min_value=0, max_value=10)), min_size=1, max_size=8))
def test_a_line_reads_back_as_written(steps: list[tuple[str, float]]) -> None:
    marks, at = [], 0.0
    for step, seconds in steps:
        at += seconds
        marks.append((step, at))
    parsed = timing.parse_line(timing.format_line("x1", marks))
    assert parsed is not None
    assert parsed[0] == "x1"
    expected: dict[str, float] = {}
    for step, seconds in timing.durations(marks):
        expected[step] = expected.get(step, 0.0) + round(seconds * 1000, 1)
    assert parsed[1] == pytest.approx(expected, abs=0.2)


def test_not_a_timing_line() -> None:
    assert timing.parse_line("2026-12-05 INFO swarm.agent.worker: task t1 (web): running") is None
    assert timing.parse_line("task t1 start 1.0 ms: mount x") is None


def test_summary_is_the_median_per_step_in_order() -> None:
    assert timing.summary({"t1": {"mount": 1.0, "netns": 9.0}, "t2": {"mount": 3.0},
                           "t3": {"mount": 2.0, "netns": 5.0}}) == {"mount": 2.0, "netns": 5.0}
