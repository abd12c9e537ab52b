"""The orchestrator's planner: from a service, its tasks and the nodes, the
writes that move the service towards its spec. Pure: no I/O, no clock (`now`
is given), inputs never modified.

One pass does, in order:

1. the health gate and update failures (update.gate_failures,
   update.failed_service): new tasks not healthy in time are given up on (shut
   down, marked as failed); too many failures pause the update or roll the
   service back; a rollback is planned in the same pass against the restored
   spec;
2. slots (replicated.replicated_slots / global_.global_slots); live tasks of
   an older version already running the current template are adopted
   (update.adopt: a rollback restarts only what it must);
3. supervision (slots.supervise): live tasks that ended, that are on a lost,
   drained or (replicated) constraint-failing node, or in an UNWANTED slot are
   shut down;
4. one live task per slot (slots.deduplicate);
5. missing tasks (slots.fill, with restart.successor: restart policy and
   delay, stop-first ordering);
6. the rolling update (update.progress), which also moves the tasks a
   rebalance marked (rebalance.follow words its status);
7. history (history.reap).

Jobs (replicated-job, global-job) are planned by jobs.plan_job instead: no
rolling update, completed tasks never replaced, max_concurrent, iterations and
schedules.

The plan does everything the state allows at once, so planning again on its
result gives an empty plan; what must wait for time to pass (restart delay,
update delay, monitor) sets requeue_after.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

from swarm.api.v1 import objects_pb2 as pb

from . import global_, history, jobs, rebalance, replicated, update
from .slots import Context, Role, Slot, deduplicate, fill, supervise
from .tasks import ConstraintCache, Working


@dataclass(frozen=True)
class OrchestratorSettings:
    task_history_limit: int = 5  # tasks kept per slot (per node for global), the live one included


@dataclass
class ServicePlan:
    create: list[pb.Task] = field(default_factory=list)  # new tasks, meta empty
    # New versions of existing tasks: copies of the input objects (meta.version
    # included) with the changed fields.
    update: list[pb.Task] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)  # task IDs
    # The new version of the service (a copy, meta.version included) when its
    # update_status (or, on rollback, its spec) changes.
    service: pb.Service | None = None
    # Plan this service again after this many seconds (restart delay, update
    # delay, monitor period), even if nothing changes in the meantime.
    requeue_after: float | None = None

    def is_empty(self) -> bool:
        """No write to make (requeue_after does not count)."""
        return not (self.create or self.update or self.delete or self.service is not None)


def plan_service(service: pb.Service | None, tasks: Sequence[pb.Task],
                 nodes: Mapping[str, pb.Node], now: float,
                 settings: OrchestratorSettings, service_id: str = "") -> ServicePlan:
    """Plan one service. `service` None means the service was removed: its live
    tasks are shut down and its tasks deleted once stopped."""
    if service is None:
        return _plan_removal(tasks, nodes)
    service_id = service_id or service.id
    constraints = ConstraintCache()
    if service.spec.WhichOneof("mode") in ("replicated_job", "global_job"):
        ctx = Context(service=service, service_id=service_id, nodes=nodes, now=now,
                      work=Working(tasks), constraints=constraints)
        jobs.plan_job(ctx, tasks, settings.task_history_limit)
        return _result(ctx, service)
    slots = _slots(service, tasks, nodes, constraints)
    wanted = sum(slot.role is Role.WANTED for slot in slots)
    # Only tasks the service still wants can fail its update (a slot scaled away
    # is simply shut down).
    wanted_ids = {task_id for slot in slots if slot.role is Role.WANTED
                  for task_id in slot.task_ids}
    gated = {task_id: reason for task_id, reason in update.gate_failures(service, tasks, now).items()
             if task_id in wanted_ids}
    failed = rebalance.after_failure(service, update.failed_service(service, tasks, wanted, now,
                                                                    gated))
    if failed is not None and failed.spec_version != service.spec_version:
        slots = _slots(failed, tasks, nodes, constraints)  # rolled back: new spec
    ctx = Context(service=failed or service, service_id=service_id, nodes=nodes, now=now,
                  work=Working(tasks), constraints=constraints,
                  service_changed=failed is not None)
    for task_id, reason in gated.items():
        ctx.work.fail(task_id, reason)
    update.adopt(ctx, slots)

    is_global = ctx.service.spec.WhichOneof("mode") == "global"
    must_move = (lambda task: False) if is_global else partial(replicated.must_move, ctx)
    for slot in slots:
        supervise(ctx, slot, must_move)
    for slot in slots:
        if slot.role is not Role.UNWANTED:
            deduplicate(ctx, slot)
    for slot in slots:
        if slot.role is Role.WANTED:
            fill(ctx, slot)
    rebalancing = rebalance.in_progress(ctx.service)
    update.progress(ctx, slots)
    rebalance.follow(ctx, rebalancing)
    history.reap(ctx, slots, settings.task_history_limit)
    return _result(ctx, service)


def _slots(service: pb.Service, tasks: Sequence[pb.Task], nodes: Mapping[str, pb.Node],
           constraints: ConstraintCache) -> list[Slot]:
    if service.spec.WhichOneof("mode") == "global":
        return global_.global_slots(service, tasks, nodes, constraints)
    return replicated.replicated_slots(service, tasks)


def _result(ctx: Context, original: pb.Service | None = None) -> ServicePlan:
    # Edits that cancel out (the update's words, then the rebalance's) write nothing.
    changed = ctx.service_changed and ctx.service != original
    wake = [at - ctx.now for at in ctx.wake_at]
    return ServicePlan(
        create=ctx.work.creates(),
        update=ctx.work.updates(),
        delete=sorted(ctx.work.deleted),
        service=ctx.service if changed else None,
        requeue_after=max(min(wake), 0.0) if wake else None,
    )


def _plan_removal(tasks: Sequence[pb.Task], nodes: Mapping[str, pb.Node]) -> ServicePlan:
    ctx = Context(service=pb.Service(), service_id="", nodes=nodes, now=0.0,
                  work=Working(tasks))
    slot = Slot(0, "", Role.UNWANTED, [task.id for task in tasks])
    supervise(ctx, slot, lambda task: False)
    history.reap(ctx, [slot], 0)
    return _result(ctx)
