"""Jobs against a live control plane: a real etcd, the real controller and
simulated nodes (their tasks exit as SWARM_SIM_EXIT says). Bad job specs are
refused by the API with the field named and nothing written; a replicated job
runs its completions, max-concurrent at a time; a scheduled job runs on its
schedule and skips a run while the previous one is still going."""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Callable, Iterator

import grpc
import pytest

from swarm.api import channels
from swarm.api.units import to_seconds
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from tests.etcd_server import EtcdServer
from tests.integration.live import NODES, LiveCluster, assert_one_line_error, ok, swarmctl, table_rows
from tests.integration.test_leadership import leader_of
from tests.processes import Proc, admin_channel, start_controller, start_simulated_agents, worker_token
from tests.waiting import eventually_async

pytestmark = pytest.mark.integration
LEASE_TTL = 2


@pytest.fixture
def stub(live: LiveCluster) -> Iterator[cgrpc.ControlStub]:
    channel = channels.blocking_client_channel(live.addr, live.controller.pki.admin_identity())
    try:
        yield cgrpc.ControlStub(channel)
    finally:
        channel.close()


def job_spec(name: str, completions: int = 6, concurrent: int = 2, *, exit_code: int = 0,
             after: str = "0.3s", schedule: str = "") -> pb.ServiceSpec:
    spec = pb.ServiceSpec(name=name, schedule=schedule)
    spec.replicated_job.total_completions = completions
    spec.replicated_job.max_concurrent = concurrent
    spec.task.container.image = "busybox"
    spec.task.container.env.append(f"SWARM_SIM_EXIT={exit_code}-after:{after}")
    spec.task.restart.condition = pb.RestartPolicy.ON_FAILURE
    spec.task.restart.delay.FromMilliseconds(100)
    return spec


def wait_for(what: str, check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _no_update(spec: pb.ServiceSpec) -> None:
    spec.update.parallelism = 2


def _concurrent_zero(spec: pb.ServiceSpec) -> None:
    spec.replicated_job.max_concurrent = 0


def _bad_cron(spec: pb.ServiceSpec) -> None:
    spec.schedule = "61 * * * *"


def _schedule_on_a_service(spec: pb.ServiceSpec) -> None:
    spec.replicated.replicas = 2
    spec.schedule = "@hourly"


@pytest.mark.parametrize(("mutate", "field"), [
    (_concurrent_zero, "spec.mode.replicated_job.max_concurrent: must be at least 1 (got 0)"),
    (_no_update, "spec.update: a job has no rolling update settings"),
    (_bad_cron, "spec.schedule: '61 * * * *' is not a valid cron expression"),
    (_schedule_on_a_service, "spec.schedule: applies to jobs only"),
])
def test_the_api_refuses_a_bad_job_naming_the_field_and_writes_nothing(
        live: LiveCluster, stub: cgrpc.ControlStub, mutate: Callable[[pb.ServiceSpec], None],
        field: str) -> None:
    spec = job_spec("bad")
    mutate(spec)
    before = live.snapshot()
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateService(cpb.CreateServiceRequest(spec=spec), timeout=10)
    error: grpc.Call = caught.value  # type: ignore[assignment]
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (error.details() or "")
    assert "\n" not in (error.details() or "")
    assert live.snapshot() == before


def test_a_replicated_job_runs_its_completions_max_concurrent_at_a_time(
        live: LiveCluster, stub: cgrpc.ControlStub) -> None:
    created = stub.CreateService(cpb.CreateServiceRequest(spec=job_spec("batch")),
                                 timeout=10).service
    assert created.job_status.iteration == 1
    most = 0

    def done() -> bool:
        nonlocal most
        tasks = live.tasks("batch")
        most = max(most, sum(t.status.state == pb.RUNNING for t in tasks))
        return live.service("batch").job_status.state == pb.JobStatus.COMPLETE

    wait_for("the job to complete", done)
    tasks = live.tasks("batch")
    assert sorted(t.slot for t in tasks if t.status.state == pb.COMPLETE) == [1, 2, 3, 4, 5, 6]
    assert all(t.desired_state == pb.COMPLETE for t in tasks)
    assert 1 <= most <= 2
    time.sleep(1)  # completed tasks stay completed: nothing is restarted
    assert len(live.tasks("batch")) == 6

    # `service update --force` re-runs it (a new iteration); the first run is kept.
    current = live.service("batch")
    spec = pb.ServiceSpec()
    spec.CopyFrom(current.spec)
    spec.task.force_update += 1
    updated = stub.UpdateService(cpb.UpdateServiceRequest(
        service_id=current.id, version=current.meta.version, spec=spec), timeout=10).service
    assert updated.job_status.iteration == 2
    wait_for("the second run", lambda: live.service("batch").job_status.state
             == pb.JobStatus.COMPLETE and live.service("batch").job_status.iteration == 2)
    runs = sorted(t.job_iteration for t in live.tasks("batch"))
    assert runs == [1] * 6 + [2] * 6


def test_a_job_whose_task_fails_for_good_fails_with_the_reason(
        live: LiveCluster, stub: cgrpc.ControlStub) -> None:
    spec = job_spec("doomed", 2, 2, exit_code=3, after="0.1s")
    spec.task.restart.max_attempts = 1
    stub.CreateService(cpb.CreateServiceRequest(spec=spec), timeout=10)
    wait_for("the job to fail",
             lambda: live.service("doomed").job_status.state == pb.JobStatus.FAILED)
    status = live.service("doomed").job_status
    assert "non-zero exit (3)" in status.message
    assert "restart policy gives up" in status.message


def test_a_scheduled_job_runs_on_its_schedule_and_skips_while_a_run_is_going(
        live: LiveCluster, stub: cgrpc.ControlStub) -> None:
    # Runs of 2.5 s every second: each run makes the next one or two be skipped.
    spec = job_spec("tick", 1, 1, after="2.5s", schedule="@every 1s")
    created = stub.CreateService(cpb.CreateServiceRequest(spec=spec), timeout=10).service
    assert created.job_status.state == pb.JobStatus.WAITING
    assert created.job_status.iteration == 0
    most = 0

    def two_runs() -> bool:
        nonlocal most
        most = max(most, sum(t.status.state == pb.RUNNING for t in live.tasks("tick")))
        status = live.service("tick").job_status
        return status.iteration >= 2 and status.state == pb.JobStatus.COMPLETE

    wait_for("two runs", two_runs, timeout=30)
    status = live.service("tick").job_status
    assert status.skipped >= 1
    assert most == 1, "runs never overlap"
    tasks = live.tasks("tick")
    assert len({t.job_iteration for t in tasks}) == len(tasks), "one task per run"


# ---------------------------------------------------------------- leader failover


async def test_scheduled_runs_survive_a_leader_kill_without_running_twice(
        etcd_server: EtcdServer, etcd_prefix: str) -> None:
    """Two controller processes; the leader is SIGKILLed while a job runs every
    2 s. The new leader takes the schedule over from what etcd holds
    (job_status.last_scheduled): runs go on, no fire time starts two runs, no run
    has two tasks, runs never overlap. (Fire times that fall while no leader
    leads collapse into one run, as documented.)"""
    procs = [start_controller(etcd_server.endpoint, etcd_prefix, lease_ttl=LEASE_TTL)
             for _ in range(2)]
    agents: Proc | None = None
    try:
        addrs = {proc.addr: proc for proc in procs}

        async def has_leader() -> bool:
            return await leader_of(etcd_server, etcd_prefix) in addrs

        await eventually_async(has_leader, timeout=10, message="a leader")
        first = await leader_of(etcd_server, etcd_prefix)
        follower = next(a for a in addrs if a != first)
        agents = start_simulated_agents(procs, 2, await worker_token(addrs[first]))
        async with admin_channel(addrs[follower]) as channel:
            control = cgrpc.ControlStub(channel)

            async def nodes_ready() -> bool:
                nodes = (await control.ListNodes(cpb.ListNodesRequest())).nodes
                return len(nodes) == 2 and all(
                    n.status.state == pb.NodeStatus.READY for n in nodes)

            await eventually_async(nodes_ready, timeout=15, message="2 nodes ready")
            await control.CreateService(cpb.CreateServiceRequest(
                spec=job_spec("tick", 1, 1, after="0.3s", schedule="@every 2s")))
            fired: dict[int, float] = {}  # iteration -> its schedule time
            most = 0

            async def observe() -> int:
                nonlocal most
                service = (await control.GetService(cpb.GetRequest(ref="tick"))).service
                status = service.job_status
                if status.iteration:
                    seen = fired.setdefault(status.iteration, to_seconds(status.last_execution))
                    assert seen == to_seconds(status.last_execution)
                tasks = (await control.ListTasks(cpb.ListTasksRequest())).tasks
                most = max(most, sum(t.status.state == pb.RUNNING for t in tasks))
                per_run: dict[int, int] = {}
                for task in tasks:
                    per_run[task.job_iteration] = per_run.get(task.job_iteration, 0) + 1
                assert all(count == 1 for count in per_run.values()), per_run
                return int(status.iteration)

            async def runs(count: int) -> bool:
                return await observe() >= count

            await eventually_async(lambda: runs(2), timeout=15, message="two runs")
            addrs[first].signal(signal.SIGKILL)
            before = await observe()

            async def follower_leads() -> bool:
                await observe()
                return await leader_of(etcd_server, etcd_prefix) == follower

            await eventually_async(follower_leads, timeout=LEASE_TTL + 4,
                                   message="the follower takes over")
            await eventually_async(lambda: runs(before + 2), timeout=15,
                                   message="two runs under the new leader")
            assert most == 1, "runs never overlap"
            starts = sorted(fired.values())
            assert all(b - a >= 1.0 for a, b in itertools.pairwise(starts)), starts
            assert sorted(fired) == list(range(min(fired), max(fired) + 1))
    finally:
        if agents is not None:
            agents.stop()
        for proc in procs:
            proc.stop()


# ---------------------------------------------------------------- swarmctl


JOB = ("--image", "busybox", "--mode", "replicated-job")


@pytest.mark.parametrize(("args", "fragments"), [
    (("--replicas", "4", "--max-concurrent", "0"), ("--max-concurrent", "at least 1")),
    (("--update-parallelism", "2"), ("--update-parallelism", "no rolling update")),
    (("--rollback-order", "start-first"), ("--rollback-order", "no rolling update")),
    (("--schedule", "61 * * * *"), ("--schedule", "not a valid cron expression")),
    (("--schedule", "* * * * * *"), ("--schedule", "has 6 fields")),
])
def test_swarmctl_refuses_bad_job_flags_in_one_line_and_writes_nothing(
        live: LiveCluster, args: tuple[str, ...], fragments: tuple[str, ...]) -> None:
    before = live.snapshot()
    result = swarmctl(live, "service", "create", "bad", *JOB, *args)
    assert_one_line_error(result, *fragments, exit_code=2)
    assert live.snapshot() == before


@pytest.mark.parametrize(("args", "fragments"), [
    (("--schedule", "@hourly"), ("--schedule", "applies to jobs only")),
    (("--max-concurrent", "2"), ("--max-concurrent", "replicated-job only")),
    (("--mode", "global-job", "--replicas", "2"), ("--replicas", "global-job")),
])
def test_job_flags_on_the_wrong_mode_are_refused(
        live: LiveCluster, args: tuple[str, ...], fragments: tuple[str, ...]) -> None:
    before = live.snapshot()
    result = swarmctl(live, "service", "create", "bad", "--image", "busybox", *args)
    assert_one_line_error(result, *fragments, exit_code=2)
    assert live.snapshot() == before


def test_swarmctl_runs_a_job_shows_it_and_reruns_it(live: LiveCluster) -> None:
    result = ok(swarmctl(live, "service", "create", "batch", *JOB, "--replicas", "4",
                         "--max-concurrent", "2", "-e", "SWARM_SIM_EXIT=0-after:0.2s"))
    assert result.stderr.startswith("batch: 4/4 completed (0 running) (converged in ")
    spec = live.service("batch").spec
    assert spec.replicated_job.max_concurrent == 2
    assert spec.task.restart.condition == pb.RestartPolicy.ON_FAILURE, "docker's job default"
    rows = table_rows(ok(swarmctl(live, "service", "ls")).stdout)
    (row,) = [r for r in rows if r[1] == "batch"]
    assert row[2:4] == ["replicated-job", "0/0 (4/4 completed)"]
    ps = ok(swarmctl(live, "service", "ps", "batch")).stdout
    assert ps.count("Complete") == 8
    assert "batch.4 (run 1)" in ps
    inspect = ok(swarmctl(live, "service", "inspect", "batch", "-o", "table")).stdout
    assert "Completions" in inspect
    assert "complete" in inspect

    result = ok(swarmctl(live, "service", "update", "batch", "--force"))
    assert "batch: 4/4 completed" in result.stderr
    assert live.service("batch").job_status.iteration == 2
    ps = ok(swarmctl(live, "service", "ps", "batch")).stdout
    assert ps.index("batch.1 (run 2)") < ps.index("batch.1 (run 1)"), "newest run first"


def test_swarmctl_create_exits_3_when_the_job_fails(live: LiveCluster) -> None:
    result = swarmctl(live, "service", "create", "doomed", *JOB, "--restart-condition", "none",
                      "-e", "SWARM_SIM_EXIT=3-after:0.1s")
    assert result.exit_code == 3, result.output
    (line,) = result.stderr.strip().splitlines()
    assert "doomed: task slot 1 failed: non-zero exit (3)" in line


def test_swarmctl_global_job_and_a_scheduled_job(live: LiveCluster) -> None:
    result = ok(swarmctl(live, "service", "create", "warm", "--image", "busybox", "--mode",
                         "global-job", "-e", "SWARM_SIM_EXIT=0-after:0.1s"))
    assert f"warm: {NODES}/{NODES} completed" in result.stderr
    result = ok(swarmctl(live, "service", "create", "nightly", *JOB, "--schedule",
                         "0 3 * * *"))
    assert "nightly: runs on the schedule '0 3 * * *' (UTC); the first run at " in result.stderr
    assert "03:00:00Z" in result.stderr
    status = live.service("nightly").job_status
    assert status.state == pb.JobStatus.WAITING
    rows = table_rows(ok(swarmctl(live, "service", "ls")).stdout)
    (row,) = [r for r in rows if r[1] == "nightly"]
    assert row[3] == "0/0 (0/1 completed)"
