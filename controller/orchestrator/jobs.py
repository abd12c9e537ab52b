"""Jobs: services whose tasks run to completion (Docker Swarm 20.10's
replicated-job and global-job), and scheduled jobs.

A job runs in iterations (Swarm's JobIteration, Service.job_status.iteration):
the control API starts one when the job is created and when it is updated; a
scheduled job's runs are started here. Each task carries the iteration it was
made for (Task.job_iteration); only the current iteration's tasks count.

Within the current iteration, slots are as for services (replicated: 1..total
completions; global: one per eligible node, nodes that join later included),
but a slot whose task completed (exit 0) is *done*: it is never given another
task, whatever the restart policy says. A slot whose task failed follows the
restart policy (restart.successor: condition, delay, attempts, window); when
the policy gives up, the iteration has FAILED and no new task is started (the
ones running finish). A replicated job starts a slot's task only while fewer
than max_concurrent tasks of the service occupy a node (tasks of an earlier
iteration still stopping included), lowest slot first, so never more than
max_concurrent run at once. Tasks of earlier iterations are stopped; the tasks
of the last `task_history_limit` iterations are kept for `service ps`.

Scheduled jobs (ServiceSpec.schedule): the state that decides the next run is
in etcd, in the service's job_status: `last_scheduled`, the schedule time of
the last run started or skipped. On every pass the planner computes the latest
fire time at or before now (swarm/api/schedule.py, a function of the
expression and the clock only); if it is after last_scheduled, a run is due:

- the current iteration is still going (a task occupying a node, or a slot
  still to complete and able to): the run is skipped; skipped and
  last_skipped record it;
- otherwise a new iteration starts.

Either way last_scheduled becomes that fire time, written with the service's
version as the compare (an optimistic-concurrency update, fenced by the
leader's lease), and the pass creates no task: the tasks of a new iteration
are made by the next pass, from the committed iteration. So a leader that
dies before the write leaves the run due, and its successor starts it; one
that dies after leaves it recorded, and its successor does not start it
again; a run that the write raced (a second leader, an API update) loses the
compare and is planned again from what etcd holds. Fire times missed while no
leader ran collapse into the latest one. The pass asks to be planned again at
the next fire time (requeue_after).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

from swarm.api.schedule import BadSchedule, Schedule, parse_schedule
from swarm.api.units import timestamp, to_seconds
from swarm.api.v1 import objects_pb2 as pb

from . import global_, history, replicated
from .restart import Successor
from .slots import Context, Role, Slot, deduplicate, supervise
from .tasks import ConstraintCache, Working, is_live, is_removable, is_stopped, is_terminal

RUNNING, COMPLETE, FAILED, WAITING = (pb.JobStatus.RUNNING, pb.JobStatus.COMPLETE,
                                      pb.JobStatus.FAILED, pb.JobStatus.WAITING)


@dataclass(frozen=True)
class Progress:
    """The current iteration, as `service ls` shows it and the CLI waits for it."""

    desired: int  # completions wanted (total_completions, or eligible nodes)
    completed: int
    running: int  # tasks of the service occupying a node
    failed: str  # why the iteration failed ("" when it has not)

    @property
    def finished(self) -> bool:
        return bool(self.failed) or self.completed >= self.desired


def is_done(task: pb.Task) -> bool:
    """The task completed: it exited 0 (the agent reports COMPLETE for that only)."""
    return task.status.state == pb.COMPLETE


def occupies(task: pb.Task, nodes: Mapping[str, pb.Node]) -> bool:
    """Whether the task runs, or may soon: wanted and not ended, or asked to stop
    and not stopped yet. What max_concurrent counts."""
    if is_terminal(task):
        return False
    return is_live(task) or not is_stopped(task, nodes)


def job_slots(service: pb.Service, tasks: Sequence[pb.Task], nodes: Mapping[str, pb.Node],
              constraints: ConstraintCache) -> list[Slot]:
    """The current iteration's slots (tasks given are that iteration's)."""
    if service.spec.WhichOneof("mode") == "global_job":
        return global_.global_slots(service, tasks, nodes, constraints)
    return replicated.numbered_slots(service.spec.replicated_job.total_completions, tasks)


def _slot_name(slot: Slot) -> str:
    return f"node {slot.node_id}" if slot.node_id else f"slot {slot.number}"


def _failure(task: pb.Task | None) -> str:
    if task is None:
        return "failed"
    return task.status.err.removeprefix("task: ") or task.status.message or "failed"


def _schedule(service: pb.Service) -> Schedule | None:
    try:
        return parse_schedule(service.spec.schedule) if service.spec.schedule else None
    except BadSchedule:
        return None  # refused by the API; only a damaged store has one: never fires


def plan_job(ctx: Context, tasks: Sequence[pb.Task], history_limit: int) -> None:
    """Plan one job into ctx (its work, its service edits, its wake-ups)."""
    service = ctx.service
    iteration = service.job_status.iteration
    current = [task for task in tasks if task.job_iteration == iteration]
    _retire(ctx, [task for task in tasks if task.job_iteration != iteration], iteration,
            history_limit)
    slots = job_slots(service, current, ctx.nodes, ctx.constraints) if iteration else []
    is_global = service.spec.WhichOneof("mode") == "global_job"
    must_move = (lambda task: False) if is_global else partial(replicated.must_move, ctx)
    for slot in slots:
        for task in ctx.live(slot):
            if is_done(task):
                ctx.work.complete(task.id)
        supervise(ctx, slot, must_move)
        if slot.role is not Role.UNWANTED:
            deduplicate(ctx, slot)
    progress = _fill(ctx, slots, is_global)
    schedule = _schedule(service)
    if schedule is not None:
        started = _tick(ctx, schedule, progress if iteration else None)
        if started:
            return  # the new iteration's tasks come once it is committed
    _record(ctx, progress if iteration else None)
    history.reap(ctx, slots, history_limit)


def _fill(ctx: Context, slots: list[Slot], is_global: bool) -> Progress:
    """Start the tasks the iteration needs, within max_concurrent; its progress."""
    wanted = [slot for slot in slots if slot.role is Role.WANTED]
    completed = 0
    failed = ""
    pending: list[tuple[Slot, float, Successor]] = []
    for slot in wanted:
        if any(is_done(task) for task in ctx.tasks(slot)):
            completed += 1
            continue
        if ctx.live(slot):
            continue
        next_task = ctx.successor(slot)
        if next_task.not_before is None:
            failed = failed or f"task {_slot_name(slot)} failed: {_failure(ctx.latest(slot))} " \
                               "(the restart policy gives up)"
            continue
        pending.append((slot, next_task.not_before, next_task))
    running = sum(occupies(task, ctx.nodes) for task in ctx.work.tasks.values()
                  if task.id not in ctx.work.deleted)
    budget = len(pending) if is_global else \
        max(0, ctx.service.spec.replicated_job.max_concurrent - running)
    if not failed:
        for slot, not_before, next_task in pending:
            if not_before > ctx.now:
                ctx.wake_at.append(not_before)
                continue
            if budget <= 0:
                break  # planned again when a running task ends
            ctx.create(slot, next_task)
            budget -= 1
            running += 1
    return Progress(desired=len(wanted), completed=completed, running=running, failed=failed)


def _retire(ctx: Context, older: list[pb.Task], iteration: int, history_limit: int) -> None:
    """Stop the tasks of earlier iterations; keep those of the last
    `history_limit` iterations (the current one included) for `service ps`."""
    keep_from = iteration - max(history_limit, 1) + 1
    for task in older:
        if is_live(task):
            if is_done(task):
                ctx.work.complete(task.id)
            else:
                ctx.work.shut_down(task.id)
        if task.job_iteration < keep_from and is_removable(ctx.work.get(task.id), ctx.nodes):
            ctx.work.delete(task.id)


def _tick(ctx: Context, schedule: Schedule, progress: Progress | None) -> bool:
    """A scheduled job: start or skip the run that is due; whether one started."""
    status = ctx.service.job_status
    last = to_seconds(status.last_scheduled) if status.HasField("last_scheduled") else 0.0
    fire = schedule.latest_fire(ctx.now)
    ctx.wake_at.append(schedule.next_fire(ctx.now))
    if fire <= last:
        return False
    edited = ctx.edit_service().job_status
    edited.last_scheduled.CopyFrom(timestamp(fire))
    if progress is not None and not progress.finished:
        edited.skipped += 1
        edited.last_skipped.CopyFrom(timestamp(fire))
        return False
    edited.iteration += 1
    edited.state = RUNNING
    edited.message = ""
    edited.last_execution.CopyFrom(timestamp(ctx.now))
    edited.ClearField("finished_at")
    return True


def job_state(progress: Progress | None) -> tuple[pb.JobStatus.State.ValueType, str]:
    """(JobStatus.State, message) of an iteration's progress (None: not started)."""
    if progress is None:
        return WAITING, "waiting for the schedule"
    if progress.failed:
        return FAILED, progress.failed
    if progress.finished:
        return COMPLETE, f"{progress.completed}/{progress.desired} completed"
    return RUNNING, ""


def _record(ctx: Context, progress: Progress | None) -> None:
    """Write the iteration's outcome into job_status when it changes."""
    state, message = job_state(progress)
    status = ctx.service.job_status
    if status.state == state and status.message == message:
        return
    edited = ctx.edit_service().job_status
    edited.state = state
    edited.message = message
    if state in (COMPLETE, FAILED):
        edited.finished_at.CopyFrom(timestamp(ctx.now))
    else:
        edited.ClearField("finished_at")


def job_progress(service: pb.Service, tasks: Sequence[pb.Task],
                 nodes: Mapping[str, pb.Node]) -> Progress:
    """The current iteration's progress without planning (for read-only views)."""
    ctx = Context(service=service, service_id=service.id, nodes=nodes, now=0.0,
                  work=Working(tasks))
    iteration = service.job_status.iteration
    current = [task for task in tasks if task.job_iteration == iteration]
    slots = job_slots(service, current, nodes, ctx.constraints)
    wanted = [slot for slot in slots if slot.role is Role.WANTED]
    completed = sum(any(is_done(task) for task in ctx.tasks(slot)) for slot in wanted)
    running = sum(occupies(task, nodes) for task in tasks)
    return Progress(len(wanted), completed, running, "")
