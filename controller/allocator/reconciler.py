"""The allocator's loop on the leader: give NEW tasks their addresses.

Level-triggered like the scheduler: it keeps the set of NEW tasks to look at;
each pass plans them (tasks.plan_tasks, pure) in batches that fit one
transaction (by operations and bytes), and writes each batch atomically: the tasks (now PENDING, with
their attachments), the create-only address keys, and the networks whose
cursor moved (a compare-and-swap that serialises allocators on a network).
A conflicting batch is re-planned from the refreshed cache; a batch etcd
refuses as such is written task by task, and only a task refused alone is
left (parked until it changes). Tasks that must
wait (full subnet, missing VIPs) keep the reason as their status message and
are retried when addresses are released or networks and services change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from swarm.api.v1 import objects_pb2 as pb

from ..store import (
    Change,
    Conflict,
    Guard,
    NetworkChange,
    Op,
    ServiceChange,
    Store,
    StoreRejected,
    StoreUnavailable,
    TaskChange,
    Update,
)
from ..store.etcd import MAX_TXN_BYTES, MAX_TXN_OPS
from ..workset import WorkSet
from .claims import claim_address, task_owner
from .index import AddressIndex
from .tasks import TaskPlan, needs_allocation, plan_tasks

log = logging.getLogger(__name__)

_BATCH_WINDOW = 0.005


def _cost(task: pb.Task) -> int:
    """Operations a task adds to a transaction besides its networks' updates:
    its own update and a claim per network (and perhaps one on the ingress
    network)."""
    return 2 + len(task.spec.networks)


def batches(tasks: Sequence[pb.Task], budget: int,
            byte_budget: int = MAX_TXN_BYTES) -> list[list[pb.Task]]:
    """Consecutive runs of tasks whose worst-case operations fit the budget,
    and whose records fit byte_budget (each task is rewritten whole: with
    large specs, bytes run out before operations do). A network's update
    (its cursor) is one operation per transaction, however many of its
    addresses it gives out, so it is counted once per run (and one more for
    the ingress network): 10,000 tasks on one network go about 40 at a time,
    not 25."""
    chunks: list[list[pb.Task]] = []
    current: list[pb.Task] = []
    networks: set[str] = set()
    ops = size = 0
    for task in tasks:
        targets = {a.target for a in task.spec.networks} - networks
        cost, task_bytes = _cost(task) + len(targets), task.ByteSize()
        if current and (ops + cost + 1 > budget or size + task_bytes > byte_budget):
            chunks.append(current)
            current, ops, size, networks = [], 0, 0, set()
            targets = {a.target for a in task.spec.networks}
            cost = _cost(task) + len(targets)
        current.append(task)
        networks |= targets
        ops += cost
        size += task_bytes
    if current:
        chunks.append(current)
    return chunks


class Allocator:
    def __init__(self, store: Store, addresses: AddressIndex | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._addresses = addresses or AddressIndex(store.cache)
        self._clock = clock
        # parked: looked at, could not be allocated (full subnet, missing
        # VIPs); looked at again when addresses are released or networks and
        # services change.
        self._work = WorkSet(_BATCH_WINDOW)
        self.passes = 0

    def _on_change(self, change: Change) -> None:
        match change:
            case TaskChange(object_id=task_id, old=old, new=new):
                if needs_allocation(new):
                    self._work.want(task_id)
                else:
                    self._work.drop(task_id)
                if new is None and old is not None and old.networks:
                    self._work.retry_parked()  # its addresses were released
            case ServiceChange() | NetworkChange():
                self._work.retry_parked()

    async def run(self, guard: Guard) -> None:
        unsubscribe = self._store.cache.subscribe(self._on_change)
        self._work.reset(t.id for t in self._store.cache.tasks.values() if needs_allocation(t))
        try:
            while True:
                await self._pass(await self._work.next_batch(), guard)
        finally:
            unsubscribe()

    async def _pass(self, task_ids: set[str], guard: Guard | None) -> None:
        cache = self._store.cache
        tasks = sorted((cache.tasks[i] for i in task_ids if needs_allocation(cache.tasks.get(i))),
                       key=lambda t: (t.service_id, t.slot, t.node_id, t.id))
        if not tasks:
            return
        self.passes += 1
        budget = MAX_TXN_OPS - 1  # the guard's compare
        # Half the store's byte budget: the networks and address claims come on top.
        byte_budget = self._store.etcd.settings.max_txn_bytes // 2
        for batch in batches(tasks, budget, byte_budget):
            if not await self._allocate(batch, guard):
                # etcd is unavailable: all of this pass again later (the tasks
                # written already no longer need allocation and drop out).
                self._work.retry(t.id for t in tasks)
                return

    async def _allocate(self, batch: list[pb.Task], guard: Guard | None) -> bool:
        """Plan and write one batch; False when etcd is unavailable (end the pass)."""
        cache = self._store.cache
        # Re-read per batch: the previous batch's writes are in the cache.
        current = [cache.tasks[t.id] for t in batch if needs_allocation(cache.tasks.get(t.id))]
        plan = plan_tasks(current, cache.networks, cache.services, self._addresses,
                          self._clock())
        ops = self._ops(plan, current)
        # Before the commit: writing a waiting task's reason must not queue it again.
        self._work.park(plan.waiting)
        if plan.waiting:
            log.info("allocator: %d tasks wait: %s", len(plan.waiting),
                     next(iter(plan.waiting.values())))
        if not ops:
            return True
        try:
            await self._store.commit(ops, guard=guard)
        except Conflict:
            log.info("allocator: a batch of %d tasks conflicted; re-planning", len(current))
            self._work.retry(t.id for t in current)
        except StoreRejected as error:
            if len(current) > 1:
                # etcd refuses the batch as such: find the task it refuses, one
                # by one, so that the others are written.
                for task in current:
                    if not await self._allocate([task], guard):
                        return False
                return True
            # This task alone is refused: leave it until it changes.
            log.error("allocator: etcd refused the allocation of task %s: %s",
                      current[0].id if current else "?", error)
            self._work.park(t.id for t in current)
        except StoreUnavailable as error:
            log.warning("allocator cannot write: %s", error)  # the caller retries the pass
            await asyncio.sleep(0.5)
            return False
        return True

    def _ops(self, plan: TaskPlan, tasks: Sequence[pb.Task]) -> list[Op]:
        keys = self._store.keys
        ops: list[Op] = [Update(network) for network in plan.networks()]
        for promotion in plan.promoted:
            ops.append(Update(promotion.task))
            ops.extend(claim_address(keys, network_id, address, task_owner(promotion.task.id))
                       for network_id, address in promotion.claimed)
        by_id = {task.id: task for task in tasks}
        for task_id, reason in plan.waiting.items():
            current = by_id[task_id]
            if current.status.message != reason:
                task = pb.Task()
                task.CopyFrom(current)
                task.status.message = reason
                ops.append(Update(task))
        return ops
