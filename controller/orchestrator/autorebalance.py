"""`swarm-controller --auto-rebalance`: the leader rebalances replicated
services by itself when a node joins or comes back (off by default).

A node *arrives* when it becomes READY with availability ACTIVE: it joined,
came back from DOWN, or was set active again after pause or drain. Each
arrival opens (or extends) an episode:

- the episode starts `interval` seconds after the last arrival, so that a
  batch of nodes joining together (an autoscaling group, a rack after a
  power cut) gives one rebalance per service, not one per node;
- one service at a time: no rebalance starts while any service (this one's
  or an operator's) is rebalancing, and two starts are at least `interval`
  apart; the service picked is the first by name whose plan moves something;
- never during an update: a service with an update in progress or paused, or
  tasks of an older spec, is skipped (rebalance.refusal); a paused rebalance
  is left for the operator;
- each service is rebalanced at most once per episode, so a plan the
  scheduler could not follow exactly never turns into a loop.

The rebalance itself is the one `swarmctl service rebalance` starts
(rebalance.plan_rebalance, rebalance.start): the service's update config
paces it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from swarm.api.v1 import objects_pb2 as pb

from ..scheduler.filters import takes_new_tasks
from ..store import Change, Conflict, Guard, NodeChange, Store, StoreUnavailable, Update
from . import rebalance
from .tasks import ConstraintCache

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 30.0


@dataclass(frozen=True)
class AutoRebalanceSettings:
    enabled: bool = False
    # Seconds of quiet after the last node arrival before rebalancing, and the
    # least time between two rebalance starts.
    interval: float = DEFAULT_INTERVAL


def arrived(old: pb.Node | None, new: pb.Node | None) -> bool:
    """A node became able to take tasks: joined, came back READY, or set active."""
    return takes_new_tasks(new) and not takes_new_tasks(old)


def pick(services: Iterable[pb.Service], tasks_of: Mapping[str, Sequence[pb.Task]],
         nodes: Mapping[str, pb.Node], cluster_tasks: Collection[pb.Task], done: set[str]
         ) -> tuple[pb.Service, rebalance.RebalancePlan] | None:
    """The first service by name, not yet rebalanced in this episode, that can be
    and needs to be; None when none does or one is rebalancing now. Services
    found balanced join `done`. Pure but for `done`."""
    ordered = sorted(services, key=lambda s: s.spec.name)
    if any(rebalance.in_progress(service) for service in ordered):
        return None
    constraints = ConstraintCache()
    # Eligible nodes per constraint list: most services share a few (or none).
    eligible: dict[tuple[str, ...], frozenset[str]] = {}
    for service in ordered:
        if service.id in done or service.spec.WhichOneof("mode") != "replicated":
            continue
        tasks = tasks_of.get(service.id, ())
        if rebalance.refusal(service, tasks) is not None \
                or service.update_status.state == pb.UpdateStatus.PAUSED:
            continue  # updating, or an update (or a rebalance) paused: the operator's call
        key = tuple(service.spec.task.placement.constraints)
        if key not in eligible:
            eligible[key] = rebalance.eligible_node_ids(service, nodes, constraints)
        if not rebalance.may_move(service, tasks, eligible[key]):
            done.add(service.id)
            continue
        plan = rebalance.plan_rebalance(service, tasks, nodes, cluster_tasks)
        if plan.moves:
            return service, plan
        done.add(service.id)
    return None


class AutoRebalancer:
    def __init__(self, store: Store, settings: AutoRebalanceSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._quiet_until: float | None = None  # an episode is open
        self._last_start = -float("inf")
        self._done: set[str] = set()  # services rebalanced (or balanced) this episode
        self._episode = 0  # node arrivals so far
        self._wake = asyncio.Event()
        self.started: list[str] = []  # service names, in order (tests, logs)

    def _on_change(self, change: Change) -> None:
        match change:
            case NodeChange(old=old, new=new) if arrived(old, new):
                self._quiet_until = self._clock() + self._settings.interval
                self._episode += 1
                self._done = set()
                self._wake.set()

    async def run(self, guard: Guard) -> None:
        unsubscribe = self._store.cache.subscribe(self._on_change)
        tick = min(0.5, self._settings.interval)
        try:
            while True:
                if self._quiet_until is None:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                now = self._clock()
                ready_at = max(self._quiet_until, self._last_start + self._settings.interval)
                if now < ready_at:
                    await asyncio.sleep(min(ready_at - now, tick))
                    continue
                if any(rebalance.in_progress(s) for s in self._store.cache.services.values()):
                    await asyncio.sleep(tick)
                    continue
                cache = self._store.cache
                tasks_of = {service_id: list(tasks.values())
                            for service_id, tasks in cache.tasks_by_service.items()}
                # In a thread over a snapshot (the cache replaces objects, never
                # changes them), so that the event loop is not held up by planning.
                episode, done = self._episode, set(self._done)
                picked = await asyncio.to_thread(
                    pick, list(cache.services.values()), tasks_of, dict(cache.nodes),
                    list(cache.tasks.values()), done)
                if episode != self._episode:
                    continue  # a node arrived meanwhile: a new episode, plan again
                self._done = done
                if picked is None:
                    log.info("auto-rebalance: every replicated service is balanced")
                    self._quiet_until = None
                    continue
                service, plan = picked
                await self._start(guard, service, tasks_of.get(service.id, []), plan)
        finally:
            unsubscribe()

    async def _start(self, guard: Guard, service: pb.Service, tasks: Sequence[pb.Task],
                     plan: rebalance.RebalancePlan) -> None:
        updated, marked = rebalance.start(service, tasks, plan, time.time())
        try:
            await self._store.commit([Update(updated), *(Update(task) for task in marked)],
                                     guard=guard)
        except Conflict:
            # The service or a task changed meanwhile: plan again from the cache.
            await asyncio.sleep(0.05)
            return
        except StoreUnavailable as error:
            log.warning("auto-rebalance cannot write: %s", error)
            await asyncio.sleep(min(0.5, self._settings.interval))
            return
        self._done.add(service.id)
        self._last_start = self._clock()
        self.started.append(service.spec.name)
        log.info("auto-rebalance: service %s, %d slots move (%s)", service.spec.name,
                 len(plan.moves), plan.summary())
