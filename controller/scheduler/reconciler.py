"""The scheduler's loop on the leader: place PENDING tasks on nodes.

It keeps the set of tasks waiting for a node, and every node's accounting
(NodeInfos), both updated from cache changes as they come. Each pass decides
all waiting tasks at once over that in-memory node state
(Scheduler.schedule), then writes the
assignments (ASSIGNED, node_id) and, for tasks that fit nowhere, the reason as
the task's status message, in chunked, fenced transactions. Unplaced tasks are
tried again when nodes change or a task leaves a node.
"""

from __future__ import annotations

import asyncio
import logging
import time

from swarm.api.telemetry import NO_TELEMETRY, Telemetry, timed
from swarm.api.v1 import objects_pb2 as pb

from ..store import Change, Guard, NodeChange, Op, Store, StoreUnavailable, TaskChange, Update
from ..workset import WorkSet
from .generic import to_proto
from .nodeinfo import NodeInfos
from .scheduler import Scheduler

log = logging.getLogger(__name__)

_BATCH_WINDOW = 0.01
# Tasks decided and written per step of a pass (see _pass).
SCHEDULE_CHUNK = 4000


def _waiting(task: pb.Task | None) -> bool:
    return task is not None and task.status.state == pb.PENDING \
        and task.desired_state <= pb.RUNNING


class SchedulerLoop:
    def __init__(self, store: Store, scheduler: Scheduler | None = None) -> None:
        self._store = store
        self._scheduler = scheduler or Scheduler()
        # parked: tried, fit nowhere; tried again when nodes change or a
        # task leaves a node.
        self._work = WorkSet(_BATCH_WINDOW)
        self._infos = NodeInfos()
        self.passes = 0
        self.pass_seconds = 0.0  # wall time spent in passes (bench.control_plane reports it)
        self.telemetry: Telemetry = NO_TELEMETRY  # metrics (controller/metrics.py)

    def _on_change(self, change: Change) -> None:
        match change:
            case NodeChange(old=old_node, new=new_node):
                self._infos.apply_node(old_node, new_node)
                self._work.retry_parked()
            case TaskChange(object_id=task_id, old=old, new=new):
                self._infos.apply_task(old, new)
                if _waiting(new):
                    self._work.want(task_id)
                else:
                    self._work.drop(task_id)
                    # A task leaving a node frees its resources and ports.
                    if old is not None and old.node_id and old.status.state <= pb.RUNNING and (
                            new is None or new.status.state > pb.RUNNING or not new.node_id):
                        self._work.retry_parked()

    async def run(self, guard: Guard) -> None:
        unsubscribe = self._store.cache.subscribe(self._on_change)
        cache = self._store.cache
        self._infos = NodeInfos(cache.nodes.values(), cache.tasks.values())
        self._work.reset(t.id for t in self._store.cache.tasks.values() if _waiting(t))
        try:
            while True:
                batch = await self._work.next_batch()
                started = time.perf_counter()
                with timed(self.telemetry, "swarm_reconcile_seconds", "scheduler"):
                    await self._pass(batch, guard)
                self.pass_seconds += time.perf_counter() - started
        finally:
            unsubscribe()

    async def _pass(self, task_ids: set[str], guard: Guard) -> None:
        # Decided and written a chunk at a time: scheduling 100,000 tasks at
        # once held the event loop for seconds (no heartbeat, no session served
        # meanwhile), and the first nodes waited for the last decision before
        # hearing of any. NodeInfos carry the placements from chunk to chunk
        # (and take the cache's changes in between), so the spread is the same.
        ordered = sorted(task_ids)
        for start in range(0, len(ordered), SCHEDULE_CHUNK):
            await self._pass_chunk(ordered[start:start + SCHEDULE_CHUNK], guard)

    async def _pass_chunk(self, task_ids: list[str], guard: Guard) -> None:
        cache = self._store.cache
        tasks = [cache.tasks[i] for i in task_ids if _waiting(cache.tasks.get(i))]
        if not tasks:
            return
        self.passes += 1
        decisions = self._scheduler.schedule(tasks, self._infos.infos)
        by_id = {task.id: task for task in tasks}
        ops: list[Op] = []
        for decision in decisions:
            current = by_id[decision.task_id]
            if decision.node_id:
                task = pb.Task()
                task.CopyFrom(current)
                task.node_id = decision.node_id
                task.ClearField("assigned_generic_resources")
                task.assigned_generic_resources.extend(to_proto(decision.assigned))
                task.status.state = pb.ASSIGNED
                task.status.message = "scheduler assigned task to node"
                task.status.timestamp.GetCurrentTime()
                ops.append(Update(task))
            else:
                self._work.park([decision.task_id])
                # A global task that no longer fits its node was released for
                # the rest of the pass; it still holds the node while it is
                # live, as a rebuilt NodeInfo would count it.
                self._infos.apply_task(None, current)
                if current.status.message != decision.reason:
                    task = pb.Task()
                    task.CopyFrom(current)
                    task.status.message = decision.reason
                    ops.append(Update(task))
        if not ops:
            return
        rejected: list[Op] = []
        try:
            failed = await self._store.commit_chunked(ops, guard=guard, rejected=rejected)
        except StoreUnavailable as error:
            log.warning("scheduler cannot write: %s", error)
            failed = ops
            await asyncio.sleep(0.5)
        for op in (*failed, *rejected):  # placements not written: taken back
            if isinstance(op, Update) and isinstance(op.obj, pb.Task) and op.obj.node_id:
                self._infos.unplace(op.obj, cache.tasks.get(op.obj.id))
        if rejected:  # etcd refuses these tasks as such: wait until they change
            log.error("scheduler: etcd refused the writes of %d tasks", len(rejected))
            self._work.park(op.obj.id for op in rejected if isinstance(op, Update))
        if failed:
            self._work.retry(op.obj.id for op in failed if isinstance(op, Update))
