"""The orchestrator's pure planners: replicated and global services, the
restart supervisor, node failure, rolling updates and rollbacks, task history,
and the level-triggered contract (planning again on a plan's result gives an
empty plan; arbitrary states converge)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pytest
from google.protobuf.duration_pb2 import Duration
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarm.api.units import timestamp, to_seconds
from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.ids import derived_id
from swarm.controller.orchestrator import OrchestratorSettings, ServicePlan, plan_service
from swarm.controller.orchestrator.tasks import is_live

NOW = 1_000_000.0
SID = "svc"
DEFAULTS = OrchestratorSettings()
READY, DOWN = pb.NodeStatus.READY, pb.NodeStatus.DOWN
ACTIVE, PAUSE, DRAIN = pb.NodeSpec.ACTIVE, pb.NodeSpec.PAUSE, pb.NodeSpec.DRAIN
STOP_FIRST, START_FIRST = pb.UpdateConfig.STOP_FIRST, pb.UpdateConfig.START_FIRST
US = pb.UpdateStatus


# ---------------------------------------------------------------- builders


def node(node_id: str, *, state: pb.NodeStatus.State.ValueType = READY,
         availability: pb.NodeSpec.Availability.ValueType = ACTIVE,
         labels: Mapping[str, str] | None = None) -> pb.Node:
    result = pb.Node(id=node_id)
    result.status.state = state
    result.spec.availability = availability
    result.spec.labels.update(labels or {})
    result.description.hostname = f"host-{node_id}"
    return result


def cluster(*nodes: pb.Node) -> dict[str, pb.Node]:
    return {n.id: n for n in nodes}


HEALTHY = cluster(node("n1"), node("n2"), node("n3"))


def duration(seconds: float) -> Duration:
    result = Duration()
    result.FromNanoseconds(round(seconds * 1e9))
    return result


def service(replicas: int = 3, *, mode: str = "replicated", version: int = 1,
            image: str = "busybox:1", status: pb.UpdateStatus.State.ValueType = US.UNKNOWN,
            condition: pb.RestartPolicy.Condition.ValueType = pb.RestartPolicy.ANY,
            restart_delay: float | None = None, max_attempts: int = 0,
            window: float | None = None, constraints: Sequence[str] = (),
            parallelism: int | None = None, delay: float | None = None,
            monitor: float | None = None,
            failure_action: pb.UpdateConfig.FailureAction.ValueType = pb.UpdateConfig.PAUSE,
            order: pb.UpdateConfig.Order.ValueType = STOP_FIRST,
            max_failure_ratio: float = 0.0) -> pb.Service:
    result = pb.Service(id=SID, spec_version=version)
    result.meta.version = 42
    spec = result.spec
    spec.name = "web"
    if mode == "global":
        getattr(spec, "global").SetInParent()
    else:
        spec.replicated.replicas = replicas
    spec.task.container.image = image
    spec.task.restart.condition = condition
    if restart_delay is not None:
        spec.task.restart.delay.CopyFrom(duration(restart_delay))
    spec.task.restart.max_attempts = max_attempts
    if window is not None:
        spec.task.restart.window.CopyFrom(duration(window))
    spec.task.placement.constraints.extend(constraints)
    if parallelism is not None or delay is not None or monitor is not None \
            or failure_action != pb.UpdateConfig.PAUSE or order != STOP_FIRST \
            or max_failure_ratio:
        spec.update.parallelism = 1 if parallelism is None else parallelism
        if delay is not None:
            spec.update.delay.CopyFrom(duration(delay))
        if monitor is not None:
            spec.update.monitor.CopyFrom(duration(monitor))
        spec.update.failure_action = failure_action
        spec.update.order = order
        spec.update.max_failure_ratio = max_failure_ratio
    result.update_status.state = status
    return result


def updated(svc: pb.Service, image: str, *, rollback: bool = False) -> pb.Service:
    """What the control API does on `service update --image`."""
    result = pb.Service()
    result.CopyFrom(svc)
    result.previous_spec.CopyFrom(svc.spec)
    result.spec.task.container.image = image
    result.spec_version += 1
    result.update_status.Clear()
    result.update_status.state = US.ROLLBACK_STARTED if rollback else US.UPDATING
    return result


def task(svc: pb.Service, slot: int = 1, *, node_id: str = "n1",
         state: pb.TaskState.ValueType = pb.RUNNING,
         desired: pb.TaskState.ValueType = pb.RUNNING, version: int | None = None,
         attempt: int = 0, at: float = NOW - 100, exit_code: int = 0,
         history: Iterable[float] = (), task_id: str | None = None) -> pb.Task:
    """A task as the orchestrator would have made it, at the given state. A task of
    an older version runs the previous spec's template (or, without one, a template
    of its own: the orchestrator adopts old tasks that run the current one)."""
    result = pb.Task(service_id=SID, service_name=svc.spec.name, node_id=node_id,
                     desired_state=desired, attempt=attempt,
                     spec_version=svc.spec_version if version is None else version)
    result.slot = 0 if svc.spec.WhichOneof("mode") == "global" else slot
    result.id = task_id or f"{result.slot or node_id}.{attempt}.v{result.spec_version}"
    result.spec.CopyFrom(svc.spec.task)
    if result.spec_version < svc.spec_version:
        if svc.HasField("previous_spec"):
            result.spec.CopyFrom(svc.previous_spec.task)
        else:
            result.spec.force_update = 1000 + result.spec_version
    result.status.state = state
    result.status.timestamp.CopyFrom(timestamp(at))
    result.status.container.exit_code = exit_code
    result.restart_history.extend(timestamp(entry) for entry in history)
    result.meta.version = 7
    return result


def plan(svc: pb.Service | None, tasks: Sequence[pb.Task],
         nodes: Mapping[str, pb.Node] = HEALTHY, now: float = NOW,
         config: OrchestratorSettings = DEFAULTS) -> ServicePlan:
    return plan_service(svc, tasks, nodes, now, config, service_id=SID)


def apply_plan(tasks: Sequence[pb.Task], result: ServicePlan) -> list[pb.Task]:
    """The tasks after the plan's transaction."""
    updates = {t.id: t for t in result.update}
    deleted = set(result.delete)
    out = [updates.get(t.id, t) for t in tasks if t.id not in deleted]
    known = {t.id for t in out}
    for new in result.create:
        assert new.id not in known, f"duplicate create {new.id}"
        out.append(new)
    return out


def apply(svc: pb.Service, tasks: Sequence[pb.Task],
          result: ServicePlan) -> tuple[pb.Service, list[pb.Task]]:
    return (result.service if result.service is not None else svc), apply_plan(tasks, result)


def agent_step(tasks: Sequence[pb.Task], nodes: Mapping[str, pb.Node],
               now: float) -> tuple[list[pb.Task], bool]:
    """Scheduler and agents in one step: a PENDING live task is placed on the
    first healthy node and runs; a task whose desired state is SHUTDOWN stops."""
    healthy = sorted(n.id for n in nodes.values()
                     if n.status.state == READY and n.spec.availability == ACTIVE)
    out: list[pb.Task] = []
    changed = False
    for t in tasks:
        copy = pb.Task()
        copy.CopyFrom(t)
        node_ok = copy.node_id in nodes and nodes[copy.node_id].status.state != DOWN
        if is_live(copy) and copy.status.state < pb.RUNNING:
            if not copy.node_id and healthy:
                copy.node_id = healthy[0]
            if copy.node_id in healthy:
                copy.status.state = pb.RUNNING
                copy.status.timestamp.CopyFrom(timestamp(now))
        elif not is_live(copy) and pb.ASSIGNED <= copy.status.state < pb.COMPLETE and node_ok:
            copy.status.state = pb.SHUTDOWN
            copy.status.timestamp.CopyFrom(timestamp(now))
        changed |= copy != t
        out.append(copy)
    return out, changed


def settle(svc: pb.Service, tasks: Sequence[pb.Task], nodes: Mapping[str, pb.Node] = HEALTHY,
           now: float = NOW, step: float = 6.0, rounds: int = 60,
           config: OrchestratorSettings = DEFAULTS) -> tuple[pb.Service, list[pb.Task], float]:
    """Plan, apply, let agents act, advance the clock; until nothing changes."""
    current = list(tasks)
    for _ in range(rounds):
        result = plan(svc, current, nodes, now, config)
        assert plan(*apply(svc, current, result), nodes, now, config).is_empty()
        svc, current = apply(svc, current, result)
        current, moved = agent_step(current, nodes, now)
        if result.is_empty() and not moved and result.requeue_after is None:
            return svc, current, now
        now += step
    raise AssertionError("did not converge")


def live(tasks: Iterable[pb.Task]) -> list[pb.Task]:
    return sorted((t for t in tasks if is_live(t)), key=lambda t: (t.slot, t.node_id))


def by_id(tasks: Iterable[pb.Task]) -> dict[str, pb.Task]:
    return {t.id: t for t in tasks}


def running(svc: pb.Service, n: int, version: int | None = None) -> list[pb.Task]:
    return [task(svc, slot, version=version) for slot in range(1, n + 1)]


# ---------------------------------------------------------------- replicated


def test_a_slot_emptied_and_refilled_gets_a_new_task_id() -> None:
    # Scale to 0 (tasks deleted) then back to 1: the service changed in between,
    # so the new task must not take the deleted task's ID (late reports of the old
    # task would land on it).
    before = plan(service(1), []).create[0].id
    rescaled = service(1)
    rescaled.meta.version = 43
    assert plan(rescaled, []).create[0].id != before
    assert plan(service(1), []).create[0].id == before  # same state, same ID: races collide


def test_creates_a_task_per_missing_slot_with_all_fields() -> None:
    svc = service(3, version=4)
    svc.endpoint.ports.add(target_port=80, published_port=30000)
    result = plan(svc, [task(svc, 2)])
    assert [t.slot for t in result.create] == [1, 3]
    new = result.create[0]
    assert new.id == derived_id(SID, "42", "slot", "1", "0")
    assert (new.service_id, new.service_name, new.node_id) == (SID, "web", "")
    assert new.spec == svc.spec.task
    assert new.spec_version == 4
    assert new.endpoint == svc.endpoint
    assert new.desired_state == pb.RUNNING
    assert new.status.state == pb.PENDING
    assert to_seconds(new.status.timestamp) == NOW
    assert new.status.message == "pending task scheduling"
    assert new.attempt == 0
    assert not new.restart_history
    assert not new.HasField("meta")
    assert not result.update
    assert not result.delete
    assert result.service is None


def test_endpoint_spec_is_used_when_the_service_has_no_endpoint_yet() -> None:
    svc = service(1)
    svc.spec.endpoint.ports.add(target_port=80, published_port=8080)
    (new,) = plan(svc, []).create
    assert new.endpoint.spec == svc.spec.endpoint
    assert not new.endpoint.ports


def test_running_service_needs_nothing() -> None:
    svc = service(3)
    result = plan(svc, running(svc, 3))
    assert result.is_empty()
    assert result.requeue_after is None


def test_inputs_are_not_modified() -> None:
    svc = updated(service(3), "busybox:2")
    tasks = [task(svc, 1, version=1), task(svc, 2, state=pb.FAILED, version=2),
             task(svc, 5), task(svc, 3, node_id="gone")]
    before = [t.SerializeToString() for t in tasks], svc.SerializeToString()
    result = plan(svc, tasks)
    assert not result.is_empty()
    assert ([t.SerializeToString() for t in tasks], svc.SerializeToString()) == before
    for changed in result.update:
        assert changed.meta.version == 7  # a copy of the stored version


def test_scale_down_shuts_the_highest_slots_and_deletes_them_once_stopped() -> None:
    svc = service(2)
    tasks = [*running(svc, 4), task(svc, 5, node_id="", state=pb.PENDING)]
    result = plan(svc, tasks)
    assert sorted(t.slot for t in result.update) == [3, 4]
    assert all(t.desired_state == pb.SHUTDOWN for t in result.update)
    assert result.delete == [tasks[4].id]  # never assigned: deleted at once
    svc, tasks = apply(svc, tasks, result)
    tasks, _ = agent_step(tasks, HEALTHY, NOW + 1)
    result = plan(svc, tasks, now=NOW + 1)
    assert sorted(result.delete) == sorted(t.id for t in tasks if t.slot > 2)
    assert not result.create
    assert not result.update


def test_duplicate_live_tasks_keep_the_running_newest() -> None:
    svc = service(1)
    old = task(svc, 1, attempt=0)
    newer = task(svc, 1, attempt=1)
    pending = task(svc, 1, attempt=2, state=pb.ASSIGNED)
    result = plan(svc, [old, newer, pending])
    assert sorted(t.id for t in result.update) == sorted([old.id, pending.id])
    assert not result.create


# ---------------------------------------------------------------- restarts


def test_failed_task_is_restarted_after_the_default_delay() -> None:
    svc = service(1)
    failed = task(svc, 1, state=pb.FAILED, at=NOW - 2, exit_code=1)
    result = plan(svc, [failed])
    (shut,) = result.update
    assert shut.id == failed.id
    assert shut.desired_state == pb.SHUTDOWN
    assert not result.create
    assert result.requeue_after == pytest.approx(3.0)
    svc, tasks = apply(svc, [failed], result)
    assert plan(svc, tasks).is_empty()  # still waiting, nothing to write
    result = plan(svc, tasks, now=NOW + 3)
    (new,) = result.create
    assert new.attempt == 1
    assert new.slot == 1
    assert [to_seconds(t) for t in new.restart_history] == [NOW - 2]
    assert new.id == derived_id(SID, "42", "slot", "1", "1")
    assert result.requeue_after is None


def test_restart_delay_from_the_policy_zero_means_at_once() -> None:
    svc = service(1, restart_delay=0)
    result = plan(svc, [task(svc, 1, state=pb.COMPLETE, at=NOW)])
    assert len(result.create) == 1
    assert len(result.update) == 1


@pytest.mark.parametrize(("condition", "state", "exit_code", "restarts"), [
    (pb.RestartPolicy.ANY, pb.COMPLETE, 0, True),
    (pb.RestartPolicy.NONE, pb.FAILED, 1, False),
    (pb.RestartPolicy.ON_FAILURE, pb.COMPLETE, 0, False),
    (pb.RestartPolicy.ON_FAILURE, pb.COMPLETE, 3, True),
    (pb.RestartPolicy.ON_FAILURE, pb.FAILED, 1, True),
    (pb.RestartPolicy.ON_FAILURE, pb.REJECTED, 0, True),
])
def test_restart_condition(condition: pb.RestartPolicy.Condition.ValueType,
                           state: pb.TaskState.ValueType, exit_code: int,
                           restarts: bool) -> None:
    svc = service(1, condition=condition)
    ended = task(svc, 1, state=state, exit_code=exit_code, at=NOW - 60)
    result = plan(svc, [ended])
    assert [t.desired_state for t in result.update] == [pb.SHUTDOWN]
    assert bool(result.create) == restarts
    # Level-triggered: the decision holds on the next pass.
    svc, tasks = apply(svc, [ended], result)
    assert plan(svc, tasks, now=NOW + 100).is_empty()


def test_max_attempts_stops_restarting_and_stays_stopped() -> None:
    svc = service(1, max_attempts=2, restart_delay=0)
    tasks = [task(svc, 1, state=pb.FAILED, exit_code=1, at=NOW - 50)]
    now = NOW
    for attempt in range(1, 3):
        svc, tasks = apply(svc, tasks, result := plan(svc, tasks, now=now))
        (new,) = result.create
        assert new.attempt == attempt
        assert len(new.restart_history) == attempt
        new_failed = pb.Task()
        new_failed.CopyFrom(new)
        new_failed.status.state = pb.FAILED
        new_failed.status.timestamp.CopyFrom(timestamp(now + 1))
        tasks = [new_failed if t.id == new.id else t for t in tasks]
        now += 2
    result = plan(svc, tasks, now=now)
    assert not result.create  # two restarts done: the slot stays empty
    svc, tasks = apply(svc, tasks, result)
    for later in (now, now + 3600, now + 10**6):
        assert plan(svc, tasks, now=later).is_empty()
    # A new template gives the slot another chance.
    svc = updated(svc, "busybox:2")
    (new,) = plan(svc, tasks, now=now).create
    assert new.spec_version == svc.spec_version
    assert not new.restart_history


def test_restart_window_forgets_old_failures() -> None:
    svc = service(1, max_attempts=1, window=60, restart_delay=0)
    recent = task(svc, 1, state=pb.FAILED, exit_code=1, at=NOW, history=[NOW - 30], attempt=1)
    assert not plan(svc, [recent]).create
    old = task(svc, 1, state=pb.FAILED, exit_code=1, at=NOW, history=[NOW - 90], attempt=1)
    (new,) = plan(svc, [old]).create
    assert [to_seconds(t) for t in new.restart_history] == [NOW]  # trimmed, then this one


# ---------------------------------------------------------------- node failure


@pytest.mark.parametrize("nodes", [
    cluster(node("n1", state=DOWN), node("n2")),
    cluster(node("n1", availability=DRAIN), node("n2")),
    cluster(node("n2")),
], ids=["down", "drained", "removed"])
def test_tasks_on_lost_or_drained_nodes_are_replaced_at_once(
        nodes: dict[str, pb.Node]) -> None:
    svc = service(2)
    tasks = [task(svc, 1, node_id="n1", history=[NOW - 500], attempt=3),
             task(svc, 2, node_id="n2")]
    result = plan(svc, tasks, nodes)
    assert [t.id for t in result.update] == [tasks[0].id]
    assert result.update[0].desired_state == pb.SHUTDOWN
    (new,) = result.create
    assert new.slot == 1
    assert new.attempt == 4
    assert not new.node_id
    assert [to_seconds(t) for t in new.restart_history] == [NOW - 500]  # not a restart
    assert result.requeue_after is None


def test_tasks_are_moved_off_nodes_that_no_longer_meet_their_constraints() -> None:
    svc = service(1, constraints=["node.labels.zone==a"])
    nodes = cluster(node("n1", labels={"zone": "b"}), node("n2", labels={"zone": "a"}))
    result = plan(svc, [task(svc, 1, node_id="n1")], nodes)
    assert len(result.update) == 1
    assert len(result.create) == 1
    assert plan(svc, [task(svc, 1, node_id="n2")], nodes).is_empty()


def test_paused_node_keeps_replicated_tasks() -> None:
    svc = service(1)
    assert plan(svc, [task(svc, 1)], cluster(node("n1", availability=PAUSE))).is_empty()


# ---------------------------------------------------------------- global


def test_global_one_task_per_eligible_node() -> None:
    svc = service(mode="global", constraints=["node.labels.gpu==yes"])
    nodes = cluster(node("a", labels={"gpu": "yes"}), node("b", labels={"gpu": "yes"}),
                    node("c"), node("d", labels={"gpu": "yes"}, state=DOWN),
                    node("e", labels={"gpu": "yes"}, availability=PAUSE),
                    node("f", labels={"gpu": "yes"}, availability=DRAIN))
    result = plan(svc, [task(svc, node_id="b")], nodes)
    (new,) = result.create
    assert (new.node_id, new.slot) == ("a", 0)
    assert new.id == derived_id(SID, "42", "node", "a", "0")
    assert not result.update
    assert not result.delete


def test_global_shuts_down_on_drained_removed_and_ineligible_nodes_not_down_or_paused() -> None:
    svc = service(mode="global", constraints=["node.role==worker"])
    nodes = cluster(node("drained", availability=DRAIN), node("down", state=DOWN),
                    node("paused", availability=PAUSE), node("ok"))
    manager = node("manager")
    manager.spec.role = pb.NodeSpec.MANAGER
    nodes["manager"] = manager
    tasks = [task(svc, node_id=n) for n in ("drained", "down", "paused", "ok", "manager",
                                             "removed")]
    result = plan(svc, tasks, nodes)
    assert sorted(t.node_id for t in result.update) == ["drained", "manager"]
    assert result.delete == [by_id(tasks)["removed.0.v1"].id]  # node gone: delete
    assert not result.create
    # Once the agents stop them, they are deleted and not replaced.
    svc, tasks = apply(svc, tasks, result)
    tasks, _ = agent_step(tasks, nodes, NOW + 1)
    result = plan(svc, tasks, nodes, now=NOW + 1)
    assert sorted(result.delete) == ["drained.0.v1", "manager.0.v1"]
    assert not result.create
    assert not result.update


def test_global_paused_node_creates_nothing_but_restarts_nothing_either() -> None:
    svc = service(mode="global", restart_delay=0)
    nodes = cluster(node("p", availability=PAUSE))
    result = plan(svc, [task(svc, node_id="p", state=pb.FAILED, exit_code=1)], nodes)
    assert [t.desired_state for t in result.update] == [pb.SHUTDOWN]
    assert not result.create


def test_global_restart_per_node() -> None:
    svc = service(mode="global")
    nodes = cluster(node("a"))
    failed = task(svc, node_id="a", state=pb.FAILED, exit_code=1, at=NOW - 10)
    (new,) = plan(svc, [failed], nodes).create
    assert (new.node_id, new.attempt) == ("a", 1)
    assert new.id == derived_id(SID, "42", "node", "a", "1")


def test_global_node_coming_back_gets_its_task_again() -> None:
    svc = service(mode="global", restart_delay=0)
    orphaned = task(svc, node_id="a", state=pb.ORPHANED)
    assert plan(svc, [task(svc, node_id="a")], cluster(node("a", state=DOWN))).is_empty()
    result = plan(svc, [orphaned], cluster(node("a", state=DOWN)))
    assert [t.desired_state for t in result.update] == [pb.SHUTDOWN]
    assert not result.create
    svc, tasks = apply(svc, [orphaned], result)
    (new,) = plan(svc, tasks, cluster(node("a"))).create
    assert (new.node_id, new.attempt) == ("a", 1)


def test_global_new_node_gets_a_task() -> None:
    svc = service(mode="global")
    svc, final, _ = settle(svc, [task(svc, node_id="a")], cluster(node("a"), node("b")))
    assert [t.node_id for t in live(final)] == ["a", "b"]


# ---------------------------------------------------------------- history


def test_history_keeps_the_newest_tasks_per_slot() -> None:
    svc = service(1)
    old = [task(svc, 1, attempt=a, state=pb.FAILED, desired=pb.SHUTDOWN) for a in range(6)]
    current = task(svc, 1, attempt=6)
    result = plan(svc, [*old, current], config=OrchestratorSettings(task_history_limit=3))
    assert sorted(result.delete) == sorted(t.id for t in old[:4])


def test_history_does_not_delete_tasks_still_stopping() -> None:
    svc = service(1)
    stopping = [task(svc, 1, attempt=a, state=pb.RUNNING, desired=pb.SHUTDOWN)
                for a in range(3)]
    on_down_node = task(svc, 1, attempt=3, node_id="gone", desired=pb.SHUTDOWN)
    result = plan(svc, [*stopping, on_down_node, task(svc, 1, attempt=4)],
                  config=OrchestratorSettings(task_history_limit=1))
    assert result.delete == [on_down_node.id]


def test_history_keeps_the_evidence_of_a_slot_that_gave_up() -> None:
    svc = service(1, condition=pb.RestartPolicy.NONE)
    tasks = [task(svc, 1, attempt=a, state=pb.FAILED, desired=pb.SHUTDOWN) for a in range(3)]
    result = plan(svc, tasks, config=OrchestratorSettings(task_history_limit=1))
    assert sorted(result.delete) == sorted(t.id for t in tasks[:2])
    assert not result.create


def test_removed_service_shuts_down_then_deletes_everything() -> None:
    svc = service(4)
    tasks = [task(svc, 1), task(svc, 2, state=pb.PENDING, node_id=""),
             task(svc, 3, state=pb.FAILED, desired=pb.SHUTDOWN), task(svc, 4, node_id="gone")]
    result = plan(None, tasks)
    assert [t.id for t in result.update] == [tasks[0].id]
    assert result.update[0].desired_state == pb.SHUTDOWN
    assert sorted(result.delete) == sorted(t.id for t in tasks[1:])
    tasks = apply_plan(tasks, result)
    assert plan(None, tasks).is_empty()  # still running on n1
    tasks, _ = agent_step(tasks, HEALTHY, NOW)
    assert plan(None, tasks).delete == [tasks[0].id]


def test_tasks_outside_the_slots_are_removed() -> None:
    svc = service(1)
    stray = task(svc, 0, state=pb.COMPLETE)
    result = plan(svc, [task(svc, 1), stray])
    assert result.delete == [stray.id]


# ---------------------------------------------------------------- rolling update


def versions(tasks: Iterable[pb.Task]) -> list[int]:
    return [t.spec_version for t in live(tasks)]


def test_stop_first_update_one_slot_at_a_time() -> None:
    svc = updated(service(3, monitor=0), "busybox:2")
    tasks = running(svc, 3, version=1)
    result = plan(svc, tasks)
    (shut,) = result.update
    assert shut.slot == 1
    assert shut.desired_state == pb.SHUTDOWN
    assert not result.create
    svc, tasks = apply(svc, tasks, result)
    assert plan(svc, tasks).is_empty()  # slot 1 is still stopping
    tasks, _ = agent_step(tasks, HEALTHY, NOW + 1)
    result = plan(svc, tasks, now=NOW + 1)
    (new,) = result.create
    assert (new.slot, new.spec_version, new.attempt) == (1, 2, 1)
    assert new.spec.container.image == "busybox:2"
    assert not result.update
    svc, tasks = apply(svc, tasks, result)
    assert plan(svc, tasks, now=NOW + 1).is_empty()  # slot 1 not running yet
    tasks, _ = agent_step(tasks, HEALTHY, NOW + 2)
    result = plan(svc, tasks, now=NOW + 2)
    assert [t.slot for t in result.update] == [2]
    svc, final, _ = settle(svc, apply_plan(tasks, result), now=NOW + 2)
    assert versions(final) == [2, 2, 2]
    assert final
    assert all(t.spec.container.image == "busybox:2" for t in live(final))
    assert svc.update_status.state == US.COMPLETED
    assert svc.update_status.message == "update completed"
    assert svc.meta.version == 42


def test_start_first_update_starts_the_new_task_before_stopping_the_old() -> None:
    svc = updated(service(2, order=START_FIRST, monitor=0), "busybox:2")
    tasks = running(svc, 2, version=1)
    result = plan(svc, tasks)
    (new,) = result.create
    assert new.slot == 1
    assert not result.update
    svc, tasks = apply(svc, tasks, result)
    assert plan(svc, tasks).is_empty()
    tasks, _ = agent_step(tasks, HEALTHY, NOW + 1)
    result = plan(svc, tasks, now=NOW + 1)
    shut = [t for t in result.update if t.desired_state == pb.SHUTDOWN]
    assert [(t.slot, t.spec_version) for t in shut] == [(1, 1)]
    assert [t.slot for t in result.create] == [2]  # the next slot starts at once


@pytest.mark.parametrize(("parallelism", "in_flight"), [(2, 2), (0, 5)])
def test_parallelism(parallelism: int, in_flight: int) -> None:
    svc = updated(service(5, parallelism=parallelism), "busybox:2")
    result = plan(svc, running(svc, 5, version=1))
    assert len(result.update) == in_flight


def test_update_delay_between_slots() -> None:
    svc = updated(service(2, delay=30, monitor=0), "busybox:2")
    tasks = [task(svc, 1, version=2, at=NOW - 10), task(svc, 2, version=1)]
    result = plan(svc, tasks)
    assert result.is_empty()
    assert result.requeue_after == pytest.approx(20)
    assert [t.slot for t in plan(svc, tasks, now=NOW + 20).update] == [2]


def test_pending_old_task_is_replaced_at_once() -> None:
    svc = updated(service(1), "busybox:2")
    pending = task(svc, 1, version=1, state=pb.PENDING, node_id="")
    result = plan(svc, [pending])
    assert result.delete == [pending.id]
    assert len(result.create) == 1
    assert not result.update


def test_update_completes_after_the_monitor_period() -> None:
    svc = updated(service(1, monitor=10), "busybox:2")
    tasks = [task(svc, 1, version=2, at=NOW - 4), task(svc, 1, version=1, attempt=0,
                                                      state=pb.SHUTDOWN, desired=pb.SHUTDOWN)]
    tasks[0].attempt = 1
    result = plan(svc, tasks)
    assert result.is_empty()
    assert result.requeue_after == pytest.approx(6)
    result = plan(svc, tasks, now=NOW + 6)
    assert result.service is not None
    status = result.service.update_status
    assert status.state == US.COMPLETED
    assert status.message == "update completed"
    assert to_seconds(status.completed_at) == NOW + 6
    assert plan(*apply(svc, tasks, result), now=NOW + 6).is_empty()


def test_update_without_status_is_started() -> None:
    svc = service(2, version=2)
    result = plan(svc, running(svc, 2, version=1))
    assert result.service is not None
    assert result.service.update_status.state == US.UPDATING
    assert len(result.update) == 1


def test_failure_pauses_the_update() -> None:
    svc = updated(service(3, restart_delay=0), "busybox:2")
    tasks = [task(svc, 1, version=2, attempt=1, state=pb.FAILED, exit_code=1,
                  task_id="bad"),
             task(svc, 1, version=1, state=pb.SHUTDOWN, desired=pb.SHUTDOWN),
             *running(svc, 3, version=1)[1:]]
    result = plan(svc, tasks)
    assert result.service is not None
    status = result.service.update_status
    assert status.state == US.PAUSED
    assert status.message == "update paused due to failure or early termination of task bad"
    # The failed task is still restarted; no other slot is updated.
    assert [t.id for t in result.update] == ["bad"]
    (new,) = result.create
    assert (new.slot, new.attempt, new.spec_version) == (1, 2, 2)
    svc, tasks = apply(svc, tasks, result)
    assert plan(svc, tasks).is_empty()
    svc, final, _ = settle(svc, tasks)
    assert versions(final) == [2, 1, 1]  # paused: old tasks left as they are
    assert svc.update_status.state == US.PAUSED


def test_failure_continue_carries_on() -> None:
    svc = updated(service(2, failure_action=pb.UpdateConfig.CONTINUE, monitor=0), "busybox:2")
    tasks = [task(svc, 1, version=2, attempt=1, state=pb.FAILED, exit_code=1, at=NOW),
             task(svc, 2, version=1)]
    result = plan(svc, tasks)
    assert result.service is None
    assert sorted(t.slot for t in result.update) == [1, 2]  # restart supervisor + slot 2
    svc, final, _ = settle(svc, tasks)
    assert versions(final) == [2, 2]
    assert svc.update_status.state == US.COMPLETED


def test_failure_ratio_tolerates_some_failures() -> None:
    svc = updated(service(4, max_failure_ratio=0.5), "busybox:2")
    tasks = [task(svc, 1, version=2, attempt=1, state=pb.FAILED, exit_code=1),
             *running(svc, 4, version=1)[1:]]
    assert plan(svc, tasks).service is None


def test_failure_rolls_back_then_rollback_completes() -> None:
    svc = service(2, failure_action=pb.UpdateConfig.ROLLBACK, monitor=0)
    # A rollback follows the rollback config of the spec it restores.
    svc.spec.rollback.parallelism = 0
    svc.spec.rollback.monitor.CopyFrom(duration(0))
    svc = updated(svc, "busybox:2")
    tasks = [task(svc, 1, version=2, attempt=1, state=pb.FAILED, exit_code=1, task_id="bad"),
             task(svc, 2, version=1)]
    result = plan(svc, tasks)
    rolled = result.service
    assert rolled is not None
    assert rolled.spec.task.container.image == "busybox:1"
    assert rolled.previous_spec.task.container.image == "busybox:2"
    assert rolled.spec_version == 3
    assert rolled.meta.version == 42
    assert rolled.update_status.state == US.ROLLBACK_STARTED
    assert rolled.update_status.message == (
        "update rolled back due to failure or early termination of task bad")
    # Planned against the restored spec in the same pass: slot 1 gets the old
    # image back; slot 2 still runs it, so it is adopted (version 3), not restarted.
    (new,) = result.create
    assert (new.slot, new.spec_version, new.spec.container.image) == (1, 3, "busybox:1")
    assert sorted((t.slot, t.spec_version, t.desired_state) for t in result.update) == [
        (1, 2, pb.SHUTDOWN), (2, 3, pb.RUNNING)]
    svc, final, _ = settle(svc, tasks)
    assert versions(final) == [3, 3]
    assert svc.update_status.state == US.ROLLBACK_COMPLETED
    assert svc.update_status.message == (
        "rollback completed (update rolled back due to failure or early termination of "
        "task bad)")


def test_rollback_failure_pauses_the_rollback() -> None:
    svc = updated(service(2), "busybox:1", rollback=True)
    tasks = [task(svc, 1, version=2, attempt=1, state=pb.FAILED, exit_code=1, task_id="bad"),
             task(svc, 2, version=1)]
    result = plan(svc, tasks)
    assert result.service is not None
    assert result.service.update_status.state == US.ROLLBACK_PAUSED


def test_paused_update_leaves_out_of_date_tasks_alone() -> None:
    svc = updated(service(2), "busybox:2")
    svc.update_status.state = US.PAUSED
    assert plan(svc, running(svc, 2, version=1)).is_empty()


def test_no_update_failure_outside_an_update() -> None:
    svc = service(1, version=2, status=US.COMPLETED, restart_delay=0)
    result = plan(svc, [task(svc, 1, state=pb.FAILED, exit_code=1)])
    assert result.service is None
    assert len(result.create) == 1


def test_out_of_date_dead_slot_is_replaced_without_waiting() -> None:
    svc = updated(service(1, condition=pb.RestartPolicy.NONE), "busybox:2")
    gave_up = task(svc, 1, version=1, state=pb.COMPLETE, desired=pb.SHUTDOWN, at=NOW)
    (new,) = plan(svc, [gave_up]).create
    assert new.spec_version == 2


def test_global_update_skips_paused_nodes() -> None:
    svc = updated(service(mode="global", monitor=0, parallelism=0), "busybox:2")
    nodes = cluster(node("a"), node("p", availability=PAUSE))
    tasks = [task(svc, node_id="a", version=1), task(svc, node_id="p", version=1)]
    svc, final, _ = settle(svc, tasks, nodes)
    assert {t.node_id: t.spec_version for t in live(final)} == {"a": 2, "p": 1}
    assert svc.update_status.state == US.COMPLETED


def test_stop_first_waits_for_every_old_task_of_the_slot() -> None:
    svc = updated(service(1), "busybox:2")
    lost = task(svc, 1, node_id="gone", attempt=1, version=1, task_id="lost")
    current = task(svc, 1, node_id="n1", attempt=0, version=1, task_id="current")
    result = plan(svc, [lost, current])
    assert sorted(t.id for t in result.update) == ["current", "lost"]
    assert not result.create  # "current" is still running: the new task waits
    svc, tasks = apply(svc, [lost, current], result)
    assert plan(svc, tasks).is_empty()
    tasks, _ = agent_step(tasks, HEALTHY, NOW + 1)
    (new,) = plan(svc, tasks, now=NOW + 1).create
    assert (new.attempt, new.spec_version) == (2, 2)


def test_start_first_failure_keeps_the_old_task() -> None:
    svc = updated(service(2, order=START_FIRST), "busybox:2")
    tasks = [task(svc, 1, version=1, task_id="old"),
             task(svc, 1, version=2, attempt=1, state=pb.FAILED, exit_code=1, task_id="new"),
             task(svc, 2, version=1)]
    result = plan(svc, tasks)
    assert [t.id for t in result.update] == ["new"]
    assert not result.create
    assert result.service is not None
    assert result.service.update_status.state == US.PAUSED


def test_start_first_retries_a_slot_after_its_restart_delay() -> None:
    svc = updated(service(1, order=START_FIRST, failure_action=pb.UpdateConfig.CONTINUE),
                  "busybox:2")
    tasks = [task(svc, 1, version=1, task_id="old"),
             task(svc, 1, version=2, attempt=1, state=pb.FAILED, exit_code=1, at=NOW - 1,
                  desired=pb.SHUTDOWN)]
    result = plan(svc, tasks)
    assert result.is_empty()
    assert result.requeue_after == pytest.approx(4)
    (new,) = plan(svc, tasks, now=NOW + 4).create
    assert new.attempt == 2
    assert len(new.restart_history) == 1


def test_parallelism_counts_cooling_slots() -> None:
    svc = updated(service(4, parallelism=2, delay=10, monitor=0), "busybox:2")
    tasks = [task(svc, 1, version=2, attempt=1, at=NOW - 3),  # cooling until NOW + 7
             task(svc, 2, version=2, attempt=1, state=pb.PENDING, node_id=""),  # in flight
             task(svc, 3, version=1), task(svc, 4, version=1)]
    result = plan(svc, tasks)
    assert result.is_empty()
    assert result.requeue_after == pytest.approx(7)
    assert [t.slot for t in plan(svc, tasks, now=NOW + 7).update] == [3]


def test_update_prefers_slots_that_are_not_running() -> None:
    svc = updated(service(3), "busybox:2")
    tasks = [task(svc, 1, version=1), task(svc, 2, version=1),
             task(svc, 3, version=1, state=pb.ASSIGNED)]
    assert [t.slot for t in plan(svc, tasks).update] == [3]


def test_scaling_up_again_does_not_wait_for_the_stopping_task() -> None:
    svc = service(2)
    stopping = task(svc, 2, desired=pb.SHUTDOWN)  # shut by a scale-down, still running
    result = plan(svc, [task(svc, 1), stopping])
    (new,) = result.create
    assert (new.slot, new.attempt) == (2, 1)


def test_history_limit_zero_still_keeps_the_evidence() -> None:
    svc = service(1, condition=pb.RestartPolicy.NONE)
    tasks = [task(svc, 1, attempt=a, state=pb.COMPLETE, desired=pb.SHUTDOWN) for a in range(2)]
    result = plan(svc, tasks, config=OrchestratorSettings(task_history_limit=0))
    assert result.delete == [tasks[0].id]
    assert not result.create


def test_requeue_is_the_earliest_wake_up() -> None:
    svc = service(2, restart_delay=10)
    tasks = [task(svc, 1, state=pb.FAILED, exit_code=1, at=NOW - 2, desired=pb.SHUTDOWN),
             task(svc, 2, state=pb.FAILED, exit_code=1, at=NOW - 7, desired=pb.SHUTDOWN)]
    result = plan(svc, tasks)
    assert result.is_empty()
    assert result.requeue_after == pytest.approx(3)


# ---------------------------------------------------------------- properties

STATES = [pb.NEW, pb.PENDING, pb.ASSIGNED, pb.RUNNING, pb.COMPLETE, pb.SHUTDOWN, pb.FAILED,
          pb.REJECTED, pb.ORPHANED]
STATUSES = [US.UNKNOWN, US.UPDATING, US.PAUSED, US.COMPLETED, US.ROLLBACK_STARTED]


@st.composite
def states(draw: st.DrawFn, *, healthy: bool = False, health: bool = False) -> tuple[
        pb.Service, list[pb.Task], dict[str, pb.Node]]:
    mode = draw(st.sampled_from(["replicated", "replicated", "global"]))
    version = draw(st.integers(1, 3))
    svc = service(
        draw(st.integers(0, 4)), mode=mode, version=version,
        status=draw(st.sampled_from(STATUSES)),
        restart_delay=draw(st.sampled_from([0.0, 5.0])),
        parallelism=draw(st.integers(0, 2)),
        order=draw(st.sampled_from([STOP_FIRST, START_FIRST])),
        failure_action=draw(st.sampled_from(list(pb.UpdateConfig.FailureAction.values()))),
        monitor=draw(st.sampled_from([0.0, 5.0])),
        delay=draw(st.sampled_from([0.0, 7.0])))
    if health and draw(st.booleans()):
        checked(svc)
    if draw(st.booleans()):
        svc.previous_spec.CopyFrom(svc.spec)
        svc.previous_spec.task.container.image = "busybox:0"
    if healthy:
        nodes = cluster(node("n1"), node("n2"))
        node_ids = ["n1", "n2", "gone"]
    else:
        nodes = cluster(node("n1"), node("n2", state=DOWN), node("n3", availability=DRAIN),
                        node("n4", availability=PAUSE))
        node_ids = ["n1", "n2", "n3", "n4", "gone"]
    tasks = []
    for index in range(draw(st.integers(0, 8))):
        state = draw(st.sampled_from(STATES))
        node_id = "" if state < pb.ASSIGNED and mode == "replicated" \
            else draw(st.sampled_from(node_ids))
        t = task(svc, draw(st.integers(0, 5)), node_id=node_id, state=state,
                 desired=draw(st.sampled_from([pb.RUNNING, pb.SHUTDOWN])),
                 version=draw(st.integers(1, version)), attempt=draw(st.integers(0, 3)),
                 at=NOW - draw(st.sampled_from([0, 3, 100])),
                 exit_code=draw(st.integers(0, 1)), task_id=f"t{index}")
        if health and state == pb.RUNNING:
            t.status.health = draw(st.sampled_from(list(pb.TaskStatus.Health.values())))
        if health and draw(st.booleans()):
            t.update_failure = "not healthy within 5s"
        tasks.append(t)
    return svc, tasks, nodes


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(states(health=True), st.booleans())
def test_planning_again_on_the_result_gives_an_empty_plan(
        state: tuple[pb.Service, list[pb.Task], dict[str, pb.Node]], removed: bool) -> None:
    svc, tasks, nodes = state
    result = plan(None if removed else svc, tasks, nodes)
    if removed:
        again = plan(None, apply_plan(tasks, result), nodes)
    else:
        again = plan(*apply(svc, tasks, result), nodes)
    assert again.is_empty(), again
    assert len({t.id for t in result.create}) == len(result.create)
    assert not set(result.delete) & {t.id for t in result.update}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(states(healthy=True))
def test_arbitrary_states_converge_to_one_running_task_per_slot(
        state: tuple[pb.Service, list[pb.Task], dict[str, pb.Node]]) -> None:
    svc, tasks, nodes = state
    svc.spec.task.restart.max_attempts = 0
    svc.spec.task.restart.condition = pb.RestartPolicy.ANY
    for t in tasks:
        t.spec.restart.CopyFrom(svc.spec.task.restart)
    final_svc, final, _ = settle(svc, tasks, nodes)
    if svc.spec.WhichOneof("mode") == "global":
        assert [t.node_id for t in live(final)] == sorted(nodes)
    else:
        replicas = final_svc.spec.replicated.replicas
        assert [t.slot for t in live(final)] == list(range(1, replicas + 1))
    assert all(t.status.state == pb.RUNNING for t in live(final))
    if final_svc.update_status.state not in (US.PAUSED, US.ROLLBACK_PAUSED):
        assert all(t.spec_version == final_svc.spec_version for t in live(final))
        assert final_svc.update_status.state in (US.UNKNOWN, US.COMPLETED,
                                                 US.ROLLBACK_COMPLETED)
    for slot_tasks in _per_slot(final).values():
        assert len(slot_tasks) <= DEFAULTS.task_history_limit


def _per_slot(tasks: Iterable[pb.Task]) -> dict[tuple[int, str], list[pb.Task]]:
    out: dict[tuple[int, str], list[pb.Task]] = {}
    for t in tasks:
        out.setdefault((t.slot, t.node_id if not t.slot else ""), []).append(t)
    return out


# ---------------------------------------------------------------- the health gate

STARTING_, HEALTHY_, UNHEALTHY_ = (pb.TaskStatus.HEALTH_STARTING, pb.TaskStatus.HEALTHY,
                                   pb.TaskStatus.UNHEALTHY)


def checked(svc: pb.Service, *, interval: float = 1, timeout: float = 1, retries: int = 2,
            start_period: float = 0) -> pb.Service:
    """The service with a health check in its task template."""
    health = svc.spec.task.container.healthcheck
    health.test[:] = ["CMD", "true"]
    health.interval.CopyFrom(duration(interval))
    health.timeout.CopyFrom(duration(timeout))
    health.retries = retries
    health.start_period.CopyFrom(duration(start_period))
    return svc


def with_health(t: pb.Task, health: pb.TaskStatus.Health.ValueType,
                at: float | None = None) -> pb.Task:
    t.status.health = health
    if at is not None:
        t.status.timestamp.CopyFrom(timestamp(at))
    return t


def test_start_first_stops_the_old_task_only_once_the_new_one_is_healthy() -> None:
    svc = updated(checked(service(2, order=START_FIRST, monitor=0)), "busybox:2")
    old1, old2 = task(svc, 1, version=1, task_id="old1"), task(svc, 2, version=1)
    new1 = with_health(task(svc, 1, attempt=1, at=NOW - 1, task_id="new1"), STARTING_)
    result = plan(svc, [old1, old2, new1])
    # Running but still starting its health check: the old task stays, and no
    # other slot starts (parallelism 1); planned again when its window ends.
    assert result.is_empty()
    assert result.requeue_after == pytest.approx(4 - 1)  # 2 x (1 s + 1 s), 1 s gone
    healthy = with_health(task(svc, 1, attempt=1, at=NOW, task_id="new1"), HEALTHY_)
    result = plan(svc, [old1, old2, healthy])
    assert [(t.id, t.desired_state) for t in result.update] == [("old1", pb.SHUTDOWN)]
    assert [t.slot for t in result.create] == [2]


def test_stop_first_moves_to_the_next_slot_only_when_the_new_task_is_healthy() -> None:
    svc = updated(checked(service(2, monitor=0)), "busybox:2")
    gone = task(svc, 1, version=1, state=pb.SHUTDOWN, desired=pb.SHUTDOWN)
    starting = with_health(task(svc, 1, attempt=1, at=NOW - 1), STARTING_)
    assert plan(svc, [gone, starting, task(svc, 2, version=1)]).is_empty()
    up = with_health(task(svc, 1, attempt=1, at=NOW), HEALTHY_)
    result = plan(svc, [gone, up, task(svc, 2, version=1)])
    assert [(t.slot, t.spec_version) for t in result.update] == [(2, 1)]


def test_a_new_task_not_healthy_in_time_is_given_up_and_pauses_the_update() -> None:
    # The window: max(monitor 3 s, start period 10 s + 2 x (1 s + 1 s)) = 14 s.
    svc = updated(checked(service(2, monitor=3, restart_delay=2), start_period=10),
                  "busybox:2")
    gone = task(svc, 1, version=1, state=pb.SHUTDOWN, desired=pb.SHUTDOWN)
    starting = with_health(task(svc, 1, attempt=1, at=NOW, task_id="slow"), STARTING_)
    tasks = [gone, starting, task(svc, 2, version=1)]
    early = plan(svc, tasks, now=NOW + 13.5)
    assert early.is_empty()
    assert early.requeue_after == pytest.approx(0.5)
    result = plan(svc, tasks, now=NOW + 14)
    (given_up,) = result.update
    assert (given_up.id, given_up.desired_state) == ("slow", pb.SHUTDOWN)
    assert given_up.update_failure == "not healthy within 14s"
    assert result.service is not None
    assert result.service.update_status.state == US.PAUSED
    assert result.service.update_status.message == (
        "update paused: task web.1 not healthy within 14s (task slow)")
    assert not result.create  # its restart waits until it has stopped
    svc, tasks = apply(svc, tasks, result)
    assert plan(svc, tasks, now=NOW + 14).is_empty()
    # Stopped: a failure for the restart policy (its delay counts from the stop).
    tasks, _ = agent_step(tasks, HEALTHY, NOW + 15)
    result = plan(svc, tasks, now=NOW + 15)
    assert result.is_empty()
    assert result.requeue_after == pytest.approx(2)
    (restarted,) = plan(svc, tasks, now=NOW + 17).create
    assert (restarted.slot, restarted.attempt, len(restarted.restart_history)) == (1, 2, 1)


def test_an_unhealthy_new_task_is_a_failure_at_once() -> None:
    svc = updated(checked(service(2, failure_action=pb.UpdateConfig.ROLLBACK, monitor=0)),
                  "busybox:2")
    old1 = task(svc, 1, version=1, task_id="old1")  # start-first: still running
    svc.spec.update.order = START_FIRST
    bad = with_health(task(svc, 1, attempt=1, task_id="bad"), UNHEALTHY_, at=NOW)
    result = plan(svc, [old1, bad, task(svc, 2, version=1)])
    rolled = result.service
    assert rolled is not None
    assert rolled.update_status.state == US.ROLLBACK_STARTED
    assert rolled.update_status.message == (
        "update rolled back: task web.1 reported unhealthy (task bad)")
    updates = by_id(result.update)
    assert updates["bad"].desired_state == pb.SHUTDOWN
    assert updates["bad"].update_failure == "reported unhealthy"
    # The old tasks run the restored template: adopted (version 3), not restarted.
    assert {(t.id, t.spec_version, t.desired_state) for t in result.update} == {
        ("bad", 2, pb.SHUTDOWN), ("old1", 3, pb.RUNNING), ("2.0.v1", 3, pb.RUNNING)}
    assert not result.create


def test_a_rollback_keeps_the_old_task_that_is_up_over_a_new_one_still_starting() -> None:
    svc = checked(service(2, order=START_FIRST, failure_action=pb.UpdateConfig.ROLLBACK))
    svc = updated(svc, "busybox:2")
    tasks = [task(svc, 1, version=1, task_id="old1"),
             with_health(task(svc, 1, attempt=1, task_id="starting"), STARTING_, at=NOW),
             task(svc, 2, version=1, task_id="old2"),
             task(svc, 2, attempt=1, state=pb.FAILED, exit_code=1, task_id="crashed")]
    result = plan(svc, tasks)
    assert result.service is not None
    # Both old tasks run the restored template and are up: adopted, so the rollback
    # has nothing to restart and completes in the same pass.
    assert result.service.update_status.state == US.ROLLBACK_COMPLETED
    shut = sorted(t.id for t in result.update if t.desired_state == pb.SHUTDOWN)
    assert shut == ["crashed", "starting"]
    assert not result.create


def test_failure_ratio_counts_failures_over_the_slots_to_update() -> None:
    # SwarmKit: failures / slots the update has to update > max_failure_ratio.
    svc = updated(service(4, max_failure_ratio=0.25, parallelism=2, restart_delay=0),
                  "busybox:2")
    one = [task(svc, 1, attempt=1, state=pb.FAILED, exit_code=1, task_id="f1"),
           *running(svc, 4, version=1)[1:]]
    assert plan(svc, one).service is None  # 1/4 is not more than 0.25
    # Restarts failing again are the restart supervisor's: the slot counts once.
    again = [*one, task(svc, 1, attempt=2, state=pb.FAILED, exit_code=1, task_id="f1b")]
    assert plan(svc, again).service is None
    two = [*one, task(svc, 2, attempt=1, state=pb.FAILED, exit_code=1, task_id="f2")]
    result = plan(svc, two)
    assert result.service is not None
    assert result.service.update_status.state == US.PAUSED


def test_service_without_a_health_check_is_up_when_running() -> None:
    svc = updated(service(2, order=START_FIRST, monitor=0), "busybox:2")
    tasks = [task(svc, 1, version=1, task_id="old1"), task(svc, 2, version=1),
             task(svc, 1, attempt=1, at=NOW)]  # NO_HEALTHCHECK, RUNNING
    result = plan(svc, tasks)
    assert [t.id for t in result.update] == ["old1"]
    assert [t.slot for t in result.create] == [2]


# ---------------------------------------------------------------- health-gate properties

GOOD, BAD = "good:1", "bad:1"


def health_agent_step(tasks: Sequence[pb.Task], now: float, bad_mode: str,
                      good_after: float) -> list[pb.Task]:
    """Scheduler and agents for tasks with a health check: a live task placed and
    RUNNING (health starting); the good image becomes healthy `good_after` seconds
    later; the bad one stays starting ("never") or turns unhealthy after 2 s and
    fails ("unhealthy"); a task told to stop stops."""
    out: list[pb.Task] = []
    for t in tasks:
        copy = pb.Task()
        copy.CopyFrom(t)
        age = now - to_seconds(copy.status.timestamp)
        bad = copy.spec.container.image == BAD
        if not is_live(copy):
            if pb.ASSIGNED <= copy.status.state < pb.COMPLETE:
                copy.status.state = pb.SHUTDOWN
                copy.status.health = pb.TaskStatus.NO_HEALTHCHECK
                copy.status.timestamp.CopyFrom(timestamp(now))
        elif copy.status.state < pb.RUNNING:
            copy.node_id = copy.node_id or "n1"
            copy.status.state = pb.RUNNING
            copy.status.health = STARTING_
            copy.status.timestamp.CopyFrom(timestamp(now))
        elif copy.status.state == pb.RUNNING and copy.status.health == UNHEALTHY_:
            copy.status.state = pb.FAILED
            copy.status.timestamp.CopyFrom(timestamp(now))
        elif copy.status.state == pb.RUNNING and copy.status.health == STARTING_:
            if not bad and age >= good_after:
                copy.status.health = HEALTHY_
                copy.status.timestamp.CopyFrom(timestamp(now))
            elif bad and bad_mode == "unhealthy" and age >= 2:
                copy.status.health = UNHEALTHY_
                copy.status.timestamp.CopyFrom(timestamp(now))
        out.append(copy)
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(replicas=st.integers(1, 5), parallelism=st.integers(1, 3),
       order=st.sampled_from([STOP_FIRST, START_FIRST]),
       action=st.sampled_from([pb.UpdateConfig.PAUSE, pb.UpdateConfig.ROLLBACK,
                               pb.UpdateConfig.CONTINUE]),
       bad_mode=st.sampled_from(["never", "unhealthy", "good"]),
       # A good task's health is seen at most one step late: within its 4 s window.
       good_after=st.sampled_from([0.0, 1.0, 1.5]), step=st.sampled_from([0.5, 1.0, 2.5]),
       delay=st.sampled_from([0.0, 2.0]), restart_delay=st.sampled_from([0.0, 3.0]))
def test_an_update_never_has_more_than_parallelism_new_tasks_not_up(
        replicas: int, parallelism: int, order: pb.UpdateConfig.Order.ValueType,
        action: pb.UpdateConfig.FailureAction.ValueType, bad_mode: str, good_after: float,
        step: float, delay: float, restart_delay: float) -> None:
    """Whatever the health of the new version: at every moment of an update (or its
    rollback) at most `parallelism` tasks the update started are started but not up,
    and a failing update starts at most `parallelism` bad tasks before its failure
    action (max_failure_ratio 0: pause or rollback) applies. A good update completes,
    all healthy."""
    base = checked(service(replicas, image=GOOD, order=order, parallelism=parallelism,
                           failure_action=action, monitor=2, delay=delay,
                           restart_delay=restart_delay), interval=1, timeout=1, retries=2)
    base.spec.rollback.CopyFrom(base.spec.update)
    svc = updated(base, GOOD if bad_mode == "good" else BAD)
    now = NOW
    tasks = [with_health(t, HEALTHY_) for t in running(base, replicas, version=1)]
    bad_before_action: set[str] = set()
    # CONTINUE with a bad version restarts its first slots for ever: 60 rounds show it.
    rounds = 60 if action == pb.UpdateConfig.CONTINUE and bad_mode != "good" else 200
    for _ in range(rounds):
        result = plan(svc, tasks, now=now)
        svc, tasks = apply(svc, tasks, result)
        state = svc.update_status.state
        if state == US.UPDATING:
            bad_before_action |= {t.id for t in result.create
                                  if t.spec.container.image == BAD}
        if state in (US.UPDATING, US.ROLLBACK_STARTED):
            limit = svc.spec.rollback.parallelism if state == US.ROLLBACK_STARTED \
                else svc.spec.update.parallelism
            # The update's own tasks; with CONTINUE a failed slot is also restarted by
            # the restart supervisor (its task carries the failure in its history).
            starting = [t for t in tasks if is_live(t) and t.spec_version == svc.spec_version
                        and not (t.status.state == pb.RUNNING and t.status.health == HEALTHY_)
                        and not t.restart_history]
            assert len(starting) <= limit, (state, [(t.slot, t.status.state) for t in starting])
        if state in (US.COMPLETED, US.PAUSED, US.ROLLBACK_COMPLETED) and result.is_empty() \
                and (state != US.PAUSED or bad_before_action):
            break
        tasks = health_agent_step(tasks, now, bad_mode, good_after)
        now += step
    final = svc.update_status.state
    if action != pb.UpdateConfig.CONTINUE:  # CONTINUE has no failure action
        assert len(bad_before_action) <= parallelism
    if bad_mode == "good":
        assert final == US.COMPLETED
        assert all(t.status.health == HEALTHY_ for t in live(tasks))
        assert [t.slot for t in live(tasks)] == list(range(1, replicas + 1))
    elif action == pb.UpdateConfig.ROLLBACK:
        assert final == US.ROLLBACK_COMPLETED
        assert [t.slot for t in live(tasks)] == list(range(1, replicas + 1))
        assert all(t.spec.container.image == GOOD and t.status.health == HEALTHY_
                   for t in live(tasks))
    elif action == pb.UpdateConfig.PAUSE:
        assert final == US.PAUSED


def test_a_tolerated_failure_ratio_moves_on_and_then_pauses() -> None:
    """With max_failure_ratio 0.5 of 4 slots and a version that never gets healthy,
    the update moves on from each failed slot (as SwarmKit's workers do) until a third
    slot fails, then pauses: it neither hangs on the first slot nor starts more than
    one slot at a time (parallelism 1)."""
    base = checked(service(4, image=GOOD, parallelism=1, monitor=1, restart_delay=1,
                           max_failure_ratio=0.5))
    svc = updated(base, BAD)
    tasks = [with_health(t, HEALTHY_) for t in running(base, 4, version=1)]
    now = NOW
    for _ in range(200):
        svc, tasks = apply(svc, tasks, plan(svc, tasks, now=now))
        if svc.update_status.state != US.UPDATING:
            break
        update_started = [t for t in tasks if is_live(t) and t.spec_version == 2
                          and not t.restart_history and t.status.health != HEALTHY_]
        assert len(update_started) <= 1
        tasks = health_agent_step(tasks, now, "never", 0)
        now += 0.5
    assert svc.update_status.state == US.PAUSED
    failed_slots = {t.slot for t in tasks if t.spec_version == 2 and t.update_failure}
    assert failed_slots == {1, 2, 3}
