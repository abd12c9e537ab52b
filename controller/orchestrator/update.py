"""Rolling updates and rollbacks, level-triggered.

A live task is out of date when its spec_version is older than the service's.
The state of an update is read from the tasks on every pass, never kept:

- a slot is *in flight* while its new task has not reached RUNNING, or while
  its old task, shut down by a stop-first update, is still stopping;
- a slot is *cooling* for `delay` after its new task started RUNNING (the
  RUNNING status timestamp), so that each of the `parallelism` update "workers"
  waits `delay` between two slots, as SwarmKit's do;
- at most `parallelism` slots are in flight or cooling; free places go to out-
  of-date slots, lowest slot (node ID) first, those not running first;
- stop-first shuts the old task down, and the slot's successor is created once
  it has stopped (slots.fill); start-first creates the successor at once, and
  the old task is shut down when the new one runs (slots.deduplicate).

Failures: while an update (or rollback) is in progress, every task of the new
version that ended on its own counts; when a new one is seen (a task that
ended while still live, in the pass that shuts it down) and their number
exceeds max_failure_ratio of the service's slots, the failure action runs: PAUSE
stops the update (out-of-date tasks are then left as they are, the failed
slot is still restarted by the restart supervisor), ROLLBACK restores
previous_spec as a new spec version, CONTINUE carries on. "Within `monitor`
after it started" is approximated by "before the update completes", and an
update completes only `monitor` after its last new task started.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from swarm.api.units import timestamp, to_seconds
from swarm.api.v1 import objects_pb2 as pb

from .slots import Context, Role, Slot
from .tasks import end_time, ended_on_its_own, is_live, is_out_of_date, never_assigned

DEFAULT_MONITOR = 5.0

IN_PROGRESS = (pb.UpdateStatus.UPDATING, pb.UpdateStatus.ROLLBACK_STARTED)
PAUSED = (pb.UpdateStatus.PAUSED, pb.UpdateStatus.ROLLBACK_PAUSED)
ROLLING_BACK = (pb.UpdateStatus.ROLLBACK_STARTED, pb.UpdateStatus.ROLLBACK_PAUSED)

UPDATE_STARTED_MESSAGE = "update in progress"
UPDATE_COMPLETED_MESSAGE = "update completed"
ROLLBACK_COMPLETED_MESSAGE = "rollback completed"


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


def failed_service(service: pb.Service, tasks: Sequence[pb.Task], slot_count: int,
                   now: float) -> pb.Service | None:
    """The service paused or rolled back because of its update's failures, or
    None when the update is not in progress, has no failures beyond its
    max_failure_ratio, or its failure action is CONTINUE."""
    status = service.update_status.state
    if status not in IN_PROGRESS:
        return None
    failures = [task for task in tasks
                if task.spec_version == service.spec_version and ended_on_its_own(task)]
    # Only a failure not yet handled (its task still live) triggers the action,
    # so that it runs once, and only for failures seen while the update is in
    # progress; the ones handled before count towards the ratio.
    if not any(is_live(task) for task in failures):
        return None
    config = update_settings(service)
    if len(failures) <= config.max_failure_ratio * max(slot_count, 1):
        return None
    if config.failure_action == pb.UpdateConfig.CONTINUE:
        return None
    culprit = max((task for task in failures if is_live(task)),
                  key=lambda task: (end_time(task), task.id)).id
    result = pb.Service()
    result.CopyFrom(service)
    rolling_back = status == pb.UpdateStatus.ROLLBACK_STARTED
    if config.failure_action == pb.UpdateConfig.ROLLBACK and not rolling_back \
            and service.HasField("previous_spec"):
        result.spec.CopyFrom(service.previous_spec)
        result.previous_spec.CopyFrom(service.spec)
        result.spec_version += 1
        result.update_status.Clear()
        result.update_status.state = pb.UpdateStatus.ROLLBACK_STARTED
        result.update_status.started_at.CopyFrom(timestamp(now))
        result.update_status.message = (
            f"update rolled back due to failure or early termination of task {culprit}")
        return result
    result.update_status.state = pb.UpdateStatus.ROLLBACK_PAUSED if rolling_back \
        else pb.UpdateStatus.PAUSED
    result.update_status.message = (
        f"{'rollback' if rolling_back else 'update'} paused due to failure or early "
        f"termination of task {culprit}")
    return result


@dataclass
class _Survey:
    candidates: list[tuple[Slot, pb.Task]]  # out-of-date slots free to update now
    waiting: bool  # out-of-date slots held back by their restart delay
    busy: int  # slots in flight or cooling
    in_flight: int
    cooling_until: list[float]
    last_start: float | None


def _survey(ctx: Context, slots: Sequence[Slot], delay: float) -> _Survey:
    version = ctx.service.spec_version
    survey = _Survey([], False, 0, 0, [], None)
    for slot in slots:
        if slot.role is not Role.WANTED:
            continue
        if slot.stopping:
            survey.busy += 1
            survey.in_flight += 1
            continue
        live = ctx.live(slot)
        new = [task for task in live if not is_out_of_date(task, version)]
        if any(task.status.state < pb.RUNNING for task in new):
            survey.busy += 1
            survey.in_flight += 1
            continue
        started = [end_time(task) for task in new if task.status.state == pb.RUNNING]
        if started:
            start = max(started)
            survey.last_start = start if survey.last_start is None \
                else max(survey.last_start, start)
            if start + delay > ctx.now:
                survey.busy += 1
                survey.cooling_until.append(start + delay)
        if live and not new:
            # A slot whose start-first replacements keep failing waits for its
            # restart delay, and gives up with its restart policy.
            next_task = ctx.successor(slot)
            if next_task.not_before is None:
                continue
            if next_task.not_before > ctx.now:
                survey.waiting = True
                ctx.wake_at.append(next_task.not_before)
                continue
            survey.candidates.append((slot, live[0]))
    survey.candidates.sort(key=lambda pair: (pair[1].status.state == pb.RUNNING,
                                             pair[0].sort_key))
    return survey


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
    service.update_status.message = ROLLBACK_COMPLETED_MESSAGE if rolled_back \
        else UPDATE_COMPLETED_MESSAGE
