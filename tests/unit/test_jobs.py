"""The jobs planner (controller/orchestrator/jobs.py): completions counted per
iteration, never more than max_concurrent running, completed tasks never
restarted, failures following the restart policy, global jobs on every
eligible node (new ones too), and scheduled runs (started, skipped when the
previous run is still going, never twice for one fire time)."""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.api.units import timestamp, to_seconds
from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.orchestrator import OrchestratorSettings, ServicePlan, plan_service
from swarm.controller.orchestrator.jobs import job_progress, occupies

NOW = 1_800_000_000.0  # a whole minute (divisible by 60)
SID = "job"
JS = pb.JobStatus


def node(node_id: str) -> pb.Node:
    result = pb.Node(id=node_id)
    result.status.state = pb.NodeStatus.READY
    result.spec.availability = pb.NodeSpec.ACTIVE
    return result


NODES = {n: node(n) for n in ("n1", "n2", "n3")}


def job(completions: int = 6, concurrent: int = 2, *, mode: str = "replicated_job",
        condition: pb.RestartPolicy.Condition.ValueType = pb.RestartPolicy.ON_FAILURE,
        max_attempts: int = 0, schedule: str = "", iteration: int = 1) -> pb.Service:
    service = pb.Service(id=SID, spec_version=1)
    service.meta.version = 7
    service.spec.name = "batch"
    if mode == "global_job":
        service.spec.global_job.SetInParent()
    else:
        service.spec.replicated_job.total_completions = completions
        service.spec.replicated_job.max_concurrent = concurrent
    service.spec.task.container.image = "busybox"
    service.spec.task.restart.condition = condition
    service.spec.task.restart.delay.FromSeconds(0)
    service.spec.task.restart.max_attempts = max_attempts
    service.spec.schedule = schedule
    service.job_status.iteration = iteration
    if schedule:
        service.job_status.state = JS.WAITING if iteration == 0 else JS.RUNNING
        service.job_status.last_scheduled.CopyFrom(timestamp(NOW))  # as the API sets it
    return service


class Cluster:
    """The store as the planner sees it, with agents that run what is assigned."""

    def __init__(self, service: pb.Service, nodes: Mapping[str, pb.Node] = NODES) -> None:
        self.service = service
        self.nodes = dict(nodes)
        self.tasks: dict[str, pb.Task] = {}
        self.now = NOW
        self.max_running = 0
        self.created = 0

    def plan(self) -> ServicePlan:
        plan = plan_service(self.service, list(self.tasks.values()), self.nodes, self.now,
                            OrchestratorSettings(), service_id=SID)
        for new in plan.create:
            assert new.id not in self.tasks, "a task ID is made twice"
            placed = pb.Task()
            placed.CopyFrom(new)
            placed.meta.created_at.CopyFrom(timestamp(self.now))
            placed.node_id = placed.node_id or sorted(self.nodes)[self.created % len(self.nodes)]
            self.created += 1
            self.tasks[placed.id] = placed
        for changed in plan.update:
            self.tasks[changed.id] = changed
        for task_id in plan.delete:
            del self.tasks[task_id]
        if plan.service is not None:
            self.service = plan.service
        running = sum(occupies(t, self.nodes) for t in self.tasks.values())
        self.max_running = max(self.max_running, running)
        return plan

    def converge(self) -> None:
        for _ in range(20):
            if self.plan().is_empty():
                return
        raise AssertionError("the plan does not settle")

    def start_all(self) -> None:
        for t in self.tasks.values():
            if t.desired_state == pb.RUNNING and t.status.state < pb.RUNNING:
                t.status.state = pb.RUNNING

    def running(self) -> list[pb.Task]:
        return [t for t in self.tasks.values() if t.status.state == pb.RUNNING]

    def finish(self, t: pb.Task, exit_code: int = 0) -> None:
        t.status.state = pb.COMPLETE if exit_code == 0 else pb.FAILED
        t.status.container.exit_code = exit_code
        if exit_code:  # as the agent words it (agent/steps.exit_outcome)
            t.status.err = f"task: non-zero exit ({exit_code})"
        t.status.timestamp.CopyFrom(timestamp(self.now))

    def complete(self, iteration: int | None = None) -> int:
        return sum(t.status.state == pb.COMPLETE for t in self.tasks.values()
                   if iteration is None or t.job_iteration == iteration)


def test_replicated_job_runs_its_completions_max_concurrent_at_a_time() -> None:
    c = Cluster(job(6, 2))
    c.converge()
    assert len(c.tasks) == 2
    for _ in range(10):
        c.start_all()
        for t in c.running()[:1]:
            c.finish(t)
        c.converge()
    assert c.complete() == 6
    assert c.max_running == 2
    assert c.service.job_status.state == JS.COMPLETE
    assert c.service.job_status.message == "6/6 completed"
    assert all(t.desired_state == pb.COMPLETE for t in c.tasks.values())
    assert sorted(t.slot for t in c.tasks.values()) == [1, 2, 3, 4, 5, 6]


def test_a_completed_task_is_not_restarted_even_with_condition_any() -> None:
    c = Cluster(job(1, 1, condition=pb.RestartPolicy.ANY))
    c.converge()
    c.start_all()
    c.finish(c.running()[0])
    c.converge()
    c.now += 3600
    c.converge()
    assert len(c.tasks) == 1
    assert c.service.job_status.state == JS.COMPLETE


def test_a_failed_task_is_restarted_then_the_job_fails_when_the_policy_gives_up() -> None:
    c = Cluster(job(1, 1, max_attempts=1))
    c.converge()
    c.start_all()
    c.finish(c.running()[0], exit_code=3)
    c.converge()
    assert len(c.tasks) == 2, "one restart"
    c.start_all()
    c.finish(c.running()[0], exit_code=3)
    c.converge()
    assert len(c.tasks) == 2
    assert c.service.job_status.state == JS.FAILED
    assert "non-zero exit (3)" in c.service.job_status.message
    assert c.service.job_status.HasField("finished_at")


def test_condition_none_fails_the_job_at_the_first_failure_and_starts_no_more() -> None:
    c = Cluster(job(4, 2, condition=pb.RestartPolicy.NONE))
    c.converge()
    c.start_all()
    c.finish(c.running()[0], exit_code=1)
    c.converge()
    assert c.service.job_status.state == JS.FAILED
    assert len(c.tasks) == 2, "no new task once the job failed"


def test_a_new_iteration_reruns_the_job_and_old_tasks_do_not_count() -> None:
    c = Cluster(job(2, 2))
    c.converge()
    c.start_all()
    for t in c.running():
        c.finish(t)
    c.converge()
    assert c.service.job_status.state == JS.COMPLETE
    c.service.job_status.iteration = 2  # what `service update --force` does
    c.service.job_status.state = JS.RUNNING
    c.converge()
    assert c.service.job_status.state == JS.RUNNING
    fresh = [t for t in c.tasks.values() if t.job_iteration == 2]
    assert len(fresh) == 2
    assert all(t.desired_state == pb.RUNNING for t in fresh)
    assert c.complete(1) == 2, "the first run's tasks are kept for service ps"


def test_old_iterations_are_stopped_and_reaped_beyond_the_history_limit() -> None:
    c = Cluster(job(1, 1))
    for iteration in range(1, 9):
        c.service.job_status.iteration = iteration
        c.converge()
        c.start_all()
        for t in c.running():
            c.finish(t)
        c.converge()
    kept = sorted({t.job_iteration for t in c.tasks.values()})
    assert kept == [4, 5, 6, 7, 8]


def test_an_iteration_change_stops_running_tasks_and_waits_for_them() -> None:
    c = Cluster(job(2, 2))
    c.converge()
    c.start_all()
    c.service.job_status.iteration = 2
    c.converge()
    old = [t for t in c.tasks.values() if t.job_iteration == 1]
    assert all(t.desired_state == pb.SHUTDOWN for t in old)
    assert not [t for t in c.tasks.values() if t.job_iteration == 2], \
        "max_concurrent counts the old tasks still stopping"
    for t in old:
        t.status.state = pb.SHUTDOWN
    c.converge()
    assert len([t for t in c.tasks.values() if t.job_iteration == 2]) == 2


def test_global_job_completes_once_per_node_and_on_a_node_that_joins() -> None:
    c = Cluster(job(mode="global_job"))
    c.converge()
    assert sorted(t.node_id for t in c.tasks.values()) == ["n1", "n2", "n3"]
    c.start_all()
    for t in c.running():
        c.finish(t)
    c.converge()
    assert c.service.job_status.state == JS.COMPLETE
    c.nodes["n4"] = node("n4")
    c.converge()
    assert c.service.job_status.state == JS.RUNNING
    c.start_all()
    (late,) = c.running()
    assert late.node_id == "n4"
    c.finish(late)
    c.converge()
    assert c.service.job_status.state == JS.COMPLETE
    assert job_progress(c.service, list(c.tasks.values()), c.nodes).completed == 4


def test_replicated_job_task_on_a_lost_node_is_replaced_without_counting_a_restart() -> None:
    c = Cluster(job(1, 1, condition=pb.RestartPolicy.NONE))
    c.converge()
    c.start_all()
    (first,) = c.running()
    c.nodes[first.node_id].status.state = pb.NodeStatus.DOWN
    c.converge()
    assert c.service.job_status.state == JS.RUNNING
    assert len([t for t in c.tasks.values() if t.desired_state == pb.RUNNING]) == 1


# ---------------------------------------------------------------- schedules


def test_a_scheduled_job_waits_for_its_first_fire_time() -> None:
    c = Cluster(job(1, 1, schedule="@every 10s", iteration=0))
    plan = c.plan()
    assert not c.tasks
    assert plan.requeue_after == 10.0
    c.now += 10
    plan = c.plan()
    assert c.service.job_status.iteration == 1
    assert not plan.create, "the run is recorded first; its tasks come from the committed iteration"
    c.converge()
    assert [t.job_iteration for t in c.tasks.values()] == [1]


def test_a_run_due_while_the_last_is_going_is_skipped() -> None:
    c = Cluster(job(1, 1, schedule="@every 10s", iteration=0))
    c.now += 10
    c.converge()
    c.start_all()
    c.now += 10  # still running
    c.converge()
    status = c.service.job_status
    assert status.iteration == 1
    assert status.skipped == 1
    assert to_seconds(status.last_skipped) == NOW + 20
    c.finish(c.running()[0])
    c.converge()
    assert c.service.job_status.iteration == 1, "not due again until the next fire time"
    c.now += 10
    c.converge()
    assert c.service.job_status.iteration == 2


def test_missed_fire_times_collapse_into_one_run() -> None:
    c = Cluster(job(1, 1, schedule="@every 10s", iteration=0))
    c.now += 95
    c.converge()
    assert c.service.job_status.iteration == 1
    assert to_seconds(c.service.job_status.last_scheduled) == NOW + 90


def test_a_cron_schedule_fires_on_the_minute() -> None:
    c = Cluster(job(1, 1, schedule="*/5 * * * *", iteration=0))
    c.now += 299
    c.converge()
    assert c.service.job_status.iteration == 0
    c.now += 1
    c.converge()
    assert c.service.job_status.iteration == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(0, 15)),
                min_size=1, max_size=40),
       st.integers(1, 4), st.integers(1, 7))
def test_any_run_never_exceeds_max_concurrent_and_counts_per_iteration(
        steps: list[tuple[int, int, int]], concurrent: int, completions: int) -> None:
    """Whatever the order of exits (successes, failures), the passes and the
    clock, and the leader changing (a fresh planner each pass: it keeps no
    state): never more than max_concurrent tasks run, no fire time starts two
    runs, and a finished iteration has exactly its completions."""
    c = Cluster(job(completions, concurrent, schedule="@every 10s", iteration=0))
    fired: list[float] = []
    for finish, failing, advance in steps:
        before = c.service.job_status.iteration
        c.converge()
        if c.service.job_status.iteration != before:
            fired.append(to_seconds(c.service.job_status.last_scheduled))
        assert c.max_running <= concurrent
        c.start_all()
        for index, t in enumerate(c.running()[:finish]):
            c.finish(t, exit_code=1 if index < failing else 0)
        c.now += advance
    assert len(fired) == len(set(fired))
    iteration = c.service.job_status.iteration
    current = [t for t in c.tasks.values() if t.job_iteration == iteration]
    done = sorted(t.slot for t in current if t.status.state == pb.COMPLETE)
    assert done == sorted(set(done)), "a slot completes once"
    assert len(done) <= completions
    if c.service.job_status.state == JS.COMPLETE:
        assert len(done) == completions
