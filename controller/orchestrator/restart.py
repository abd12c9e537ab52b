"""The restart supervisor's rules: whether, when, and as which attempt a slot
gets its next task.

Everything is decided from the slot's latest task alone, so the decision is
the same on every pass (level-triggered): a task that ended on its own
carries, in restart_history, the failure times of the attempts before it.
When the policy says no more restarts, that terminal task stays in the store
(history reaping always keeps the newest task of a slot) and is the evidence
that keeps the slot empty until the service's template changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from swarm.api.units import timestamp, to_seconds
from swarm.api.v1 import objects_pb2 as pb

from .tasks import end_time, ended_on_its_own

DEFAULT_RESTART_DELAY = 5.0


@dataclass(frozen=True)
class Successor:
    """The next task of a slot: when it may be created (None: never), its
    attempt number, and the restart history it carries."""

    not_before: float | None
    attempt: int
    history: tuple[Timestamp, ...]


def restart_delay(policy: pb.RestartPolicy) -> float:
    return to_seconds(policy.delay) if policy.HasField("delay") else DEFAULT_RESTART_DELAY


def wants_restart(task: pb.Task) -> bool:
    """The restart condition, for a task that ended on its own."""
    condition = task.spec.restart.condition
    if condition == pb.RestartPolicy.NONE:
        return False
    if condition == pb.RestartPolicy.ON_FAILURE:
        return not (task.status.state == pb.COMPLETE and task.status.container.exit_code == 0)
    return True


def history_in_window(task: pb.Task, at: float) -> list[Timestamp]:
    """The task's restart history, without the entries older than the policy's
    window before `at` (unset or zero window: all of it)."""
    policy = task.spec.restart
    window = to_seconds(policy.window) if policy.HasField("window") else 0.0
    if window <= 0:
        return list(task.restart_history)
    return [entry for entry in task.restart_history if to_seconds(entry) > at - window]


def successor(latest: pb.Task | None, spec_version: int) -> Successor:
    """The next task of a slot whose latest task (highest attempt) is `latest`.

    - an empty slot starts at attempt 0;
    - a task of an older spec version is replaced at once, history cleared
      (an update, or a restart that picks up the new template: restart
      counting starts again with each template, as in SwarmKit);
    - a task that ended on its own is restarted per its restart policy, after
      its delay, unless max_attempts restarts already happened in the window;
    - anything else (we shut it down: node lost or drained, scaled down and up
      again, a duplicate) is replaced at once and is not a restart.
    """
    if latest is None:
        return Successor(0.0, 0, ())
    attempt = latest.attempt + 1
    if latest.spec_version < spec_version:
        return Successor(0.0, attempt, ())
    if not ended_on_its_own(latest):
        return Successor(0.0, attempt, tuple(latest.restart_history))
    if not wants_restart(latest):
        return Successor(None, attempt, ())
    failed_at = end_time(latest)
    history = history_in_window(latest, failed_at)
    max_attempts = latest.spec.restart.max_attempts
    if max_attempts and len(history) >= max_attempts:
        return Successor(None, attempt, ())
    history.append(timestamp(failed_at))
    return Successor(failed_at + restart_delay(latest.spec.restart), attempt, tuple(history))
