"""Slots, and the rules every slot follows whatever the service mode.

A slot is where one task of a service should run: replicated services have
slots 1..replicas, global ones a slot per node. A slot is

- WANTED: it must have one live task (created when missing);
- KEPT: its live tasks stay but none is created or updated (a global
  service's task on a paused or DOWN node);
- UNWANTED: its live tasks are shut down, and its tasks deleted once stopped
  (slots above the replica count; a global service's drained, removed or
  ineligible node).

Per pass, every slot is supervised (a live task that has ended is shut down,
and so is every live task of an UNWANTED slot), de-duplicated (one live task,
the up one first, except the pair of a start-first update until the new task
is up), and a WANTED slot without a live task is given its successor
(restart.successor) unless one of its out-of-date tasks is still stopping (the
second half of a stop-first update: old and new never run side by side), or
its latest task, given up on by the update's health gate, is (its restart
counts from its stop, as from a failure).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from swarm.api.units import timestamp
from swarm.api.v1 import objects_pb2 as pb

from ..allocator.ports import publishes_ingress
from ..allocator.tasks import ALLOCATING_MESSAGE, PENDING_MESSAGE
from ..ids import derived_id
from .restart import Successor, successor
from .tasks import (
    ConstraintCache,
    Working,
    age_key,
    is_live,
    is_out_of_date,
    is_stopped,
    is_terminal,
    is_up,
)


class Role(enum.Enum):
    WANTED = "wanted"
    KEPT = "kept"
    UNWANTED = "unwanted"


@dataclass
class Slot:
    number: int  # replicated: 1..; global: 0
    node_id: str  # global: the node; replicated: ""
    role: Role
    task_ids: list[str] = field(default_factory=list)
    # A stop-first update shut its task down and waits for it to stop.
    stopping: bool = False

    @property
    def sort_key(self) -> tuple[int, str]:
        return self.number, self.node_id


@dataclass
class Context:
    """One pass over one service."""

    service: pb.Service  # as planned (a copy once changed)
    service_id: str
    nodes: Mapping[str, pb.Node]
    now: float
    work: Working
    constraints: ConstraintCache = field(default_factory=ConstraintCache)
    service_changed: bool = False
    wake_at: list[float] = field(default_factory=list)  # absolute times to plan again

    def edit_service(self) -> pb.Service:
        if not self.service_changed:
            copy = pb.Service()
            copy.CopyFrom(self.service)
            self.service = copy
            self.service_changed = True
        return self.service

    def tasks(self, slot: Slot) -> list[pb.Task]:
        return [self.work.get(task_id) for task_id in slot.task_ids
                if task_id not in self.work.deleted]

    def live(self, slot: Slot) -> list[pb.Task]:
        return [task for task in self.tasks(slot) if is_live(task)]

    def latest(self, slot: Slot) -> pb.Task | None:
        return max(self.tasks(slot), key=age_key, default=None)

    def successor(self, slot: Slot) -> Successor:
        return successor(self.latest(slot), self.service.spec_version)

    def create(self, slot: Slot, next_task: Successor) -> pb.Task:
        task = new_task(self.service, self.service_id, slot, next_task, self.now)
        self.work.create(task)
        slot.task_ids.append(task.id)
        return task


def new_task(service: pb.Service, service_id: str, slot: Slot, next_task: Successor,
             now: float) -> pb.Task:
    # Deterministic, so that two controllers racing to create the same task
    # collide in etcd; the service's version is part of it because a slot's
    # attempt count starts again once all its tasks are gone (scale down, then
    # up): without it a new task could take a deleted one's ID and inherit its
    # late status reports.
    # A job's tasks are per iteration instead: the service's version moves with
    # every status the orchestrator records, but a run (its iteration) is fixed,
    # so a leader that takes over re-derives the very IDs its predecessor wrote.
    is_job = service.spec.WhichOneof("mode") in ("replicated_job", "global_job")
    epoch = f"job{service.job_status.iteration}" if is_job else str(service.meta.version)
    if slot.node_id:
        task_id = derived_id(service_id, epoch, "node", slot.node_id, str(next_task.attempt))
    else:
        task_id = derived_id(service_id, epoch, "slot", str(slot.number), str(next_task.attempt))
    task = pb.Task(id=task_id, service_id=service_id, service_name=service.spec.name,
                   slot=slot.number, node_id=slot.node_id, spec_version=service.spec_version,
                   desired_state=pb.RUNNING, attempt=next_task.attempt)
    if is_job:
        task.job_iteration = service.job_status.iteration
    task.spec.CopyFrom(service.spec.task)
    if service.HasField("endpoint"):
        task.endpoint.CopyFrom(service.endpoint)
    elif service.spec.HasField("endpoint"):
        task.endpoint.spec.CopyFrom(service.spec.endpoint)
    # A task on overlay networks starts NEW: the allocator gives it its
    # addresses and only then makes it PENDING, the state the scheduler takes.
    # Without networks (the ingress network counts: ports published in
    # ingress mode) there is nothing to allocate, so it skips that write.
    if task.spec.networks or publishes_ingress(service.spec):
        task.status.state = pb.NEW
        task.status.message = ALLOCATING_MESSAGE
    else:
        task.status.state = pb.PENDING
        task.status.message = PENDING_MESSAGE
    task.status.timestamp.CopyFrom(timestamp(now))
    task.restart_history.extend(next_task.history)
    return task


def supervise(ctx: Context, slot: Slot, must_move: Callable[[pb.Task], bool]) -> None:
    """Shut down the live tasks that have ended, those `must_move` names, and all
    live tasks of an UNWANTED slot."""
    for task in ctx.live(slot):
        if slot.role is Role.UNWANTED or is_terminal(task) or must_move(task):
            ctx.work.shut_down(task.id)


def _best_first(task: pb.Task) -> tuple[bool, bool, int, tuple[int, int, str]]:
    return is_up(task), task.status.state == pb.RUNNING, task.spec_version, age_key(task)


def deduplicate(ctx: Context, slot: Slot) -> None:
    """Leave one live task: the up (running and healthy), newest one. A
    start-first update's pair (an out-of-date task and its replacement, not up
    yet) is left alone; once the replacement is up, it is the best and the old
    task is shut down. A rollback keeps the old task that is up over a newer
    one still starting."""
    live = ctx.live(slot)
    if len(live) < 2:
        return
    version = ctx.service.spec_version
    if len(live) == 2:
        old, new = sorted(live, key=lambda task: not is_out_of_date(task, version))
        if is_out_of_date(old, version) and not is_out_of_date(new, version) and not is_up(new):
            return
    live.sort(key=_best_first, reverse=True)
    for task in live[1:]:
        ctx.work.shut_down(task.id)


def awaiting_stop(ctx: Context, slot: Slot) -> bool:
    """Whether the slot's latest task was given up on by the health gate and
    has not stopped yet: its restart (policy, delay) counts from its stop."""
    latest = ctx.latest(slot)
    return latest is not None and bool(latest.update_failure) \
        and not is_stopped(latest, ctx.nodes)


def fill(ctx: Context, slot: Slot) -> None:
    """Give a WANTED slot without a live task its next task, now or when its
    restart delay has passed (then ask to be planned again)."""
    if ctx.live(slot):
        return
    if awaiting_stop(ctx, slot):
        slot.stopping = True  # its restart waits for the task given up on to stop
        return
    version = ctx.service.spec_version
    if any(is_out_of_date(task, version) and not is_stopped(task, ctx.nodes)
           for task in ctx.tasks(slot)):
        slot.stopping = True  # stop-first: the replacement waits for the old task
        return
    next_task = ctx.successor(slot)
    if next_task.not_before is None:
        return
    if next_task.not_before > ctx.now:
        ctx.wake_at.append(next_task.not_before)
        return
    ctx.create(slot, next_task)
