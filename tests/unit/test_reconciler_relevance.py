"""Which task changes make the orchestrator re-plan a service."""

from __future__ import annotations

from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.orchestrator.reconciler import _relevant


def task(state: pb.TaskState.ValueType, *, node: str = "",
         desired: pb.TaskState.ValueType = pb.RUNNING, version: int = 1) -> pb.Task:
    t = pb.Task(id="t1", service_id="s1", node_id=node, desired_state=desired, spec_version=version)
    t.status.state = state
    return t


def service(update_state: pb.UpdateStatus.State.ValueType = pb.UpdateStatus.COMPLETED,
            version: int = 1) -> pb.Service:
    s = pb.Service(id="s1", spec_version=version)
    s.update_status.state = update_state
    return s


def ready(availability: pb.NodeSpec.Availability.ValueType = pb.NodeSpec.ACTIVE) -> pb.Node:
    n = pb.Node(id="n1")
    n.status.state = pb.NodeStatus.READY
    n.spec.availability = availability
    return n


def test_creation_and_deletion_are_relevant() -> None:
    assert _relevant(None, task(pb.NEW), service(), None)
    assert _relevant(task(pb.RUNNING), None, service(), None)


def test_agent_progress_is_not() -> None:
    assert not _relevant(task(pb.ACCEPTED, node="n1"), task(pb.STARTING, node="n1"),
                         service(), ready())


def test_running_matters_only_while_rolling() -> None:
    before, after = task(pb.STARTING, node="n1"), task(pb.RUNNING, node="n1")
    assert not _relevant(before, after, service(), ready())
    assert _relevant(before, after, service(pb.UpdateStatus.UPDATING), ready())
    assert _relevant(before, after, service(version=2), ready())


def test_ending_is_relevant() -> None:
    assert _relevant(task(pb.RUNNING, node="n1"), task(pb.FAILED, node="n1"), service(), ready())


def test_placement_matters_only_on_an_unusable_node() -> None:
    pending, assigned = task(pb.PENDING), task(pb.ASSIGNED, node="n1")
    assert not _relevant(pending, assigned, service(), ready())
    assert _relevant(pending, assigned, service(), ready(pb.NodeSpec.DRAIN))
    assert _relevant(pending, assigned, service(), None)


def test_health_of_a_running_task_matters_only_while_rolling() -> None:
    starting, healthy = task(pb.RUNNING, node="n1"), task(pb.RUNNING, node="n1")
    starting.status.health = pb.TaskStatus.HEALTH_STARTING
    healthy.status.health = pb.TaskStatus.HEALTHY
    assert not _relevant(starting, healthy, service(), ready())
    assert _relevant(starting, healthy, service(pb.UpdateStatus.UPDATING), ready())
    assert _relevant(starting, healthy, service(pb.UpdateStatus.ROLLBACK_STARTED), ready())
    assert _relevant(starting, healthy, service(version=2), ready())
