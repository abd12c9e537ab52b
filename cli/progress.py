"""Waiting for services to converge after `service create`, `update` and `scale`,
as `docker service create` does in a terminal.

A service has converged when every task it wants is up with the current task
template (the service's spec_version: RUNNING, and healthy when it has a health
check), no other task is meant to run, and the rolling update this command started,
if any, has completed (as docker's CLI waits out the update's monitor period). It
has failed when, since the command began, one slot's tasks failed or were rejected
FAILURE_LIMIT times (fewer when the restart policy gives up sooner), or its rolling
update paused or was rolled back (the rollback is waited for: the command fails
once the service is back on its old spec, or the rollback paused). Otherwise it
is still converging, until `--timeout`.

A job (replicated-job, global-job) has converged when the run the command started
(its iteration) has completed, and failed when the controller marks that run
FAILED (a task failed and its restart policy gives up): exit status 3 with the
controller's reason.

The wait follows the controller's event stream (Control.Events, through
cli/watch.py): one read of the service, its tasks and the nodes, then every change
as it happens, judged again after each burst of events. A controller without the
stream (an older one) is polled instead: GetService, ListTasks and ListNodes every
POLL_INTERVAL, as is a caller that injects its own `sleep` (tests).

Progress goes to stderr so that stdout keeps only the result (the ID `create`
prints, which scripts capture). On a terminal it is redrawn in place; anywhere
else only one final line is written: the summary, or the error (exit status 3).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO

import grpc

from swarm.api import units
from swarm.api.constraints import first_unmet, parse_constraints
from swarm.api.healthcheck import is_up
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.api.validation import JOB_MODES

from . import colour, parsing, render
from .client import Controller, RpcFailure
from .errors import BadFlag, Interrupted, NotConverged
from .watch import EventFeed, EventsUnavailable, View, watch_request

POLL_INTERVAL = 0.2  # seconds between polls: quick enough to look live, cheap to serve
# Longest wait for an event before the timeout is checked again (events wake it at once).
EVENT_WAIT = 0.5
FAILURE_LIMIT = 3  # failed attempts of one slot, since the command began, that end the wait
MAX_TASK_LINES = 20  # per service on a terminal; the rest is summarised
DEFAULT_WAIT = "3m"

_FAILED = (pb.FAILED, pb.REJECTED)
_UPDATE_FAILURES = {
    pb.UpdateStatus.PAUSED: "update paused",
    pb.UpdateStatus.ROLLBACK_PAUSED: "update failed; its rollback paused",
    pb.UpdateStatus.ROLLBACK_COMPLETED: "update failed and was rolled back",
}
_IN_PROGRESS = (pb.UpdateStatus.UPDATING, pb.UpdateStatus.ROLLBACK_STARTED)
def wait_timeout(text: str) -> float:
    """`--timeout DURATION` of the waiting commands, in seconds; must be positive."""
    nanos = parsing.duration("--timeout", text)
    if nanos <= 0:
        raise BadFlag("--timeout", f"invalid duration {text!r}: must be more than 0s")
    return nanos / 1e9


# ---------------------------------------------------------------- judging one poll


@dataclass(frozen=True)
class Baseline:
    """What existed before this command's change, so that only what follows it counts:
    tasks that failed yesterday, or an update that paused last week, are not this
    command's failure."""

    service_id: str
    name: str
    task_ids: frozenset[str] = frozenset()
    update_state: int = pb.UpdateStatus.UNKNOWN
    update_started: int = 0  # update_status.started_at in nanoseconds
    rollback: bool = False  # the command asked for a rollback: rolling back is success
    # Jobs: the iteration (run) before the command's; the command waits for a later
    # one to finish (none, for a scheduled job the command did not start a run of).
    job_before: int = 0


def baseline_of(service: pb.Service, tasks: Iterable[pb.Task] = (), *,
                rollback: bool = False, created: bool = False) -> Baseline:
    """The service before the command's change; `created`: the service the command
    just created (a job's first run, if it started one, is then the command's)."""
    status = service.update_status
    iteration = service.job_status.iteration
    return Baseline(service_id=service.id, name=service.spec.name,
                    task_ids=frozenset(task.id for task in tasks),
                    update_state=status.state, update_started=status.started_at.ToNanoseconds(),
                    rollback=rollback,
                    job_before=max(iteration - 1, 0) if created else iteration)


def _is_new(status: pb.UpdateStatus, baseline: Baseline) -> bool:
    """Whether the update status is not the one from before the command (an older
    command's business)."""
    return (status.state, status.started_at.ToNanoseconds()) != (baseline.update_state,
                                                                 baseline.update_started)


def _update_failure(status: pb.UpdateStatus, baseline: Baseline) -> str | None:
    """Why the rolling update this command started went wrong, if it did."""
    if not _is_new(status, baseline):
        return None
    if baseline.rollback and status.state == pb.UpdateStatus.ROLLBACK_COMPLETED:
        return None
    if status.state not in _UPDATE_FAILURES:
        return None
    return _UPDATE_FAILURES[status.state] + (f": {status.message}" if status.message else "")


def _update_pending(status: pb.UpdateStatus, baseline: Baseline) -> str:
    """What the rolling update this command started still does ('' when nothing):
    updating, or rolling back (asked for, or after a failure)."""
    if not _is_new(status, baseline) or status.state not in _IN_PROGRESS:
        return ""
    if status.state == pb.UpdateStatus.UPDATING:
        return "update in progress"
    if baseline.rollback:
        return "rollback in progress"
    return "update failed and is rolling back" + (f": {status.message}" if status.message
                                                   else "")


@dataclass(frozen=True)
class TaskLine:
    """One task as the progress display shows it."""

    name: str  # web.2, or web.HOSTNAME for a global service
    state: str  # running, pending, ...
    node: str
    detail: str  # its error, or the scheduler's reason while it waits for a node


@dataclass(frozen=True)
class Assessment:
    name: str
    running: int
    desired: int
    converged: bool
    failure: str | None
    tasks: tuple[TaskLine, ...]
    waiting_for: str = ""  # for a timeout message: the first reason a task is not running
    update: str = ""  # what the rolling update this command started still does
    completed: int | None = None  # jobs: tasks of the run that completed

    @property
    def summary(self) -> str:
        if self.completed is not None:
            return (f"{self.name}: {self.completed}/{self.desired} completed "
                    f"({self.running} running)")
        return f"{self.name}: {self.running}/{self.desired} tasks running"


def _slot(task: pb.Task) -> str:
    return str(task.slot) if task.slot else task.node_id


def _failure_limit(spec: pb.ServiceSpec) -> int:
    """How many failures of one slot to wait through: the restart supervisor gives up
    after max_attempts restarts, and never restarts with condition none."""
    restart = spec.task.restart
    if restart.condition == pb.RestartPolicy.NONE:
        return 1
    if restart.max_attempts:
        return min(FAILURE_LIMIT, restart.max_attempts + 1)
    return FAILURE_LIMIT


def eligible_nodes(spec: pb.ServiceSpec, nodes: Iterable[pb.Node]) -> set[str]:
    """IDs of the nodes a global service must run on, by the orchestrator's rule
    (controller/orchestrator/global_.py): not down, active, meeting the constraints (by
    the scheduler's own matcher, so that the two cannot disagree). A paused or down node
    keeps its task as it is, so the wait does not count it either way."""
    constraints = parse_constraints(spec.task.placement.constraints)
    return {node.id for node in nodes
            if node.status.state != pb.NodeStatus.DOWN
            and node.spec.availability == pb.NodeSpec.ACTIVE
            and first_unmet(constraints, node) is None}


def assess(service: pb.Service, tasks: Sequence[pb.Task], nodes: Sequence[pb.Node],
           baseline: Baseline) -> Assessment:
    """Where one service stands: converged, failed (and why), or still on its way."""
    spec = service.spec
    name = spec.name
    hostnames = {node.id: node.description.hostname for node in nodes}
    own = [task for task in tasks if task.service_id == service.id]
    if spec.WhichOneof("mode") in JOB_MODES:
        return _assess_job(service, own, nodes, baseline, hostnames)
    live = [task for task in own if task.desired_state <= pb.RUNNING]
    if spec.WhichOneof("mode") == "global":
        wanted = eligible_nodes(spec, nodes)
        desired = len(wanted)
        counted = [task for task in live if task.node_id in wanted]
    else:
        desired = spec.replicated.replicas
        counted = live
    running = [task for task in counted if task.spec_version >= service.spec_version
               and is_up(task.status)]

    failure = _update_failure(service.update_status, baseline)
    failed: dict[str, list[pb.Task]] = {}
    for task in own:
        if (task.status.state in _FAILED and task.id not in baseline.task_ids
                and task.spec_version >= service.spec_version):
            failed.setdefault(_slot(task), []).append(task)
    limit = _failure_limit(spec)
    for attempts in failed.values():
        if failure is None and len(attempts) >= limit:
            last = max(attempts, key=lambda task: task.meta.created_at.ToNanoseconds())
            times = "once" if len(attempts) == 1 else f"{len(attempts)} times"
            why = last.status.err or last.status.message or "no reason given"
            failure = f"task {_display_name(last, hostnames)} failed {times}: {why}"

    lines = tuple(
        TaskLine(name=_display_name(task, hostnames),
                 state=render.enum_word(pb.TaskState.Name(task.status.state)),
                 node=hostnames.get(task.node_id, task.node_id),
                 detail=render.task_error(task) or render.task_health(task))
        for task in sorted(live, key=lambda t: (t.slot, hostnames.get(t.node_id, t.node_id))))
    pending = _update_pending(service.update_status, baseline)
    waiting = next((f"{line.name} {line.state}" + (f": {line.detail}" if line.detail else "")
                    for line in lines if line.state != "running" or line.detail == "starting"),
                   pending)
    # Equal counts rule out both a missing task and an extra one (an old task that a
    # start-first update has not stopped yet).
    # (A rebalance is an update too: pending until it has ended.)
    converged = failure is None and not pending and len(running) == desired == len(counted)
    return Assessment(name=name, running=len(running), desired=desired, converged=converged,
                      failure=failure, tasks=lines, waiting_for=waiting, update=pending)


def _assess_job(service: pb.Service, own: Sequence[pb.Task], nodes: Sequence[pb.Node],
                baseline: Baseline, hostnames: Mapping[str, str]) -> Assessment:
    """A job has converged when the run the command started has completed, and
    failed when the controller says it failed (a task failed and its restart policy
    gives up: JobStatus FAILED). A scheduled job the command started no run of
    (`create --schedule`) has nothing to wait for."""
    status = service.job_status
    spec = service.spec
    run = [task for task in own if task.job_iteration == status.iteration]
    if spec.WhichOneof("mode") == "global_job":
        desired = len(eligible_nodes(spec, nodes))
    else:
        desired = spec.replicated_job.total_completions
    completed = sum(task.status.state == pb.COMPLETE for task in run)
    running = sum(task.status.state == pb.RUNNING for task in run)
    lines = tuple(
        TaskLine(name=_display_name(task, hostnames),
                 state=render.enum_word(pb.TaskState.Name(task.status.state)),
                 node=hostnames.get(task.node_id, task.node_id),
                 detail=render.task_error(task))
        for task in sorted(run, key=lambda t: (t.slot, hostnames.get(t.node_id, t.node_id))))
    started = status.iteration > baseline.job_before
    failure = status.message if started and status.state == pb.JobStatus.FAILED else None
    converged = not started or (status.state == pb.JobStatus.COMPLETE and failure is None)
    waiting = "" if converged else (status.message or "running")
    return Assessment(name=spec.name, running=running, desired=desired, converged=converged,
                      failure=failure, tasks=lines, waiting_for=waiting, completed=completed)


def _display_name(task: pb.Task, hostnames: Mapping[str, str]) -> str:
    if task.slot:
        return f"{task.service_name}.{task.slot}"
    return f"{task.service_name}.{hostnames.get(task.node_id, task.node_id[:12])}"


# ---------------------------------------------------------------- showing it


def progress_lines(assessments: Sequence[Assessment], width: int, *,
                   coloured: bool = False) -> list[str]:
    """The terminal display: a summary per service, then one line per task; every line
    cut to the terminal's width so that redrawing can count lines (colour is added
    after the cut, so escape sequences are never cut nor counted)."""
    def fit(line: str) -> str:
        return line[:max(width - 1, 20)]

    lines: list[str] = []
    for assessment in assessments:
        summary = fit(assessment.summary + (f" ({assessment.update})" if assessment.update
                                            else ""))
        lines.append(colour.bold(summary) if coloured else summary)
        shown = assessment.tasks[:MAX_TASK_LINES]
        rows = [[task.name, task.state, task.node, task.detail] for task in shown]
        if rows:
            # render.table aligns the columns; its (blank) header line is dropped.
            aligned = render.table(["", "", "", ""], rows).splitlines()[1:]
            for task, row in zip(shown, aligned, strict=True):
                line = fit("  " + row)
                lines.append(colour.for_state(line, task.state) if coloured else line)
        if len(assessment.tasks) > MAX_TASK_LINES:
            lines.append(fit(f"  ... and {len(assessment.tasks) - MAX_TASK_LINES} more tasks"))
    return lines


class LiveDisplay:
    """Redraws its block of lines in place with ANSI cursor movement."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.height = 0

    def draw(self, lines: Sequence[str]) -> None:
        # Up to the first line drawn last time, clear to the end of the screen, redraw.
        up = f"\x1b[{self.height}F" if self.height else ""
        self.stream.write(up + "\x1b[J" + "".join(f"{line}\n" for line in lines))
        self.stream.flush()
        self.height = len(lines)


def interactive(stream: TextIO) -> bool:
    """Progress only on a terminal that understands cursor movement."""
    return stream.isatty() and os.environ.get("TERM", "") != "dumb"


# ---------------------------------------------------------------- the wait


def _read(ctl: Controller, baselines: Sequence[Baseline]
          ) -> tuple[list[pb.Service], list[pb.Task], list[pb.Node]]:
    """The services, their tasks and the nodes, read once."""
    services: list[pb.Service] = []
    for baseline in baselines:
        try:
            services.append(ctl.call(ctl.stub.GetService,
                                     cpb.GetRequest(ref=baseline.service_id)).service)
        except RpcFailure as error:
            if error.code != grpc.StatusCode.NOT_FOUND:
                raise
            _removed(baseline)
    request = cpb.ListTasksRequest()
    request.filters.service_ids.extend(b.service_id for b in baselines)
    tasks = list(ctl.call(ctl.stub.ListTasks, request).tasks)
    nodes = list(ctl.call(ctl.stub.ListNodes, cpb.ListNodesRequest()).nodes)
    return services, tasks, nodes


def _removed(baseline: Baseline) -> None:
    raise NotConverged(f"{baseline.name}: the service was removed while waiting for it")


def poll(ctl: Controller, baselines: Sequence[Baseline]) -> list[Assessment]:
    services, tasks, nodes = _read(ctl, baselines)
    return [assess(service, tasks, nodes, baseline)
            for service, baseline in zip(services, baselines, strict=True)]


def assess_view(view: View, baselines: Sequence[Baseline]) -> list[Assessment]:
    """Assessments from the event-fed view (as `poll` makes them from reads)."""
    for baseline in baselines:
        if baseline.service_id in view.removed:
            _removed(baseline)
    tasks = list(view.tasks.values())
    nodes = list(view.nodes.values())
    return [assess(view.services[baseline.service_id], tasks, nodes, baseline)
            for baseline in baselines]


def wait_until_converged(ctl: Controller, baselines: Sequence[Baseline], *, timeout: float,
                         stream: TextIO, clock: Callable[[], float] = time.monotonic,
                         sleep: Callable[[float], None] | None = None) -> None:
    """Follow the events (or poll, given `sleep`) until every service has converged;
    raise NotConverged when one fails or the timeout passes. Writes progress to `stream`
    when it is a terminal, and one line at the end otherwise (the error itself when it
    fails)."""
    try:
        if sleep is None:
            try:
                _follow(ctl, baselines, timeout=timeout, stream=stream, clock=clock)
                return
            except EventsUnavailable:
                sleep = time.sleep
        _wait(ctl, baselines, timeout=timeout, stream=stream, clock=clock, sleep=sleep)
    except KeyboardInterrupt:
        # Docker's wording, in one line rather than a traceback: nothing is undone.
        names = " ".join(baseline.name for baseline in baselines)
        raise Interrupted("stopped waiting; the change was made and goes on in the "
                          f"background (see: swarmctl service ps {names})") from None


def _judge(assessments: Sequence[Assessment], display: LiveDisplay | None, stream: TextIO,
           elapsed: float, timeout: float) -> bool:
    """Show the assessments; whether the wait is over (True), raising NotConverged when
    a service failed or the time is up."""
    if display is not None:
        display.draw(progress_lines(assessments, shutil.get_terminal_size().columns,
                                    coloured=colour.enabled(stream)))
    failures = [f"{a.name}: {a.failure}" for a in assessments if a.failure]
    if failures:
        raise NotConverged("; ".join(failures))
    if all(a.converged for a in assessments):
        summary = ", ".join(a.summary for a in assessments)
        stream.write(f"{summary} (converged in {elapsed:.1f}s)\n")
        stream.flush()
        return True
    if elapsed >= timeout:
        behind = [a for a in assessments if not a.converged]
        reasons = "; ".join(a.summary + (f" ({a.waiting_for})" if a.waiting_for else "")
                            for a in behind)
        raise NotConverged(f"not converged after {units.format_duration(int(timeout * 1e9))}"
                           f": {reasons}")
    return False


def _wait(ctl: Controller, baselines: Sequence[Baseline], *, timeout: float, stream: TextIO,
          clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
    started = clock()
    display = LiveDisplay(stream) if interactive(stream) else None
    while not _judge(poll(ctl, baselines), display, stream, clock() - started, timeout):
        sleep(POLL_INTERVAL)


def _follow(ctl: Controller, baselines: Sequence[Baseline], *, timeout: float,
            stream: TextIO, clock: Callable[[], float]) -> None:
    """The wait on the event stream: read once, then apply events as they come and
    judge again after each burst."""
    started = clock()
    display = LiveDisplay(stream) if interactive(stream) else None
    feed = EventFeed(ctl, watch_request())
    try:
        feed.wait_synced(ctl.timeout)
        view = View(frozenset(b.service_id for b in baselines))
        view.load(*_read(ctl, baselines))
        view.apply_all(feed.drain())
        while not _judge(assess_view(view, baselines), display, stream, clock() - started,
                         timeout):
            left = timeout - (clock() - started)
            event = feed.next(min(EVENT_WAIT, max(left, 0.0)))
            if event is not None:
                view.apply(event)
                view.apply_all(feed.drain())
    finally:
        feed.close()
