"""Rolling updates and rollbacks, level-triggered and health-gated.

A live task is out of date when its spec_version is older than the service's;
one that already runs the service's current template (a rollback restoring the
spec it was never moved off) is adopted instead (adopt: its spec_version is
raised), as SwarmKit compares specs, so a rollback restarts only what it must.
A new task is *up* once it is RUNNING and healthy (or RUNNING without a health
check): the controller cannot see an image's health check, so it goes by the
health the agent reports, HEALTH_STARTING from RUNNING until a probe first
succeeds. The state of an update is read from the tasks on every pass, never
kept:

- a slot is *in flight* while its new task is not up, or while its old task,
  shut down by a stop-first update (or its new task, given up on by the
  health gate), is still stopping;
- a slot is *cooling* for `delay` after its new task came up (the status
  timestamp of a RUNNING task: the agent stamps each health change), so that
  each of the `parallelism` update "workers" waits `delay` between two slots,
  as SwarmKit's do;
- at most `parallelism` slots are in flight or cooling, so the update never
  has more than `parallelism` new tasks started but not up; free places go to
  out-of-date slots, lowest slot (node ID) first, those not up first. A slot
  whose new task failed holds no place (SwarmKit's workers move on from a
  failed task too): the restart supervisor restarts it, or (start-first) it
  is retried after its restart delay;
- stop-first shuts the old task down, and the slot's successor is created once
  it has stopped (slots.fill); start-first creates the successor at once, and
  the old task is shut down only when the new one is up (slots.deduplicate).

The health gate (gate_failures): while an update (or rollback) is in progress,
a RUNNING task of the new version reported UNHEALTHY, or not up within
max(monitor, start_period + retries x (interval + timeout)) of starting (the
window in which its agent must decide; docker's defaults for unset fields) is
given up on: marked with update_failure and shut down, and from then on it is
a failure like one that ended on its own (the restart policy applies to it as
docker's agent would have failed it). A service without a health check has
NO_HEALTHCHECK tasks, up when RUNNING, and behaves as before.

Failures: while an update (or rollback) is in progress, every slot with a task
of the new version that ended on its own or was given up on counts once; when
a new failure is seen (a task still live, in the pass that shuts it down) and
the failed slots exceed max_failure_ratio of the service's slots, the failure
action runs: PAUSE stops the update (out-of-date tasks are then left as they
are, the failed slot is still restarted by the restart supervisor), ROLLBACK
restores previous_spec as a new spec version, CONTINUE carries on. The ratio
is SwarmKit's (manager/orchestrator/update/updater.go): failures of the tasks
its workers started (one per slot) over the slots the update has to update,
which for a whole-service update are all of its slots. With the default ratio
0 the first failure applies the action in the pass that sees it, before any
other slot starts: a failing update starts at most `parallelism` new tasks.
"Within `monitor` after it came up" is approximated by "before the update
completes", and an update completes only `monitor` after its last new task
came up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from swarm.api.healthcheck import decision_window
from swarm.api.units import timestamp, to_seconds
from swarm.api.v1 import objects_pb2 as pb

from .slots import Context, Role, Slot, awaiting_stop
from .tasks import end_time, ended_on_its_own, is_live, is_out_of_date, is_up, never_assigned

DEFAULT_MONITOR = 5.0

IN_PROGRESS = (pb.UpdateStatus.UPDATING, pb.UpdateStatus.ROLLBACK_STARTED)
PAUSED = (pb.UpdateStatus.PAUSED, pb.UpdateStatus.ROLLBACK_PAUSED)
ROLLING_BACK = (pb.UpdateStatus.ROLLBACK_STARTED, pb.UpdateStatus.ROLLBACK_PAUSED)

UPDATE_STARTED_MESSAGE = "update in progress"
UPDATE_COMPLETED_MESSAGE = "update completed"
ROLLBACK_COMPLETED_MESSAGE = "rollback completed"
ROLLED_BACK_PREFIX = "update rolled back"
UNHEALTHY_REASON = "reported unhealthy"


@dataclass(frozen=True)
class UpdateSettings:
    parallelism: int  # 0: all at once
    delay: float
    failure_action: pb.UpdateConfig.FailureAction.ValueType
    monitor: float
    max_failure_ratio: float
    order: pb.UpdateConfig.Order.ValueType


def update_settings(service: pb.Service) -> UpdateSettings:
    """The config that drives the current update: spec.rollback while rolling
    back, else spec.update; unset fields take docker's defaults."""
    if service.update_status.state in ROLLING_BACK:
        config, present = service.spec.rollback, service.spec.HasField("rollback")
    else:
        config, present = service.spec.update, service.spec.HasField("update")
    return UpdateSettings(
        parallelism=config.parallelism if present else 1,
        delay=to_seconds(config.delay) if config.HasField("delay") else 0.0,
        failure_action=config.failure_action,
        monitor=to_seconds(config.monitor) if config.HasField("monitor") else DEFAULT_MONITOR,
        max_failure_ratio=config.max_failure_ratio,
        order=config.order,
    )


def gate_window(task: pb.Task, monitor: float) -> float:
    """How long a new task may take from RUNNING to up before the update gives
    up on it."""
    return max(monitor, decision_window(task.spec.container.healthcheck))


def gate_failures(service: pb.Service, tasks: Sequence[pb.Task],
                  now: float) -> dict[str, str]:
    """The live tasks of the new version that the update in progress gives up
    on, by ID, with why: RUNNING but reported unhealthy, or not up within their
    gate_window of starting."""
    if service.update_status.state not in IN_PROGRESS:
        return {}
    monitor = update_settings(service).monitor
    found: dict[str, str] = {}
    for task in tasks:
        # (a task a rebalance moves off its node is an old one: never gated)
        if task.spec_version != service.spec_version or task.rebalance or not is_live(task) \
                or task.status.state != pb.RUNNING or is_up(task):
            continue
        if task.status.health == pb.TaskStatus.UNHEALTHY:
            found[task.id] = UNHEALTHY_REASON
            continue
        window = gate_window(task, monitor)
        if end_time(task) + window <= now:
            found[task.id] = f"not healthy within {window:g}s"
    return found


def _is_failure(task: pb.Task) -> bool:
    return ended_on_its_own(task) or bool(task.update_failure)


def task_name(task: pb.Task) -> str:
    """web.2, or web.NODEID for a global service's task, as docker names tasks."""
    return f"{task.service_name}.{task.slot or task.node_id}"


def failed_service(service: pb.Service, tasks: Sequence[pb.Task], slot_count: int,
                   now: float, gated: dict[str, str] | None = None) -> pb.Service | None:
    """The service paused or rolled back because of its update's failures, or
    None when the update is not in progress, has no failures beyond its
    max_failure_ratio, or its failure action is CONTINUE. `gated`: the tasks
    gate_failures gives up on in this pass (they count as failures)."""
    status = service.update_status.state
    if status not in IN_PROGRESS:
        return None
    gated = gated or {}
    failures = [task for task in tasks if task.spec_version == service.spec_version
                and (_is_failure(task) or task.id in gated)]
    # Only a failure not yet handled (its task still live) triggers the action,
    # so that it runs once, and only for failures seen while the update is in
    # progress; the ones handled before count towards the ratio.
    fresh = [task for task in failures if is_live(task)]
    if not fresh:
        return None
    config = update_settings(service)
    # SwarmKit counts the failures of the tasks its workers started, one per
    # slot (restarts are the restart supervisor's): failed slots, here.
    failed_slots = {(task.slot, task.node_id if not task.slot else "") for task in failures}
    if len(failed_slots) <= config.max_failure_ratio * max(slot_count, 1):
        return None
    if config.failure_action == pb.UpdateConfig.CONTINUE:
        return None
    culprit = max(fresh, key=lambda task: (end_time(task), task.id))
    result = pb.Service()
    result.CopyFrom(service)
    rolling_back = status == pb.UpdateStatus.ROLLBACK_STARTED
    reason = gated.get(culprit.id)
    if config.failure_action == pb.UpdateConfig.ROLLBACK and not rolling_back \
            and service.HasField("previous_spec"):
        result.spec.CopyFrom(service.previous_spec)
        result.previous_spec.CopyFrom(service.spec)
        result.spec_version += 1
        result.update_status.Clear()
        result.update_status.state = pb.UpdateStatus.ROLLBACK_STARTED
        result.update_status.started_at.CopyFrom(timestamp(now))
        result.update_status.message = _failure_message(ROLLED_BACK_PREFIX, culprit, reason)
        return result
    result.update_status.state = pb.UpdateStatus.ROLLBACK_PAUSED if rolling_back \
        else pb.UpdateStatus.PAUSED
    result.update_status.message = _failure_message(
        "rollback paused" if rolling_back else "update paused", culprit, reason)
    return result


def _failure_message(what: str, culprit: pb.Task, reason: str | None) -> str:
    if reason is None:  # docker's words, for a task that ended on its own
        return f"{what} due to failure or early termination of task {culprit.id}"
    return f"{what}: task {task_name(culprit)} {reason} (task {culprit.id})"


@dataclass
class _Survey:
    candidates: list[tuple[Slot, pb.Task]] = field(default_factory=list)  # to start now
    waiting: bool = False  # slots held back by their restart delay
    busy: int = 0  # slots in flight or cooling
    in_flight: int = 0
    cooling_until: list[float] = field(default_factory=list)
    last_start: float | None = None  # when the last new task came up


def _survey(ctx: Context, slots: Sequence[Slot], delay: float) -> _Survey:
    version = ctx.service.spec_version
    survey = _Survey()
    for slot in slots:
        if slot.role is not Role.WANTED:
            continue
        if slot.stopping or awaiting_stop(ctx, slot):
            survey.busy += 1
            survey.in_flight += 1
            continue
        live = ctx.live(slot)
        new = [task for task in live if not is_out_of_date(task, version)]
        up = [task for task in new if is_up(task)]
        if new and not up:
            survey.busy += 1
            survey.in_flight += 1
            continue
        if up:
            start = max(end_time(task) for task in up)
            survey.last_start = start if survey.last_start is None \
                else max(survey.last_start, start)
            if start + delay > ctx.now:
                survey.busy += 1
                survey.cooling_until.append(start + delay)
            continue
        # No live new task: never updated, or (start-first) its new task
        # failed and the old one still runs. As SwarmKit's update workers move
        # on from a task that failed, a failed slot holds no place: it is
        # retried after its restart delay like any out-of-date slot (stop-
        # first, fill() restarts it, and the restarted task is in flight).
        if not live:
            continue
        next_task = ctx.successor(slot)
        if next_task.not_before is None:
            continue  # the restart policy gave up on it
        if next_task.not_before > ctx.now:
            survey.waiting = True
            ctx.wake_at.append(next_task.not_before)
            continue
        survey.candidates.append((slot, live[0]))
    survey.candidates.sort(key=lambda pair: (is_up(pair[1]), pair[0].sort_key))
    return survey


def _runs_template(task: pb.Task, spec: pb.ServiceSpec) -> bool:
    return task.spec == spec.task and task.endpoint.spec == spec.endpoint


def adopt(ctx: Context, slots: Sequence[Slot]) -> None:
    """Live tasks of an older version that already run the current template
    (a rollback restoring the spec they were never moved off, an update back to
    it) are up to date, as in SwarmKit (whose IsTaskDirty compares specs): their
    spec_version is raised, and nothing is restarted."""
    version = ctx.service.spec_version
    for slot in slots:
        if slot.role is Role.UNWANTED:
            continue
        for task in ctx.live(slot):
            if task.spec_version < version and _runs_template(task, ctx.service.spec):
                ctx.work.adopt(task.id, version)


def _replace(ctx: Context, slot: Slot, old: pb.Task,
             order: pb.UpdateConfig.Order.ValueType) -> None:
    next_task = ctx.successor(slot)
    if order == pb.UpdateConfig.START_FIRST and not never_assigned(old):
        ctx.create(slot, next_task)
        return
    ctx.work.shut_down(old.id)
    if never_assigned(old):  # nothing runs it: no need to wait
        ctx.create(slot, next_task)
    else:
        slot.stopping = True


def _gate_wake_ups(ctx: Context, slots: Sequence[Slot], monitor: float) -> None:
    """Plan again when a starting new task's gate window ends."""
    version = ctx.service.spec_version
    for slot in slots:
        for task in ctx.live(slot):
            if task.spec_version == version and task.status.state == pb.RUNNING \
                    and not is_up(task):
                ctx.wake_at.append(end_time(task) + gate_window(task, monitor))


def progress(ctx: Context, slots: Sequence[Slot]) -> None:
    """Move the service's update forward by what this pass allows, and mark it
    complete when nothing is left to do."""
    status = ctx.service.update_status.state
    if status in PAUSED:
        return
    config = update_settings(ctx.service)
    survey = _survey(ctx, slots, config.delay)
    if status not in IN_PROGRESS:
        if not survey.candidates:
            return
        # Out-of-date tasks without an update in progress (the template
        # changed behind the API's back): this is an update.
        service = ctx.edit_service()
        service.update_status.Clear()
        service.update_status.state = pb.UpdateStatus.UPDATING
        service.update_status.started_at.CopyFrom(timestamp(ctx.now))
        service.update_status.message = UPDATE_STARTED_MESSAGE
        status = pb.UpdateStatus.UPDATING
    _gate_wake_ups(ctx, slots, config.monitor)
    limit = config.parallelism or math.inf
    free = limit - survey.busy
    picked = survey.candidates[:max(0, int(min(free, len(survey.candidates))))]
    for slot, old in picked:
        _replace(ctx, slot, old, config.order)
    if len(picked) < len(survey.candidates) and survey.cooling_until \
            and limit - (survey.busy - len(survey.cooling_until)) > 0:
        ctx.wake_at.append(min(survey.cooling_until))
    if picked or survey.candidates or survey.waiting or survey.in_flight:
        return
    if survey.last_start is not None and survey.last_start + config.monitor > ctx.now:
        ctx.wake_at.append(survey.last_start + config.monitor)
        return
    service = ctx.edit_service()
    rolled_back = status == pb.UpdateStatus.ROLLBACK_STARTED
    service.update_status.state = pb.UpdateStatus.ROLLBACK_COMPLETED if rolled_back \
        else pb.UpdateStatus.COMPLETED
    service.update_status.completed_at.CopyFrom(timestamp(ctx.now))
    if not rolled_back:
        service.update_status.message = UPDATE_COMPLETED_MESSAGE
    elif service.update_status.message.startswith(ROLLED_BACK_PREFIX):
        # Why it was rolled back stays readable in `service inspect`.
        service.update_status.message = (
            f"{ROLLBACK_COMPLETED_MESSAGE} ({service.update_status.message})")
    else:
        service.update_status.message = ROLLBACK_COMPLETED_MESSAGE
