"""The worker's decisions, pure: the one step a task takes next from its
desired and observed state (`next_step`), what an exit means, how long a stop
waits (grace period, drain before stop), and which reports may be sent. The
worker (agent/worker.py) does the steps; everything here is unit-tested
without containers."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from swarm.api.healthcheck import is_up
from swarm.api.units import to_seconds
from swarm.api.v1 import objects_pb2 as pb

DEFAULT_STOP_GRACE = 10.0  # docker's and swarm's default stop grace period
# Drain before stop: the longest a task told to stop waits for every node to
# confirm it no longer sends it connections (see must_drain). Two seconds is
# several times what the confirmation takes on a busy host (the controller's
# 0.1 s coalescing, each node's DNS, nft and proxy update, one heartbeat:
# p50 0.1-0.15 s, max 0.4 s measured by bench.rollout at load 5) and short
# enough that a rolling update of many slots is not held up for long by a
# node that never answers.
DEFAULT_DRAIN_TIMEOUT = 2.0

class Step(enum.Enum):
    WAIT = "wait"  # nothing to do until the assignment changes
    DONE = "done"  # terminal, container not running: nothing more, ever (but removal)
    ACCEPT = "accept"  # -> ACCEPTED
    PREPARE = "prepare"  # -> PREPARING, pull, create the container -> READY
    START = "start"  # -> STARTING, start -> RUNNING
    MONITOR = "monitor"  # wait for the exit, run health checks
    REPORT_EXIT = "report-exit"  # the container exited: -> COMPLETE | FAILED
    LOST = "lost"  # the controller saw it started, but no container exists: -> FAILED
    STOP = "stop"  # asked to stop: signal, grace, SIGKILL -> SHUTDOWN
    SHUTDOWN = "shutdown"  # asked to stop, nothing runs: -> SHUTDOWN
    KILL = "kill"  # terminal already, but its container still runs: stop it, no report


ALIVE = frozenset({"running", "paused"})  # container statuses with a process


@dataclass(frozen=True)
class Observed:
    """What the worker knows of a task: the state it (or, before it reported
    anything, the controller) last recorded, and the container's status --
    None when there is no container ("unknown", a bundle cut short by a crash,
    counts as none: prepare clears it)."""

    state: int
    container: str | None = None


def next_step(desired: int, observed: Observed) -> Step:
    """The one thing to do next for a task. Pure; see Step."""
    alive = observed.container in ALIVE
    created = observed.container == "created"
    if observed.state >= pb.COMPLETE:
        return Step.KILL if alive or created else Step.DONE
    if desired > pb.RUNNING:  # SHUTDOWN, REMOVE...
        return Step.STOP if alive or created else Step.SHUTDOWN
    if alive:
        return Step.MONITOR
    if observed.container == "stopped":
        return Step.REPORT_EXIT
    if created:
        return Step.START if desired >= pb.RUNNING else Step.WAIT
    if observed.state >= pb.RUNNING:
        return Step.LOST
    if observed.state < pb.ACCEPTED:
        return Step.ACCEPT
    # Accepted, or preparing/starting when an agent restart lost the container.
    return Step.PREPARE if desired >= pb.READY else Step.WAIT


def exit_outcome(exit_code: int, oom_killed: bool = False) -> tuple[int, str, str]:
    """(state, message, err) of a container that exited on its own."""
    if exit_code == 0 and not oom_killed:
        return pb.COMPLETE, "finished", ""
    err = f"task: non-zero exit ({exit_code})"
    if oom_killed:
        err += ": killed by the OOM killer (memory limit reached)"
    return pb.FAILED, err.removeprefix("task: "), err


def _duration(container: pb.ContainerSpec, name: str, default: float) -> float:
    """A duration field of the container spec in seconds (never negative); the
    default when it is not set."""
    if container.HasField(name):  # type: ignore[arg-type]
        return max(0.0, to_seconds(getattr(container, name)))
    return default


def stop_grace(container: pb.ContainerSpec) -> float:
    return _duration(container, "stop_grace_period", DEFAULT_STOP_GRACE)


def drain_timeout(container: pb.ContainerSpec) -> float:
    return _duration(container, "drain_timeout", DEFAULT_DRAIN_TIMEOUT)


def must_drain(task: pb.Task, status: pb.TaskStatus) -> bool:
    """Whether a task told to stop first waits to be drained: other nodes
    may send it connections (it is on overlay networks, the ingress network
    included) and it was a backend (RUNNING, and not unhealthy nor waiting for
    its first health check: the controller's peers.is_ready without the
    desired state). A task that never was a backend stops at once."""
    return bool(task.networks) and is_up(status)


def drain_left(asked: float, now: float, bound: float, drained: bool) -> float:
    """Seconds the stop signal still waits: none once the controller said
    every node has let the task go, else until `bound` after the stop was
    asked for."""
    return 0.0 if drained else max(0.0, asked + bound - now)


def state_name(state: int) -> str:
    return pb.TaskState.Name(pb.TaskState.ValueType(state))


def may_report(previous: int, new: int) -> bool:
    """States move forward only; the same state again (a health change, a
    re-report) is fine."""
    return new >= previous
