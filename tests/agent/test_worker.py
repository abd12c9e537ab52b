"""The worker: its pure decisions (next_step, exit outcomes, health), then real
tasks -- a real registry, the image store, runc containers under conmon.

Every real test has a runtime of its own (state dir, runc root, cgroup parent,
netns prefix); the fixture closes the worker and removes every container,
mount, netns and cgroup it made, also when the test fails.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration

from swarm.agent.health import (
    HEALTHY,
    STARTING,
    UNHEALTHY,
    HealthPlan,
    HealthTracker,
    ProbeResult,
    plan_health,
    watch_health,
)
from swarm.agent.images import Healthcheck, ImageStore
from swarm.agent.runtime import RuncRuntime, RuncSettings
from swarm.agent.steps import Observed, Step, exit_outcome, may_report, next_step, stop_grace
from swarm.agent.worker import Worker, WorkerSettings
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import objects_pb2 as pb
from tests.agent.containers import leftovers, require_containers, teardown
from tests.etcd_server import free_port
from tests.registry import PATH_ENV, RegistryServer, build_busybox_image
from tests.waiting import eventually

# ================================================================ pure: next_step

R = pb.RUNNING
S = pb.SHUTDOWN


@pytest.mark.parametrize(("desired", "state", "container", "step"), [
    # forward, one state at a time
    (R, pb.ASSIGNED, None, Step.ACCEPT),
    (R, pb.ACCEPTED, None, Step.PREPARE),
    (R, pb.PREPARING, None, Step.PREPARE),
    (R, pb.READY, "created", Step.START),
    (pb.READY, pb.READY, "created", Step.WAIT),
    (R, pb.RUNNING, "running", Step.MONITOR),
    (R, pb.RUNNING, "paused", Step.MONITOR),
    (R, pb.RUNNING, "stopped", Step.REPORT_EXIT),
    # after an agent restart: whatever the controller last saw, the container decides
    (R, pb.STARTING, "running", Step.MONITOR),
    (R, pb.STARTING, None, Step.PREPARE),  # lost before it started: prepare again
    (R, pb.PREPARING, "unknown", Step.PREPARE),  # a prepare cut short: prepare clears it
    (R, pb.STARTING, "created", Step.START),
    (R, pb.RUNNING, None, Step.LOST),
    (R, pb.RUNNING, "unknown", Step.LOST),
    # shutdown
    (S, pb.ASSIGNED, None, Step.SHUTDOWN),
    (S, pb.PREPARING, None, Step.SHUTDOWN),
    (S, pb.READY, "created", Step.STOP),
    (S, pb.RUNNING, "running", Step.STOP),
    (S, pb.RUNNING, "stopped", Step.SHUTDOWN),
    (pb.REMOVE, pb.RUNNING, "running", Step.STOP),
    # terminal: nothing moves any more
    (R, pb.COMPLETE, "stopped", Step.DONE),
    (S, pb.FAILED, None, Step.DONE),
    (R, pb.REJECTED, None, Step.DONE),
    (S, pb.SHUTDOWN, "stopped", Step.DONE),
    (S, pb.FAILED, "running", Step.KILL),  # reported failed (unhealthy), then the agent died
])
def test_next_step(desired: int, state: int, container: str | None, step: Step) -> None:
    assert next_step(desired, Observed(state, container)) == step


def test_exit_outcomes() -> None:
    assert exit_outcome(0) == (pb.COMPLETE, "finished", "")
    assert exit_outcome(3) == (pb.FAILED, "non-zero exit (3)", "task: non-zero exit (3)")
    state, _, err = exit_outcome(137, oom_killed=True)
    assert state == pb.FAILED
    assert "OOM" in err


def test_states_only_move_forward() -> None:
    assert may_report(pb.PREPARING, pb.READY)
    assert may_report(pb.RUNNING, pb.RUNNING)  # a health change
    assert not may_report(pb.STARTING, pb.PREPARING)


def test_stop_grace_defaults_to_ten_seconds() -> None:
    container = pb.ContainerSpec()
    assert stop_grace(container) == 10.0
    container.stop_grace_period.FromMilliseconds(1500)
    assert stop_grace(container) == 1.5


# ================================================================ pure: health


def _seconds(value: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(int(value * 1e9))
    return duration


def test_health_plan_merges_the_spec_over_the_image() -> None:
    image = Healthcheck(test=("CMD", "check", "--quick"), interval=5, timeout=2, retries=4)
    assert plan_health(None, image) == HealthPlan(("check", "--quick"), 5, 2, 4, 0)
    spec = pb.HealthConfig(test=["CMD-SHELL", "wget -q localhost"], interval=_seconds(1))
    assert plan_health(spec, image) == HealthPlan(("/bin/sh", "-c", "wget -q localhost"),
                                                  1, 2, 4, 0)
    # Only the timing set: the image's test with the service's timing.
    assert plan_health(pb.HealthConfig(retries=9), image) == HealthPlan(
        ("check", "--quick"), 5, 2, 9, 0)
    assert plan_health(pb.HealthConfig(test=["NONE"]), image) is None
    assert plan_health(None, None) is None
    assert plan_health(pb.HealthConfig(test=["CMD", "true"]), None) == HealthPlan(
        ("true",), 30, 30, 3, 0, 5)
    # The start interval (docker Engine 25+): the service's, else the image's, else 5 s.
    timed = Healthcheck(test=("CMD", "check"), start_interval=2)
    assert plan_health(None, timed) == HealthPlan(("check",), 30, 30, 3, 0, 2)
    assert plan_health(pb.HealthConfig(start_interval=_seconds(0.5)), timed) == HealthPlan(
        ("check",), 30, 30, 3, 0, 0.5)


def test_health_tracker_counts_consecutive_failures_after_the_start_period() -> None:
    plan = HealthPlan(("true",), interval=1, timeout=1, retries=2, start_period=10)
    tracker = HealthTracker(plan, started_at=100)
    fail, ok = ProbeResult(False, "exit 1"), ProbeResult(True, "exit 0")
    assert tracker.record(fail, 101) == STARTING  # in the start period: not counted
    assert tracker.record(fail, 105) == STARTING
    assert tracker.record(fail, 111) == STARTING  # counted: 1 of 2
    assert tracker.record(ok, 112) == HEALTHY
    assert tracker.record(fail, 113) == HEALTHY
    assert tracker.record(fail, 114) == UNHEALTHY
    assert "2 consecutive failed health checks (last: exit 1)" in tracker.reason()
    # A success during the start period ends it: failures count from then on.
    early = HealthTracker(plan, started_at=0)
    early.record(ok, 1)
    early.record(fail, 2)
    assert early.record(fail, 3) == UNHEALTHY


async def test_watch_health_with_injected_time() -> None:
    now = [0.0]
    results = iter([True, False, False, False])
    seen: list[int] = []

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    async def probe() -> ProbeResult:
        ok = next(results)
        return ProbeResult(ok, "exit 0" if ok else "exit 1")

    plan = HealthPlan(("x",), interval=30, timeout=1, retries=3)
    tracker = await watch_health(plan, probe, seen.append, sleep=sleep, clock=lambda: now[0])
    assert seen == [STARTING, HEALTHY, UNHEALTHY]
    assert now[0] == 120  # four probes, one interval each, the first after one interval
    assert tracker.failures == 3


async def test_probes_come_every_start_interval_while_starting_in_the_start_period() -> None:
    now = [0.0]
    results = iter([False, False, True, False, False, False])
    probed_at: list[float] = []

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    async def probe() -> ProbeResult:
        probed_at.append(now[0])
        ok = next(results)
        return ProbeResult(ok, "exit 0" if ok else "exit 1")

    plan = HealthPlan(("x",), interval=30, timeout=1, retries=3, start_period=10,
                      start_interval=2)
    await watch_health(plan, probe, lambda _: None, sleep=sleep, clock=lambda: now[0])
    # Every 2 s until the first success (at 6 s, in the start period); then every 30 s.
    assert probed_at == [2, 4, 6, 36, 66, 96]


# ================================================================ real tasks


@pytest.fixture(scope="module")
def health_ref(registry: RegistryServer) -> str:
    """busybox whose image config carries a health check (the file /healthy must exist)."""
    return build_busybox_image(registry.addr, name="healthy", config={
        "Cmd": ["sleep", "1000"], "Env": [PATH_ENV],
        "Healthcheck": {"Test": ["CMD", "test", "-e", "/healthy"],
                        "Interval": 100_000_000, "Timeout": 2_000_000_000, "Retries": 2}})


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[RuncSettings]:
    require_containers()
    # Under /run and short: conmon's attach socket path must fit a sockaddr_un.
    state_dir = Path(tempfile.mkdtemp(prefix="swwk-", dir="/run"))
    yield RuncSettings(state_dir=state_dir, cgroup_parent=f"swwk-{uuid.uuid4().hex[:8]}")
    shutil.rmtree(state_dir, ignore_errors=True)


class Reports:
    """Every status the worker reported, per task."""

    def __init__(self) -> None:
        self.by_task: dict[str, list[pb.TaskStatus]] = defaultdict(list)

    def __call__(self, task_id: str, status: pb.TaskStatus) -> None:
        self.by_task[task_id].append(status)

    def states(self, task_id: str) -> list[int]:
        return [status.state for status in self.by_task[task_id]]

    def last(self, task_id: str) -> pb.TaskStatus:
        return self.by_task[task_id][-1] if self.by_task[task_id] else pb.TaskStatus()

    async def reach(self, task_id: str, state: int, timeout: float = 20) -> pb.TaskStatus:
        await eventually(lambda: self.last(task_id).state >= state, timeout,
                         f"task {task_id} at {pb.TaskState.Name(state)}")  # type: ignore[arg-type]
        return self.last(task_id)


class Harness:
    def __init__(self, settings: RuncSettings, images_dir: Path) -> None:
        self.settings = settings
        self.images_dir = images_dir
        self.workers: list[Worker] = []
        self.reports = Reports()

    async def worker(self) -> Worker:
        """A new worker over the same state (what an agent restart makes)."""
        # A short grace for containers of unassigned tasks: sleep ignores SIGTERM.
        worker = Worker(RuncRuntime(self.settings), ImageStore(self.images_dir),
                        report=self.reports, settings=WorkerSettings(removal_grace=0.3))
        await worker.start()
        self.workers.append(worker)
        return worker

    async def close(self) -> None:
        for worker in self.workers:
            await worker.close()
            assert isinstance(worker.images, ImageStore)
            await worker.images.close()


@pytest.fixture
async def harness(settings: RuncSettings, tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(settings, tmp_path / "images")
    try:
        yield harness
    finally:
        await harness.close()
        extra = await teardown(settings)
        assert not extra, f"the worker left things behind: {extra}"


def make_task(image: str, *command: str, desired: int = pb.RUNNING, **container: object
              ) -> pb.Task:
    task = pb.Task(id=uuid.uuid4().hex[:25], service_id="svc", service_name="web",
                   desired_state=desired, status=pb.TaskStatus(state=pb.ASSIGNED))  # type: ignore[arg-type]
    task.spec.container.CopyFrom(pb.ContainerSpec(image=image, command=list(command),
                                                  **container))  # type: ignore[arg-type]
    task.spec.container.stop_grace_period.FromMilliseconds(300)
    return task


def complete(*tasks: pb.Task) -> dpb.Assignments:
    return dpb.Assignments(type=dpb.Assignments.COMPLETE, tasks=tasks)


def changed(*tasks: pb.Task, removed: tuple[str, ...] = ()) -> dpb.Assignments:
    return dpb.Assignments(type=dpb.Assignments.INCREMENTAL, tasks=tasks, removed=removed)


def with_desired(task: pb.Task, desired: int, status: pb.TaskStatus | None = None) -> pb.Task:
    copy = pb.Task()
    copy.CopyFrom(task)
    copy.desired_state = desired  # type: ignore[assignment]
    if status is not None:
        copy.status.CopyFrom(status)
    return copy


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


async def test_task_runs_stops_and_is_removed(harness: Harness, busybox_ref: str) -> None:
    worker = await harness.worker()
    task = make_task(busybox_ref, "sleep", "1000")
    await worker.apply(complete(task))
    status = await harness.reports.reach(task.id, pb.RUNNING)
    assert status.health == pb.TaskStatus.NO_HEALTHCHECK
    assert harness.reports.states(task.id) == [
        pb.ACCEPTED, pb.PREPARING, pb.READY, pb.STARTING, pb.RUNNING]
    assert status.container.container_id == task.id
    pid = status.container.pid
    assert pid > 0
    assert alive(pid)
    assert (await worker.runtime.list())[task.id].pid == pid

    started = time.monotonic()
    await worker.apply(changed(with_desired(task, pb.SHUTDOWN)))
    status = await harness.reports.reach(task.id, pb.SHUTDOWN)
    # sleep as PID 1 ignores SIGTERM: killed after the 0.3 s grace period.
    assert time.monotonic() - started >= 0.3
    assert (status.state, status.container.exit_code) == (pb.SHUTDOWN, 128 + signal.SIGKILL)
    assert not alive(pid)
    assert (await worker.runtime.list())[task.id].status == "stopped"  # kept until removed

    await worker.apply(changed(removed=(task.id,)))
    await worker.wait_removals()
    assert isinstance(worker.runtime, RuncRuntime)
    assert leftovers(worker.runtime, task.id) == []
    assert task.id not in worker.statuses()


async def test_exit_codes_complete_and_failed(harness: Harness, busybox_ref: str) -> None:
    worker = await harness.worker()
    fails = make_task(busybox_ref, "sh", "-c", "exit 3")
    done = make_task(busybox_ref, "true")
    await worker.apply(complete(fails, done))
    failed = await harness.reports.reach(fails.id, pb.COMPLETE)
    assert (failed.state, failed.container.exit_code, failed.err) == (
        pb.FAILED, 3, "task: non-zero exit (3)")
    finished = await harness.reports.reach(done.id, pb.COMPLETE)
    assert (finished.state, finished.container.exit_code) == (pb.COMPLETE, 0)
    # Terminal: a later shutdown order changes nothing.
    await worker.apply(changed(with_desired(fails, pb.SHUTDOWN)))
    await asyncio.sleep(0.1)
    assert harness.reports.last(fails.id).state == pb.FAILED


async def test_bad_input_is_rejected_and_the_rest_runs(harness: Harness, busybox_ref: str,
                                                       registry: RegistryServer) -> None:
    worker = await harness.worker()
    missing = make_task(f"{registry.addr}/web:2", "sleep", "1000")
    nope = make_task(busybox_ref, "/bin/nope")
    user = make_task(busybox_ref, "sleep", "1000", user="nobody-here")
    good = make_task(busybox_ref, "sleep", "1000")
    await worker.apply(complete(missing, nope, user, good))
    for task, err in ((missing, f"image not found: {registry.addr}/web:2"),
                      (nope, 'exec: "/bin/nope": not found'),
                      (user, "unable to find user nobody-here: no matching entries in "
                             "passwd file")):
        status = await harness.reports.reach(task.id, pb.REJECTED)
        assert (status.state, status.err) == (pb.REJECTED, err)
        assert isinstance(worker.runtime, RuncRuntime)
        assert leftovers(worker.runtime, task.id) == []  # nothing half-made stays
    await harness.reports.reach(good.id, pb.RUNNING)


async def test_one_pull_for_20_concurrent_tasks(harness: Harness, registry: RegistryServer) -> None:
    ref = build_busybox_image(registry.addr, name="many")
    worker = await harness.worker()
    tasks = [make_task(ref, "sleep", "1000") for _ in range(20)]
    await worker.apply(complete(*tasks))
    for task in tasks:
        await harness.reports.reach(task.id, pb.RUNNING)
        assert harness.reports.last(task.id).state == pb.RUNNING
    assert isinstance(worker.images, ImageStore)
    assert worker.images.pull_count == 1


async def test_shutdown_while_preparing(harness: Harness, registry: RegistryServer) -> None:
    ref = build_busybox_image(registry.addr, name="early")
    worker = await harness.worker()
    task = make_task(ref, "sleep", "1000")
    await worker.apply(complete(task))
    await harness.reports.reach(task.id, pb.PREPARING)
    await worker.apply(changed(with_desired(task, pb.SHUTDOWN)))
    status = await harness.reports.reach(task.id, pb.SHUTDOWN)
    assert status.state == pb.SHUTDOWN
    assert pb.RUNNING not in harness.reports.states(task.id)
    states = await worker.runtime.list()
    assert task.id not in states or states[task.id].status in ("stopped", "unknown")


async def test_failing_health_check_fails_the_task(harness: Harness, busybox_ref: str) -> None:
    worker = await harness.worker()
    check = pb.HealthConfig(test=["CMD-SHELL", "test -e /tmp/ok"], interval=_seconds(0.1),
                            timeout=_seconds(2), retries=2)
    task = make_task(busybox_ref, "sh", "-c", "touch /tmp/ok; sleep 1000", healthcheck=check)
    await worker.apply(complete(task))
    await eventually(lambda: harness.reports.last(task.id).health == HEALTHY, 20, "healthy")
    pid = harness.reports.last(task.id).container.pid
    assert await worker.runtime.exec(task.id, ["rm", "/tmp/ok"], 5) == 0
    status = await harness.reports.reach(task.id, pb.COMPLETE)
    assert (status.state, status.health) == (pb.FAILED, UNHEALTHY)
    assert status.err.startswith("unhealthy container: 2 consecutive failed health checks")
    assert not alive(pid)  # stopped, so that the replacement is the only one running
    healths = [s.health for s in harness.reports.by_task[task.id] if s.state == pb.RUNNING]
    assert healths == [STARTING, HEALTHY, UNHEALTHY]  # RUNNING is reported as starting


async def test_health_check_from_the_image(harness: Harness, health_ref: str) -> None:
    worker = await harness.worker()
    task = make_task(health_ref)  # the image's command and health check
    await worker.apply(complete(task))
    status = await harness.reports.reach(task.id, pb.COMPLETE)
    assert (status.state, status.health) == (pb.FAILED, UNHEALTHY)
    assert "(last: exit 1)" in status.err
    # A check only the image carries is reported too: RUNNING is "starting" until a
    # probe decides (the controller's rolling updates wait on it; they cannot see it).
    healths = [s.health for s in harness.reports.by_task[task.id] if s.state == pb.RUNNING]
    assert healths[0] == STARTING
    assert pb.TaskStatus.NO_HEALTHCHECK not in healths


async def test_restart_adopts_running_containers_and_reads_exits(
        harness: Harness, busybox_ref: str) -> None:
    first = await harness.worker()
    keeps = make_task(busybox_ref, "sleep", "1000")
    dies = make_task(busybox_ref, "sleep", "1000")
    dropped = make_task(busybox_ref, "sleep", "1000")
    await first.apply(complete(keeps, dies, dropped))
    statuses = {task.id: await harness.reports.reach(task.id, pb.RUNNING)
                for task in (keeps, dies, dropped)}
    await first.close()  # the agent stops: containers stay
    assert all(alive(status.container.pid) for status in statuses.values())

    # While no agent runs, one container is killed and conmon records its exit.
    os.kill(statuses[dies.id].container.pid, signal.SIGKILL)
    exit_file = first.runtime.settings.exits_dir / dies.id  # type: ignore[attr-defined]
    await eventually(exit_file.exists, 10, "conmon's exit file")

    second = await harness.worker()
    harness.reports.by_task.clear()
    # The controller's complete set, with the states it last saw; `dropped`
    # was reassigned elsewhere meanwhile.
    await second.apply(complete(*(with_desired(task, pb.RUNNING, statuses[task.id])
                                  for task in (keeps, dies))))
    failed = await harness.reports.reach(dies.id, pb.FAILED)
    assert (failed.state, failed.container.exit_code) == (pb.FAILED, 128 + signal.SIGKILL)
    await second.wait_removals()
    assert isinstance(second.runtime, RuncRuntime)
    assert leftovers(second.runtime, dropped.id) == []
    assert not alive(statuses[dropped.id].container.pid)
    # Adopted without a restart: same process, no new reports, and it is watched.
    pid = statuses[keeps.id].container.pid
    assert alive(pid)
    assert harness.reports.states(keeps.id) == []
    assert (await second.runtime.list())[keeps.id].pid == pid
    os.kill(pid, signal.SIGKILL)
    exited = await harness.reports.reach(keeps.id, pb.FAILED)
    assert exited.container.exit_code == 128 + signal.SIGKILL


async def test_an_oom_kill_fails_the_task_and_says_so(harness: Harness, busybox_ref: str) -> None:
    worker = await harness.worker()
    task = make_task(busybox_ref, "sh", "-c", "a=xxxxxxxx; while true; do a=$a$a; done")
    task.spec.resources.limits.memory_bytes = 16 * 1024 * 1024
    await worker.apply(complete(task))
    status = await harness.reports.reach(task.id, pb.COMPLETE)
    assert (status.state, status.container.exit_code) == (pb.FAILED, 128 + signal.SIGKILL)
    assert "OOM killer" in status.err


async def test_a_prepared_container_is_started_after_a_restart(
        harness: Harness, busybox_ref: str) -> None:
    first = await harness.worker()
    task = make_task(busybox_ref, "sleep", "1000", desired=pb.READY)  # prepare, don't start
    await first.apply(complete(task))
    ready = await harness.reports.reach(task.id, pb.READY)
    await asyncio.sleep(0.1)
    assert harness.reports.last(task.id).state == pb.READY
    await first.close()
    assert (await first.runtime.list())[task.id].status == "created"

    second = await harness.worker()
    await second.apply(complete(with_desired(task, pb.RUNNING, ready)))
    running = await harness.reports.reach(task.id, pb.RUNNING)
    assert alive(running.container.pid)
    # Adopted, not made again: the states after READY only.
    assert harness.reports.states(task.id)[-2:] == [pb.STARTING, pb.RUNNING]
    assert harness.reports.states(task.id).count(pb.PREPARING) == 1


async def test_a_complete_set_removes_what_it_leaves_out(harness: Harness,
                                                         busybox_ref: str) -> None:
    worker = await harness.worker()
    kept, dropped = (make_task(busybox_ref, "sleep", "1000") for _ in range(2))
    await worker.apply(complete(kept, dropped))
    pid = (await harness.reports.reach(dropped.id, pb.RUNNING)).container.pid
    await harness.reports.reach(kept.id, pb.RUNNING)
    # A reconnect's complete set without `dropped` (reassigned meanwhile).
    await worker.apply(complete(kept))
    await worker.wait_removals()
    assert not alive(pid)
    assert isinstance(worker.runtime, RuncRuntime)
    assert leftovers(worker.runtime, dropped.id) == []
    assert set(worker.statuses()) == {kept.id}
    assert harness.reports.last(kept.id).state == pb.RUNNING


async def test_more_bad_input_is_rejected(harness: Harness, busybox_ref: str,
                                          registry: RegistryServer) -> None:
    worker = await harness.worker()
    low_memory = make_task(busybox_ref, "sleep", "1000")
    low_memory.spec.resources.limits.memory_bytes = 4 * 1024 * 1024
    bind = make_task(busybox_ref, "sleep", "1000",
                     mounts=[pb.Mount(type=pb.Mount.BIND, source="/etc", target="/host")])
    down = make_task(f"127.0.0.1:{free_port()}/web:1", "sleep", "1000")
    await worker.apply(complete(low_memory, bind, down))
    for task, err in ((low_memory, "memory limit 4"),
                      (bind, 'bind mount source "/etc" is not under an allowed root'),
                      (down, "registry 127.0.0.1:")):
        status = await harness.reports.reach(task.id, pb.REJECTED, timeout=60)
        assert status.state == pb.REJECTED
        assert status.err.startswith(err), status.err
        assert isinstance(worker.runtime, RuncRuntime)
        assert leftovers(worker.runtime, task.id) == []
    assert "unreachable" in harness.reports.last(down.id).err


async def test_adopted_running_container_is_reported_running_if_never_said(
        harness: Harness, busybox_ref: str) -> None:
    first = await harness.worker()
    task = make_task(busybox_ref, "sleep", "1000")
    await first.apply(complete(task))
    pid = (await harness.reports.reach(task.id, pb.RUNNING)).container.pid
    await first.close()
    # The controller only heard STARTING: the agent died before the RUNNING report.
    second = await harness.worker()
    harness.reports.by_task.clear()
    await second.apply(complete(with_desired(task, pb.RUNNING,
                                             pb.TaskStatus(state=pb.STARTING))))
    status = await harness.reports.reach(task.id, pb.RUNNING)
    assert (status.state, status.container.pid) == (pb.RUNNING, pid)
    assert harness.reports.states(task.id) == [pb.RUNNING]


async def test_the_image_collector_learns_what_containers_use(harness: Harness,
                                                              busybox_ref: str) -> None:
    worker = await harness.worker()
    removed: list[str] = []
    worker.on_removed = removed.append
    task = make_task(busybox_ref, "sleep", "1000")
    await worker.apply(complete(task))
    await harness.reports.reach(task.id, pb.RUNNING)
    assert isinstance(worker.runtime, RuncRuntime)
    assert isinstance(worker.images, ImageStore)
    image = await worker.images.ensure(busybox_ref)
    assert worker.images_in_use() == {busybox_ref}
    assert worker.runtime.mounted_layers() == [image.layers]
    # Even told of no reference, the mounted layers keep the image.
    assert await worker.images.collect_garbage(
        [], in_use_layers=worker.runtime.mounted_layers(), force=True) == []

    await worker.apply(changed(removed=(task.id,)))
    await worker.wait_removals()
    assert removed == [task.id]
    assert worker.images_in_use() == set()
    assert worker.runtime.mounted_layers() == []
    assert await worker.images.collect_garbage(
        worker.images_in_use(), in_use_layers=worker.runtime.mounted_layers(),
        force=True) == [busybox_ref]
