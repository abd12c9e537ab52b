"""The worker: runs the tasks assigned to this node as containers, level-triggered.

The session hands it assignments (first the COMPLETE set, then INCREMENTAL
changes). Each message's dependencies (networks, the routing mesh, service
records: agent/dependencies.py) are reconciled first, then its tasks: the
worker keeps one entry per assigned task and one supervised asyncio loop per
entry. The loop looks at the whole state of its task -- the desired state
from the latest assignment, the state it last reported, and what it knows of
the container -- asks the pure `next_step` (agent/steps.py) what to do, does
that one step, and asks again. It never branches on what changed, so the
normal path is also the recovery path: after an agent restart the same loop
picks up an adopted container wherever it was.

States only move forward (ASSIGNED -> ACCEPTED -> PREPARING -> READY ->
STARTING -> RUNNING -> COMPLETE | FAILED, or SHUTDOWN when asked to stop,
REJECTED when the task cannot run here). A report that would move a task
backwards (possible when the controller saw a later state than a restarted
agent can reproduce) is not sent.

Restart safety: `start()` lists the runtime's containers before the first
assignment; a container whose task is assigned is adopted as it is (a running
one keeps running, same PID; one that exited meanwhile has its exit code from
conmon's exit file). After each COMPLETE set, containers of tasks that are
not in it are stopped and removed. `close()` stops the loops and leaves every
container as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import grpc

from swarm.api.loops import cancel_all, start_supervised
from swarm.api.registryauth import Credential
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import objects_pb2 as pb

from . import timing
from .dependencies import NetworkDependencies
from .discovery import Discovery
from .health import (
    HEALTHY,
    STARTING,
    UNHEALTHY,
    HealthPlan,
    ProbeResult,
    plan_health,
    watch_health,
)
from .images import Image, ImageError
from .network.overlay import OverlayManager
from .payloads import needs_payloads, plan_files
from .published import PublishedPorts
from .runtime import (
    ContainerError,
    ContainerState,
    NoSuchContainer,
    PayloadFile,
    Runtime,
    stop_signal,
)
from .steps import (
    ALIVE,
    DEFAULT_STOP_GRACE,
    Observed,
    Step,
    drain_left,
    drain_timeout,
    exit_outcome,
    may_report,
    must_drain,
    next_step,
    state_name,
    stop_grace,
)
from .templates import expand_task

log = logging.getLogger(__name__)

_KILLED = 128 + 9  # the exit code of a process killed by SIGKILL


class ImageSource(Protocol):
    """What the worker needs of the image store (agent.images.ImageStore)."""

    async def ensure(self, reference: str, credential: Credential | None = None) -> Image: ...


Report = Callable[[str, pb.TaskStatus], None]
# Asks the controller for one task's secrets and configs (AgentSession.task_payloads).
FetchPayloads = Callable[[str], Awaitable[dpb.TaskPayloadsResponse]]


async def _no_payloads(task_id: str) -> dpb.TaskPayloadsResponse:
    raise ContainerError("this agent has no session to fetch secrets and configs over")


# ================================================================ the worker


@dataclass(frozen=True)
class WorkerSettings:
    # A container found at start whose task is not assigned any more gets this
    # long after SIGTERM (its task's own stop signal and grace are unknown).
    removal_grace: float = DEFAULT_STOP_GRACE
    # How often the overlay networks are converged again to what the
    # controller last said, between its messages: the kernel can take devices
    # away behind the agent's back (a VXLAN device goes with its underlay
    # device, e.g. a NIC rebuilt on a live host).
    network_resync_period: float = 30.0


@dataclass
class _Entry:
    task: pb.Task  # the latest assignment
    status: pb.TaskStatus  # the latest status reported (or the controller's)
    container: ContainerState | None = None
    image: Image | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    loop: asyncio.Task[None] | None = None
    # Drain before stop: when this agent learned the task is to stop (its
    # clock), and whether the controller has said every node let it go.
    stop_asked: float | None = None
    drained: bool = False
    # Its secrets and configs were released (their tmpfs unmounted) after it ended.
    payloads_released: bool = False
    # The registry credentials its assignment brought (its service's,
    # --with-registry-auth): kept in memory until the image is pulled.
    credential: Credential | None = field(default=None, repr=False)
    # Its start, step by step (agent/timing.py; None unless --log-task-timing).
    timeline: timing.StartTimeline | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return self.task.id

    def observed(self) -> Observed:
        status = self.container.status if self.container is not None else None
        return Observed(self.status.state, None if status == "unknown" else status)


class _TaskLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes each line with the task (and its service)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        return f"task {extra.get('task')} ({extra.get('service')}): {msg}", kwargs


class Worker:
    """Implements agent.session.Worker over an image store and a Runtime."""

    def __init__(self, runtime: Runtime, images: ImageSource, report: Report | None = None,
                 settings: WorkerSettings | None = None,
                 overlay: OverlayManager | None = None,
                 netns_path: Callable[[str], Path] | None = None,
                 ports: PublishedPorts | None = None,
                 discovery: Discovery | None = None) -> None:
        self.runtime = runtime
        self.images = images
        self.settings = settings or WorkerSettings()
        self.dependencies = NetworkDependencies(
            runtime, overlay, netns_path, ports, discovery,
            resync_period=self.settings.network_resync_period)
        # Set by whoever wires the session in (the session needs the worker first).
        self.report: Report = report or (lambda task_id, status: None)
        self.fetch_payloads: FetchPayloads = _no_payloads
        # This node, for the templates of task specs ({{.Node.Hostname}}...).
        self.node_id = ""
        self.node_hostname = ""
        self._entries: dict[str, _Entry] = {}
        # Containers found at start() whose task has not been assigned (yet).
        self._unclaimed: dict[str, ContainerState] = {}
        self._removals: dict[str, asyncio.Task[None]] = {}
        self._started = False
        # Called with the task ID once a container is removed (the image collector).
        self.on_removed: Callable[[str], None] = lambda task_id: None
        self.clock: Callable[[], float] = time.monotonic

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Find the containers an earlier agent left (before any assignment)."""
        self._unclaimed = dict(await self.runtime.list())
        self._started = True
        self.dependencies.start()
        if self._unclaimed:
            log.info("found %d existing containers: %s", len(self._unclaimed),
                     ", ".join(f"{c.id} ({c.status})" for c in self._unclaimed.values()))

    async def close(self) -> None:
        """Stop every loop; containers stay as they are (the next agent adopts
        them). A removal cut short is finished by the next agent."""
        loops = [entry.loop for entry in self._entries.values() if entry.loop is not None]
        await self.dependencies.close()
        await cancel_all([*loops, *self._removals.values()])
        self._removals.clear()

    async def resync_networks(self) -> None:
        """NetworkDependencies.resync_networks (also run every
        settings.network_resync_period)."""
        await self.dependencies.resync_networks()

    # ------------------------------------------------------------ the Worker protocol

    async def apply(self, assignments: dpb.Assignments) -> None:
        if not self._started:
            await self.start()
        # Dependencies first: the message's new tasks attach to its networks.
        await self.dependencies.apply(assignments)
        if assignments.type == dpb.Assignments.COMPLETE:
            wanted = {task.id for task in assignments.tasks}
            for task_id in [t for t in self._entries if t not in wanted]:
                self._remove(task_id)
            # Containers of tasks no longer ours (reassigned while we were away).
            for task_id in [t for t in self._unclaimed if t not in wanted]:
                log.info("container %s belongs to no assigned task: removing it", task_id)
                del self._unclaimed[task_id]
                self._start_removal(task_id)
        for task_id in assignments.removed:
            self._remove(task_id)
        credentials = {c.task_id: c.credential for c in assignments.pull_credentials}
        for task in assignments.tasks:
            self._upsert(task, credentials.get(task.id))
        for task_id in assignments.drained:
            draining = self._entries.get(task_id)
            if draining is not None and not draining.drained:
                draining.drained = True
                draining.changed.set()
        self._host_ports_changed()
        await self.dependencies.remove_unused(assignments, {
            attachment.network_id for entry in self._entries.values()
            for attachment in entry.task.networks})

    def _host_ports_changed(self) -> None:
        """Tell the published ports which of our tasks publish host-mode ports
        and run (cheap: called on every status change)."""
        self.dependencies.host_ports_changed(
            (entry.task, entry.status.state) for entry in self._entries.values())

    def statuses(self) -> dict[str, pb.TaskStatus]:
        return {task_id: entry.status for task_id, entry in self._entries.items()}

    async def settled(self, timeout: float) -> bool:
        """Whether what apply() was given is in force on this node (see
        NetworkDependencies.settled): the agent then confirms it (drain before stop)."""
        return await self.dependencies.settled(timeout)

    # ------------------------------------------------------------ assignments

    def _upsert(self, task: pb.Task, credential: pb.RegistryCredential | None = None) -> None:
        entry = self._entries.get(task.id)
        stopping = task.desired_state > pb.RUNNING
        given = None if credential is None else Credential(
            credential.registry, credential.username, credential.password)
        if entry is not None:
            entry.task = task
            entry.credential = given or entry.credential
            if stopping and entry.stop_asked is None:
                entry.stop_asked = self.clock()
            entry.changed.set()
            return
        status = pb.TaskStatus()
        status.CopyFrom(task.status)
        entry = _Entry(task=task, status=status, container=self._unclaimed.pop(task.id, None),
                       stop_asked=self.clock() if stopping else None, credential=given,
                       timeline=timing.begin())
        if entry.container is not None:
            log.info("task %s: adopting its %s container", task.id, entry.container.status)
        self._entries[task.id] = entry
        entry.loop = start_supervised(f"task-{task.id}", lambda: self._run(entry))

    def _remove(self, task_id: str) -> None:
        entry = self._entries.pop(task_id, None)
        if entry is None:
            return
        self._start_removal(task_id, entry.loop, self._stop_signal(entry),
                            stop_grace(entry.task.spec.container))

    def _start_removal(self, task_id: str, loop: asyncio.Task[None] | None = None,
                       signal: str = "SIGTERM", grace: float | None = None) -> None:
        """Stop (if it still runs) and remove the container, in the background:
        apply() must not wait out a grace period."""
        async def remove() -> None:
            if loop is not None:
                await cancel_all([loop])
            await self._remove_container(task_id, signal,
                                         self.settings.removal_grace if grace is None else grace)

        async def run() -> None:
            await remove()
            # Forgotten only once done: a failed attempt is retried (supervised,
            # with backoff) and stays visible to close() and wait_removals().
            if self._removals.get(task_id) is asyncio.current_task():
                del self._removals[task_id]

        self._removals[task_id] = start_supervised(f"remove-{task_id}", run)

    async def _remove_container(self, task_id: str, signal: str, grace: float) -> None:
        self.dependencies.release(task_id)
        try:
            await self.runtime.shutdown(task_id, signal, grace)
        except ContainerError as error:  # gone already, or unkillable: remove() insists
            log.debug("task %s: stop before removal: %s", task_id, error)
        await self.runtime.remove(task_id)
        log.info("task %s: container removed", task_id)
        self.on_removed(task_id)

    def images_in_use(self) -> set[str]:
        """The image references of every task this worker holds (its
        containers' images must stay; removals and containers not claimed
        yet are covered by the runtime's mounted layers)."""
        return {entry.task.spec.container.image for entry in self._entries.values()
                if entry.task.spec.container.image}

    async def wait_removals(self) -> None:
        """Until every removal started so far has finished (tests, shutdown)."""
        while self._removals:
            await asyncio.gather(*list(self._removals.values()), return_exceptions=True)

    # ------------------------------------------------------------ the task loop

    async def _run(self, entry: _Entry) -> None:
        tlog = _TaskLog(log, {"task": entry.id, "service": entry.task.service_name})
        timing.use(entry.timeline)  # this loop's steps, and the runtime's within them
        removal = self._removals.get(entry.id)
        if removal is not None:  # the same ID again while its old container goes away
            await asyncio.gather(removal, return_exceptions=True)
        while True:
            entry.changed.clear()
            step = next_step(entry.task.desired_state, entry.observed())
            if step is Step.DONE and not entry.payloads_released:
                await self._release_payloads(entry, tlog)
            if step in (Step.WAIT, Step.DONE):
                await entry.changed.wait()
                continue
            tlog.debug("step %s", step.value)
            if step in (Step.PREPARE, Step.MONITOR):
                await self._interruptible(entry, step, tlog)
            else:
                await self._do(entry, step, tlog)

    async def _interruptible(self, entry: _Entry, step: Step, tlog: _TaskLog) -> None:
        """Run a long step (a pull, a container's whole life) until it ends or
        the assignment changes so that another step is due (e.g. a shutdown)."""
        action = asyncio.create_task(self._do(entry, step, tlog), name=f"{step.value}-{entry.id}")
        try:
            while not action.done():
                changed = asyncio.create_task(entry.changed.wait())
                try:
                    await asyncio.wait({action, changed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
                if action.done():
                    break
                entry.changed.clear()
                if next_step(entry.task.desired_state, entry.observed()) != step:
                    tlog.info("%s interrupted: desired state is now %s", step.value,
                              state_name(entry.task.desired_state))
                    await cancel_all([action])
                    return
            action.result()
        finally:
            await cancel_all([action])  # not done: we were cancelled ourselves

    async def _do(self, entry: _Entry, step: Step, tlog: _TaskLog) -> None:
        task = entry.task
        if step is Step.ACCEPT:
            timing.mark("queued")  # the loop's first turn
            self._set(entry, pb.ACCEPTED, "accepted")
        elif step is Step.PREPARE:
            await self._prepare(entry, tlog)
        elif step is Step.START:
            timing.mark("wait-start")
            await self.dependencies.serve(task, tlog)  # an adopted created container: not served yet
            timing.mark("serve")
            self._set(entry, pb.STARTING, "starting")
            try:
                pid = await self.runtime.start(task.id)
            except ContainerError as error:
                tlog.warning("start failed: %s", error)
                entry.container = await self._observe(task.id)
                self._set(entry, pb.FAILED, "starting failed", err=str(error))
                timing.finish(task.id, entry.timeline, "failed")
                return
            timing.mark("runc-start")
            entry.container = ContainerState(id=task.id, status="running", pid=pid)
            tlog.info("running (pid %d)", pid)
            checked = await self._health_plan(entry) is not None
            self._set(entry, pb.RUNNING, "started",
                      health=STARTING if checked else None)
            timing.finish(task.id, entry.timeline, "report")
        elif step is Step.MONITOR:
            await self._monitor(entry, tlog)
        elif step is Step.REPORT_EXIT:
            assert entry.container is not None
            code = entry.container.exit_code
            if code is None:
                code = await self.runtime.wait(task.id)
                entry.container = replace(entry.container, exit_code=code)
            state, message, err = exit_outcome(code, entry.container.oom_killed)
            tlog.info("exited with %d", code)
            self._set(entry, state, message, err=err)
        elif step is Step.LOST:
            self._set(entry, pb.FAILED, "container lost",
                      err=f"container {task.id} no longer exists on this node")
        elif step is Step.STOP:
            await self._drain(entry, tlog)
            await self._stop(entry)
            self._set(entry, pb.SHUTDOWN, "shutdown")
        elif step is Step.SHUTDOWN:
            self._set(entry, pb.SHUTDOWN, "shutdown")
        elif step is Step.KILL:
            await self._stop(entry)

    async def _prepare(self, entry: _Entry, tlog: _TaskLog) -> None:
        task = entry.task
        reference = task.spec.container.image
        timing.mark("wait-prepare")
        self._set(entry, pb.PREPARING, "preparing")
        try:
            try:
                image = await self.images.ensure(reference, entry.credential)
            finally:
                entry.credential = None  # pulled or not, this task needs them no more
            timing.mark("image")
            entry.image = image
            files = await self._payloads(task)
            timing.mark("payloads")
            await self.runtime.prepare(expand_task(task, self.node_id, self.node_hostname),
                                       image.runtime_input(), files)
            await self.dependencies.attach(task)
            timing.mark("attach")
        except (ImageError, ContainerError) as error:
            # Before start, nothing retried here would do better: let the
            # controller place the task again (RejectError: the spec cannot
            # run; ImageError: the image cannot be had; ContainerError: runc
            # or conmon refused the container).
            tlog.warning("rejected: %s", error)
            entry.container = None
            self._set(entry, pb.REJECTED, "rejected", err=str(error))
            timing.finish(task.id, entry.timeline, "rejected")
            return
        entry.container = ContainerState(id=task.id, status="created")
        self._set(entry, pb.READY, "prepared")

    async def _payloads(self, task: pb.Task) -> tuple[PayloadFile, ...]:
        """The task's secrets and configs, asked of the controller (only the
        node running the task gets them: controller/payloads.py)."""
        if not needs_payloads(task):
            return ()
        try:
            response = await self.fetch_payloads(task.id)
        except grpc.aio.AioRpcError as error:
            raise ContainerError(f"cannot get the task's secrets and configs: "
                                 f"{error.code().name}: {error.details()}") from None
        return plan_files(task, response)

    async def _release_payloads(self, entry: _Entry, tlog: _TaskLog) -> None:
        """The task ended: its secrets and configs go (the container's process,
        the only other holder of their mounts, is gone)."""
        entry.payloads_released = True
        if not needs_payloads(entry.task):
            return
        try:
            await self.runtime.release_payloads(entry.id)
        except (ContainerError, OSError) as error:
            tlog.warning("could not remove its secrets and configs yet: %s", error)

    async def _monitor(self, entry: _Entry, tlog: _TaskLog) -> None:
        task = entry.task
        await self.dependencies.serve(task, tlog)
        plan = await self._health_plan(entry)
        if entry.status.state < pb.RUNNING:
            # Adopted running, but the last agent died before it could say so.
            self._set(entry, pb.RUNNING, "started",
                      health=STARTING if plan else None)
        waiting = asyncio.create_task(self.runtime.wait(task.id), name=f"wait-{task.id}")
        watching: asyncio.Task[Any] | None = None
        if plan is not None:
            # An adopted container that was healthy stays so until probes say otherwise.
            initial = HEALTHY if entry.status.health == HEALTHY else STARTING
            watching = asyncio.create_task(
                watch_health(plan, lambda: self._probe(task.id, plan),
                             lambda health: self._set_health(entry, health), initial=initial),
                name=f"health-{task.id}")
        try:
            await asyncio.wait({waiting, *([watching] if watching else [])},
                               return_when=asyncio.FIRST_COMPLETED)
            if waiting.done():
                try:
                    code = waiting.result()
                except NoSuchContainer:
                    tlog.warning("container vanished")
                    entry.container = None
                    return
                assert entry.container is not None
                oom = False
                if code == _KILLED:  # SIGKILL: was it the OOM killer? (conmon noted it)
                    observed = await self._observe(task.id)
                    oom = observed is not None and observed.oom_killed
                entry.container = replace(entry.container, status="stopped", pid=0,
                                          exit_code=code, oom_killed=oom)
                return
            assert watching is not None
            tracker = watching.result()
            tlog.warning("%s: stopping it", tracker.reason())
            await asyncio.shield(self._stop(entry))
            self._set(entry, pb.FAILED, "unhealthy container", err=tracker.reason(),
                      health=UNHEALTHY)
        finally:
            await cancel_all([helper for helper in (waiting, watching) if helper is not None])

    async def _health_plan(self, entry: _Entry) -> HealthPlan | None:
        container = entry.task.spec.container
        if entry.image is None and container.healthcheck.test != ["NONE"]:
            # An adopted container: the image is on disk (nothing is pulled
            # unless it went away); its config may carry the health check.
            with contextlib.suppress(ImageError):
                entry.image = await self.images.ensure(container.image)
        return plan_health(container.healthcheck if container.HasField("healthcheck") else None,
                           entry.image.healthcheck if entry.image else None)

    async def _probe(self, task_id: str, plan: HealthPlan) -> ProbeResult:
        try:
            code = await self.runtime.exec(task_id, plan.argv, plan.timeout)
        except TimeoutError:
            return ProbeResult(False, f"timed out after {plan.timeout:g}s")
        except ContainerError as error:
            return ProbeResult(False, f"could not run the check: {error}")
        return ProbeResult(code == 0, f"exit {code}")

    async def _drain(self, entry: _Entry, tlog: _TaskLog) -> None:
        """Drain before stop: until the controller says every node that had
        the task as a backend has removed it from DNS, its VIP load balancers
        and the routing mesh (Assignments.drained), never longer than the
        task's drain timeout after the stop was asked for."""
        if not must_drain(entry.task, entry.status):
            return
        asked = entry.stop_asked if entry.stop_asked is not None else self.clock()
        bound = drain_timeout(entry.task.spec.container)
        while (left := drain_left(asked, self.clock(), bound, entry.drained)) > 0:
            entry.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(entry.changed.wait(), left)
        waited = self.clock() - asked
        if entry.drained:
            tlog.info("drained from every node after %.2fs: stopping", waited)
        elif bound:
            tlog.info("not confirmed drained within %gs: stopping", bound)

    @staticmethod
    def _stop_signal(entry: _Entry) -> str:
        container = entry.task.spec.container
        if entry.image is None:  # adopted and never looked up: the image's is unknown
            return container.stop_signal or "SIGTERM"
        return stop_signal(container, entry.image.runtime_input().config)

    async def _stop(self, entry: _Entry) -> None:
        """Stop signal, the grace period, SIGKILL; records the exit."""
        task = entry.task
        try:
            await self.runtime.shutdown(task.id, self._stop_signal(entry),
                                        stop_grace(task.spec.container))
            code = await self.runtime.wait(task.id)  # the exit file is there by now
        except NoSuchContainer:
            entry.container = None
            return
        previous = entry.container or ContainerState(id=task.id, status="stopped")
        entry.container = replace(previous, status="stopped", pid=0, exit_code=code)

    async def _observe(self, task_id: str) -> ContainerState | None:
        return (await self.runtime.list()).get(task_id)

    # ------------------------------------------------------------ status

    def _set(self, entry: _Entry, state: int, message: str, *, err: str = "",
             health: int | None = None) -> None:
        if not may_report(entry.status.state, state):
            log.debug("task %s: not reporting %s after %s", entry.id, state_name(state),
                      state_name(entry.status.state))
            return
        status = pb.TaskStatus(state=state, message=message, err=err)  # type: ignore[arg-type]
        status.timestamp.GetCurrentTime()
        container = entry.container
        if container is not None:
            status.container.container_id = entry.id
            status.container.pid = container.pid if container.status in ALIVE else 0
            if container.exit_code is not None:
                status.container.exit_code = container.exit_code
        status.health = (health if health is not None  # type: ignore[assignment]
                         else entry.status.health if state == pb.RUNNING
                         else pb.TaskStatus.NO_HEALTHCHECK)
        self._publish(entry, status)

    def _set_health(self, entry: _Entry, health: int) -> None:
        if entry.status.state != pb.RUNNING or entry.status.health == health:
            return
        status = pb.TaskStatus()
        status.CopyFrom(entry.status)
        status.health = health  # type: ignore[assignment]
        status.timestamp.GetCurrentTime()
        self._publish(entry, status)

    def _publish(self, entry: _Entry, status: pb.TaskStatus) -> None:
        entry.status = status
        if status.state >= pb.COMPLETE:
            self.dependencies.release(entry.id)  # its container has stopped
        if self._entries.get(entry.id) is entry:
            self.report(entry.id, status)
        if entry.task.endpoint.ports:
            self._host_ports_changed()

    # ------------------------------------------------------------ introspection (tests)

    def task_ids(self) -> Collection[str]:
        return tuple(self._entries)

    def containers(self) -> Mapping[str, ContainerState | None]:
        return {task_id: entry.container for task_id, entry in self._entries.items()}
