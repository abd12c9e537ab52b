"""Where a task's start goes: from its assignment to RUNNING, step by step.

Off by default (it costs a clock read per step and nothing else). With the
agent's `--log-task-timing` (the logger `swarm.agent.timing` at DEBUG), the
worker gives each new task a StartTimeline; the worker and the runtime mark
the steps they finish (`mark("mount")`) through a context variable, so that
the runtime's Protocol needs no extra parameter, and once the task is RUNNING
(or has failed to get there) one line says how long each step took:

    task 3f2a... start 412.3 ms: accept 0.4, pull 1.2, mount 3.1, netns 21.0, ...

Each figure is the time since the previous mark, so the figures add up to the
total and a step that waited (a lock, a thread of the default executor, the
event loop) shows where. bench.containers --timing reads these lines.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

log = logging.getLogger("swarm.agent.timing")

_current: contextvars.ContextVar[StartTimeline | None] = contextvars.ContextVar(
    "swarm_agent_start_timeline", default=None)


def enabled() -> bool:
    return log.isEnabledFor(logging.DEBUG)


@dataclass
class StartTimeline:
    """One task's marks: (step, seconds since the assignment arrived)."""

    clock: Callable[[], float] = time.perf_counter
    started: float = field(default=0.0)
    marks: list[tuple[str, float]] = field(default_factory=list)
    done: bool = False

    def __post_init__(self) -> None:
        self.started = self.started or self.clock()

    def mark(self, step: str) -> None:
        self.marks.append((step, self.clock() - self.started))


def begin() -> StartTimeline | None:
    """A timeline for a new task (None when timing is off)."""
    return StartTimeline() if enabled() else None


def use(timeline: StartTimeline | None) -> None:
    """Make `timeline` the current task's (in this asyncio task and the
    tasks it creates from now on)."""
    _current.set(timeline)


def mark(step: str) -> None:
    """Mark a step of the current task's start, if it is being timed."""
    timeline = _current.get()
    if timeline is not None and not timeline.done:
        timeline.mark(step)


def durations(marks: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    """Each step's own time: since the mark before it (the first: since 0)."""
    previous = 0.0
    steps = []
    for step, at in marks:
        steps.append((step, at - previous))
        previous = at
    return steps


def format_line(task_id: str, marks: Iterable[tuple[str, float]]) -> str:
    steps = durations(marks)
    total = sum(seconds for _, seconds in steps)
    return (f"task {task_id} start {total * 1000:.1f} ms: "
            + ", ".join(f"{step} {seconds * 1000:.1f}" for step, seconds in steps))


def parse_line(line: str) -> tuple[str, dict[str, float]] | None:
    """(task ID, {step: ms}) of a line format_line wrote (anywhere in `line`)."""
    head, found, rest = line.partition(" start ")
    if not found or "task " not in head:
        return None
    task_id = head.rpartition("task ")[2].strip()
    _, colon, steps = rest.partition(": ")
    if not colon:
        return None
    parsed: dict[str, float] = {}
    for part in steps.split(", "):
        step, _, value = part.rpartition(" ")
        try:
            parsed[step] = parsed.get(step, 0.0) + float(value)
        except ValueError:
            return None
    return task_id, parsed


def finish(task_id: str, timeline: StartTimeline | None, last: str) -> None:
    """Mark `last` and log the line, once."""
    if timeline is None or timeline.done:
        return
    timeline.mark(last)
    timeline.done = True
    log.debug("%s", format_line(task_id, timeline.marks))


def summary(tasks: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The median of each step over the tasks (ms), in the order steps came."""
    order: list[str] = []
    for steps in tasks.values():
        order += [step for step in steps if step not in order]
    result = {}
    for step in order:
        values = sorted(steps.get(step, 0.0) for steps in tasks.values())
        result[step] = round(values[len(values) // 2], 1) if values else 0.0
    return result
