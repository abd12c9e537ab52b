"""The orchestrator's loop on the leader: level-triggered reconciliation of
services.

A change in the cache only marks services dirty; each pass re-plans every
dirty service from the whole desired and observed state (plan_service, pure)
and writes all resulting operations in chunked, fenced transactions. A
conflicting chunk just marks its services dirty again: the failed transaction
already refreshed the cache, so the next plan starts from the truth. A full
pass runs when leadership is gained.

Failures are isolated per service: a service whose plan raises, or whose
writes etcd refuses as such (StoreRejected: too large, ...), is retried with
its own back-off (1 s doubling to 60 s) and the reason is written into its
`write_error` (shown by `service inspect` and `service ps`); every other
service is planned and written as usual. etcd being unavailable or full
(NOSPACE) concerns every service: the pass is retried with a back-off of its
own, and nothing is lost because the next pass re-plans from the cache.

The planner sees the nodes through the DisruptionGate (disruption.py): the
tasks of nodes that went DOWN in a mass disconnect, or just after an
election, are replaced one node at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from swarm.api.telemetry import NO_TELEMETRY, Telemetry, timed
from swarm.api.v1 import objects_pb2 as pb
from swarm.api.validation import MAX_SERVICE_SPEC_BYTES

from ..allocator.claims import release_task
from ..heartbeat import heartbeat_period
from ..scheduler.filters import takes_new_tasks
from ..store import (
    Change,
    ClusterChange,
    Conflict,
    Create,
    Delete,
    Guard,
    Keys,
    NodeChange,
    Op,
    ServiceChange,
    Store,
    StoreError,
    StoreRejected,
    StoreUnavailable,
    TaskChange,
    Update,
)
from .disruption import DisruptionGate, DisruptionSettings, HeldView
from .plan import OrchestratorSettings, ServicePlan, plan_service

log = logging.getLogger(__name__)

_BATCH_WINDOW = 0.005  # let a burst of changes collapse into one pass
# A service with at least this many tasks is planned in a worker thread.
THREAD_PLAN_TASKS = 2000
COALESCE_MAX = 5.0  # seconds: the longest wait for changes to gather (coalesce_window)


_ROLLING = (pb.UpdateStatus.UPDATING, pb.UpdateStatus.ROLLBACK_STARTED)

BACKOFF_INITIAL = 1.0  # seconds before a failing service is tried again
BACKOFF_MAX = 60.0
_OUTAGE_MAX = 5.0  # the longest wait between passes while etcd is unavailable or full


def coalesce_window(last_pass: float, limit: float = COALESCE_MAX) -> float:
    """How long to let changes gather before the next pass, given how long the
    last one took: as long again (at most `limit`), so that passes over huge
    services take at most about half the controller's time and every change
    that came meanwhile is planned in one pass. At thousands of nodes every
    node going DOWN (or back) marked the 40,000-task service again, and the
    orchestrator re-planned it back to back, starving everything else."""
    return max(_BATCH_WINDOW, min(last_pass, limit))


def backoff_delay(attempts: int, initial: float = BACKOFF_INITIAL,
                  limit: float = BACKOFF_MAX) -> float:
    """The wait after the attempts-th failure in a row (1, 2, 3, ...)."""
    return float(min(limit, initial * 2 ** min(max(attempts - 1, 0), 30)))


def _relevant(old: pb.Task | None, new: pb.Task | None, service: pb.Service | None,
              node: pb.Node | None) -> bool:
    """Whether a task change can alter a plan. Agent progress (ACCEPTED..STARTING)
    cannot; reaching RUNNING, and a running task's health changing (healthy: it
    is up; unhealthy: a failure), matter only to a rolling update (the next
    batch, a start-first predecessor, the health gate). Re-planning a 10k-task
    service on every RUNNING report made convergence quadratic."""
    if old is None or new is None:
        return True
    if old.desired_state != new.desired_state:
        return True
    if old.node_id != new.node_id:
        # The scheduler's placement changes no plan unless the node went away meanwhile.
        return not takes_new_tasks(node)
    before, after = old.status.state, new.status.state
    if (before >= pb.COMPLETE) != (after >= pb.COMPLETE):
        return True
    health_changed = after == pb.RUNNING and old.status.health != new.status.health
    if not (before < pb.RUNNING <= after or health_changed):
        return False
    return service is None or service.update_status.state in _ROLLING \
        or new.spec_version != service.spec_version


def node_change_matters(old: pb.Node | None, new: pb.Node | None) -> bool:
    """Whether a node change can alter a plan: the node came or went, or its
    state, spec (availability, role, labels) or description (what constraints
    read) changed. A heartbeat's timestamp, a status message, a condition or
    an ingress address does not; re-planning every service on the node for
    those made a node's every write cost a full plan of its services."""
    if old is None or new is None:
        return True
    return old.status.state != new.status.state or old.spec != new.spec \
        or old.description != new.description


def is_down(node: pb.Node | None) -> bool:
    return node is not None and node.status.state == pb.NodeStatus.DOWN


def node_change_replans(old: pb.Node | None, new: pb.Node | None, was_released: bool) -> bool:
    """Whether a node change is to mark the services on it for a plan now.

    Beyond node_change_matters: a node going DOWN (nothing else changed) is
    left to the disruption gate, which releases it (lone: after a window;
    in a mass disconnect: one at a time) and marks its services then; until
    then the planner sees it as READY, so a plan now would change nothing.
    Coming back from DOWN matters only if it had been released (its tasks
    were replaced meanwhile). At 2,000 nodes on a loaded machine nodes
    flapping DOWN and back each cost a full plan of a 40,000-task service."""
    if not node_change_matters(old, new):
        return False
    if old is None or new is None or old.spec != new.spec or old.description != new.description:
        return True
    if is_down(new):
        return False
    if is_down(old):
        return was_released
    return True


class Orchestrator:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time,
                 disruption: DisruptionSettings | None = None) -> None:
        self._store = store
        self._clock = clock
        self.gate = DisruptionGate(disruption or DisruptionSettings())
        self._recheck: asyncio.TimerHandle | None = None
        # Whether the gate is to look at every node (after an election); else
        # it is told of each node change as it comes.
        self._nodes_changed = True
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self.passes = 0
        self.pass_seconds = 0.0  # wall time spent in passes (bench.control_plane reports it)
        self.telemetry: Telemetry = NO_TELEMETRY  # metrics (controller/metrics.py)
        # Failing services: service -> (failures in a row, not before (monotonic)).
        self._failing: dict[str, tuple[int, float]] = {}
        # The task writes of the pass being committed (task ID -> the task as
        # written, None for a deletion): their own changes coming back through
        # the cache are echoes, not news (see is_echo).
        self._writing: dict[str, pb.Task | None] = {}
        self._outage_delay = 0.0

    def settings(self) -> OrchestratorSettings:
        for cluster in self._store.cache.clusters.values():
            limit = cluster.spec.orchestration.task_history_retention_limit
            if limit > 0:
                return OrchestratorSettings(task_history_limit=limit)
        return OrchestratorSettings()

    def mark(self, service_id: str) -> None:
        self._dirty.add(service_id)
        self._wake.set()

    def _mark_all(self) -> None:
        cache = self._store.cache
        for service_id in (*cache.services, *cache.tasks_by_service):
            self._dirty.add(service_id)
        self._wake.set()

    def _on_change(self, change: Change) -> None:
        cache = self._store.cache
        match change:
            case ServiceChange(object_id=service_id):
                self.mark(service_id)
            case TaskChange(object_id=task_id, old=old, new=new):
                if task_id in self._writing and is_echo(self._writing.pop(task_id), new):
                    return
                task = new or old
                assert task is not None, "a change has an old or a new object"
                placed_on = cache.nodes.get(new.node_id) if new is not None else None
                if _relevant(old, new, cache.services.get(task.service_id), placed_on):
                    self.mark(task.service_id)
            case NodeChange(object_id=node_id, old=old_node, new=new_node):
                was_released = node_id in self.gate.released
                self.gate.observe_node(node_id, new_node, self._clock())
                if not node_change_replans(old_node, new_node, was_released):
                    if is_down(new_node) and not is_down(old_node):
                        self._wake.set()  # the gate's tick times the node's release
                    return
                # Global services depend on every node; replicated ones on the nodes
                # their tasks run on.
                for service in cache.services.values():
                    if service.spec.WhichOneof("mode") in ("global", "global_job"):
                        self._dirty.add(service.id)
                for node in (old_node, new_node):
                    if node is not None:
                        for placed in cache.tasks_by_node.get(node.id, {}).values():
                            self._dirty.add(placed.service_id)
                self._wake.set()
            case ClusterChange():
                self._mark_all()

    def _gate_tick(self) -> None:
        """Let the gate see the nodes; re-plan the services on nodes it releases."""
        cache = self._store.cache
        now = self._clock()
        if self._nodes_changed:
            self._nodes_changed = False
            self.gate.observe(cache.nodes, now)
        if not self.gate.down_since:
            return
        release, recheck = self.gate.decide(len(cache.nodes), now,
                                            heartbeat_period(cache.clusters.values(),
                                                             nodes=len(cache.nodes)))
        for node_id in release:
            log.warning("node %s is DOWN: replacing its tasks", node_id)
            for task in cache.tasks_by_node.get(node_id, {}).values():
                self._dirty.add(task.service_id)
        held = self.gate.held
        if held and release:
            log.warning("mass disconnect: %d DOWN nodes held, their tasks replaced one node "
                        "at a time", len(held))
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        if recheck is not None:
            self._recheck = asyncio.get_running_loop().call_later(
                max(0.0, recheck - now) + 0.01, self._wake.set)

    async def run(self, guard: Guard) -> None:
        unsubscribe = self._store.cache.subscribe(self._on_change)
        self.gate.restart(self._clock())
        self._nodes_changed = True
        self._mark_all()
        try:
            took = 0.0
            while True:
                await self._wake.wait()
                await asyncio.sleep(coalesce_window(took))
                self._wake.clear()
                self._gate_tick()
                dirty, self._dirty = self._dirty, set()
                started = time.perf_counter()
                with timed(self.telemetry, "swarm_reconcile_seconds", "orchestrator"):
                    await self._pass(dirty, guard)
                took = time.perf_counter() - started
                self.pass_seconds += took
        finally:
            unsubscribe()
            if self._recheck is not None:
                self._recheck.cancel()
                self._recheck = None

    async def _pass(self, service_ids: set[str], guard: Guard) -> None:
        self.passes += 1
        cache = self._store.cache
        now = self._clock()
        settings = self.settings()
        groups: list[list[Op]] = []
        owner: list[str] = []  # per group: the service it belongs to
        broken: dict[str, str] = {}  # service -> why it failed this pass
        held = self.gate.held
        nodes: Mapping[str, pb.Node] = HeldView(cache.nodes, held) if held else cache.nodes
        frozen: Mapping[str, pb.Node] | None = None  # the nodes as a planning thread sees them
        due = self._due(service_ids)
        for service_id in due:
            service = cache.services.get(service_id)
            if service is not None and service.spec.ByteSize() > MAX_SERVICE_SPEC_BYTES:
                # Written before the limit (or past the API): its tasks would
                # carry it into every status write. Left as it is until updated.
                broken[service_id] = (f"the service spec is {service.spec.ByteSize()} bytes, over "
                                      f"the limit of {MAX_SERVICE_SPEC_BYTES}: no task is made "
                                      "or removed until it is updated below the limit")
                continue
            tasks = list(cache.tasks_by_service.get(service_id, {}).values())
            try:
                if len(tasks) < THREAD_PLAN_TASKS:
                    plan = plan_service(service, tasks, nodes, now, settings,
                                        service_id=service_id)
                else:
                    # Planning tens of thousands of tasks takes seconds of CPU:
                    # done in a thread, so the loop keeps serving heartbeats and
                    # sessions meanwhile (the GIL is handed over every few ms).
                    # The thread sees a snapshot (the cache only ever replaces
                    # its objects, never changes them); what changes meanwhile
                    # marks the service for the next pass, and the writes
                    # compare versions as always.
                    if frozen is None:
                        frozen = HeldView(dict(cache.nodes), set(held)) if held \
                            else dict(cache.nodes)
                    plan = await asyncio.to_thread(plan_service, service, tasks, frozen, now,
                                                   settings, service_id=service_id)
            except Exception as error:  # a bug must cost one service, not all
                log.exception("orchestrator: cannot plan service %s", service_id)
                broken[service_id] = f"cannot plan: {error}"
                continue
            if plan.requeue_after is not None:
                asyncio.get_running_loop().call_later(plan.requeue_after, self.mark, service_id)
            # Deletions compare the version the plan saw, not a newer one.
            planned = {task.id: task for task in tasks} if plan.delete else {}
            for group in _plan_ops(plan, planned, self._store.keys):
                owner.append(service_id)
                groups.append(group)
        rejected: dict[int, StoreRejected] = {}
        failed: list[int] = []
        if groups:
            self._writing = _task_writes(groups)
            try:
                failed = await self._store.commit_groups(groups, guard=guard, rejected=rejected)
            except StoreUnavailable as error:
                self._outage_delay = min(_OUTAGE_MAX, max(0.5, self._outage_delay * 2))
                log.warning("orchestrator cannot write (retrying in %.1fs): %s",
                            self._outage_delay, error)
                self._dirty |= service_ids
                await asyncio.sleep(self._outage_delay)
                self._wake.set()
                return
            finally:
                self._writing = {}
        self._outage_delay = 0.0
        for index, refusal in rejected.items():
            broken.setdefault(owner[index], f"etcd refused its task writes: {refusal}")
        retry = {owner[i] for i in failed} - broken.keys()
        if retry:
            log.info("orchestrator: %d writes conflicted; re-planning %d services",
                     len(failed), len(retry))
            self._dirty |= retry
            self._wake.set()
        for service_id, reason in broken.items():
            await self._failed(service_id, reason, guard)
        for service_id in set(due) - broken.keys() - retry:
            await self._succeeded(service_id, guard)

    def _due(self, service_ids: set[str]) -> list[str]:
        """The services to plan now: those backing off wait for their time."""
        now = time.monotonic()
        due = []
        for service_id in service_ids:
            failing = self._failing.get(service_id)
            if failing is not None and failing[1] > now:
                continue  # marked again when its back-off ends (_failed)
            due.append(service_id)
        return due

    async def _failed(self, service_id: str, reason: str, guard: Guard) -> None:
        attempts = self._failing.get(service_id, (0, 0.0))[0] + 1
        delay = backoff_delay(attempts)
        self._failing[service_id] = (attempts, time.monotonic() + delay)
        asyncio.get_running_loop().call_later(delay, self.mark, service_id)
        log.warning("orchestrator: service %s failed (%d in a row; again in %.0fs): %s",
                    service_id, attempts, delay, reason)
        current = self._store.cache.services.get(service_id)
        if current is None:
            return
        service = pb.Service()
        service.CopyFrom(current)
        if not service.write_error.message:
            service.write_error.since.GetCurrentTime()
        service.write_error.message = reason
        service.write_error.attempts = attempts
        await self._write_service(service, guard)

    async def _succeeded(self, service_id: str, guard: Guard) -> None:
        self._failing.pop(service_id, None)
        current = self._store.cache.services.get(service_id)
        if current is None or not current.HasField("write_error"):
            return
        service = pb.Service()
        service.CopyFrom(current)
        service.ClearField("write_error")
        log.info("orchestrator: service %s writes again", service_id)
        await self._write_service(service, guard)

    async def _write_service(self, service: pb.Service, guard: Guard) -> None:
        """Record a service's write_error; best effort (the next pass tries again)."""
        try:
            await self._store.commit([Update(service)], guard=guard)
        except (Conflict, StoreError) as error:
            log.warning("orchestrator: cannot record the state of service %s: %s",
                        service.id, error)


def is_echo(written: pb.Task | None, new: pb.Task | None) -> bool:
    """Whether a task change is the orchestrator's own write coming back (the
    cache applies a committed transaction at once): the plan that made it
    already counted on it, and planning again on a plan's result gives an
    empty plan (plan.py), so it need not mark the service. Re-planning a
    20,000-task service once more after every scale-up cost seconds of CPU.
    Anything else (another writer's version read back after a conflict) is
    news."""
    if written is None:
        return new is None
    return new is not None and new.meta.updated_at == written.meta.updated_at \
        and new.desired_state == written.desired_state and new.node_id == written.node_id \
        and new.status == written.status


def _task_writes(groups: list[list[Op]]) -> dict[str, pb.Task | None]:
    """The tasks a pass writes: ID -> the task as written (None: deleted)."""
    writes: dict[str, pb.Task | None] = {}
    for group in groups:
        for op in group:
            if isinstance(op, Create | Update) and isinstance(op.obj, pb.Task):
                writes[op.obj.id] = op.obj
            elif isinstance(op, Delete) and op.kind == "tasks":
                writes[op.object_id] = None
    return writes


def _plan_ops(plan: ServicePlan, tasks: Mapping[str, pb.Task], keys: Keys) -> list[list[Op]]:
    """The plan's writes in all-or-nothing groups: a task's deletion goes with
    the release of its addresses (the address is free exactly when no task
    record holds it)."""
    groups: list[list[Op]] = [[Create(task)] for task in plan.create]
    groups.extend([Update(task)] for task in plan.update)
    for task_id in plan.delete:
        task = tasks.get(task_id)
        if task is not None:
            groups.append([Delete("tasks", task_id, task.meta.version), *release_task(keys, task)])
    if plan.service is not None:
        groups.append([Update(plan.service)])
    return groups
