"""What the dispatcher writes to etcd: task status reports and node state.

Status reports are coalesced per task (latest wins) and written in batched
transactions (fenced by the leadership key while this controller leads; a
follower's writes are compare-and-swap on each task's version alone, which
is all a report needs: it never decides, and a report older than what is
stored is dropped); a report older than what is stored, or for a task that
moved or was deleted, is dropped. While etcd is unavailable or full the
reports the agents were told were taken are kept and written once it takes
writes again. Node writes (READY when a session opens, DOWN when the node
falls silent, its conditions when they change) are compare-and-swap against
the cached version, one read-modify-write (Store.read_modify_write) retried
from the refreshed cache on a conflict.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from swarm.api.loops import paced_pause
from swarm.api.v1 import objects_pb2 as pb

from ..store import Guard, Op, Planned, Store, StoreUnavailable, Update

log = logging.getLogger(__name__)

_CAS_ATTEMPTS = 10
_FIRST_PAUSE = 0.002  # gathers one status report call's burst


class StatusWriter:
    def __init__(self, store: Store, guard: Callable[[], Guard | None],
                 flush_interval: float) -> None:
        self._store = store
        self._guard = guard
        self._flush_interval = flush_interval
        self.pending: dict[str, tuple[str, pb.TaskStatus]] = {}  # task -> (node, status)
        self._ready = asyncio.Event()

    def queue(self, node_id: str, task_id: str, status: pb.TaskStatus) -> None:
        self.pending[task_id] = (node_id, status)
        self._ready.set()

    async def run(self) -> None:
        outage = 0.0
        written_at = 0.0
        while True:
            await self._ready.wait()
            self._ready.clear()
            # At most one write per flush interval, but the first after a
            # quiet spell goes at once: a task's RUNNING is what other nodes
            # wait for to find it (discovery latency).
            await asyncio.sleep(paced_pause(written_at, self._flush_interval, _FIRST_PAUSE,
                                            time.monotonic()))
            written_at = time.monotonic()
            pending, self.pending = self.pending, {}
            ops: list[Update] = []
            tasks = self._store.cache.tasks
            for task_id, (node_id, status) in pending.items():
                current = tasks.get(task_id)
                # Deleted, moved, or a report older than what is stored: drop it.
                if current is None or current.node_id != node_id \
                        or status.state < current.status.state:
                    continue
                task = pb.Task()
                task.CopyFrom(current)
                task.status.CopyFrom(status)
                ops.append(Update(task))
            if not ops:
                continue
            rejected: list[Op] = []
            try:
                failed = await self._store.commit_chunked(ops, guard=self._guard(),
                                                          rejected=rejected)
                outage = 0.0
            except StoreUnavailable as error:
                # etcd down or full (NOSPACE): keep every report the agents were
                # told was taken, and write them once etcd takes writes again.
                outage = min(5.0, max(0.5, outage * 2))
                log.warning("cannot write %d task statuses (kept; retrying in %.1fs): %s",
                            len(ops), outage, error)
                failed = list(ops)
                await asyncio.sleep(outage)
            for op in rejected:  # etcd refuses this task as such: no retry can help
                if isinstance(op, Update):
                    log.error("task %s: etcd refused its status write; dropped", op.obj.id)
            for op in failed:
                assert isinstance(op, Update)
                # Retry against the refreshed cache unless a newer report arrived.
                retry = op.obj
                assert isinstance(retry, pb.Task)
                self.pending.setdefault(retry.id, (retry.node_id, retry.status))
            if failed:
                self._ready.set()


async def mark_node(store: Store, guard: Guard | None, node_id: str, status: int, message: str,
                    description: pb.NodeDescription | None = None) -> None:
    """Set the node's state (and description, when a session brings one)."""

    def mark(node: pb.Node) -> bool:
        node.status.state = status  # type: ignore[assignment]
        node.status.message = message
        node.status.last_heartbeat.GetCurrentTime()
        if description is not None:
            node.description.CopyFrom(description)
            node.status.addr = description.advertise_addr
        return True

    await update_node(store, guard, node_id, mark)


async def set_conditions(store: Store, guard: Guard | None, node_id: str,
                         conditions: list[str]) -> None:
    def change(node: pb.Node) -> bool:
        if list(node.status.conditions) == conditions:
            return False
        del node.status.conditions[:]
        node.status.conditions.extend(conditions)
        return True

    if await update_node(store, guard, node_id, change):
        log.warning("node %s reports %s", node_id, ", ".join(conditions) or "no condition")


async def update_node(store: Store, guard: Guard | None, node_id: str,
                      change: Callable[[pb.Node], bool]) -> bool:
    """The store's read-modify-write of a node's record, fenced by the
    leader's guard (None on a follower: compare-and-swap alone): `change`
    edits a copy (False: nothing to write).
    Whether it wrote; a node gone is not written."""

    def step() -> Planned[bool]:
        current = store.cache.nodes.get(node_id)
        if current is None:
            return Planned([], False)
        node = pb.Node()
        node.CopyFrom(current)
        return Planned([Update(node)], True) if change(node) else Planned([], False)

    return await store.read_modify_write(step, attempts=_CAS_ATTEMPTS, guard=guard)
