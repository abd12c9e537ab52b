"""reconciler.is_echo, _task_writes and coalesce_window: the orchestrator
does not plan again on the echo of its own writes, gathers changes for
as long as its last pass took, and leaves nodes going DOWN to the gate."""

from __future__ import annotations

from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.orchestrator.reconciler import _task_writes, is_echo
from swarm.controller.store import Create, Delete, Op, Update


def written(task_id: str = "t1", state: pb.TaskState.ValueType = pb.NEW,
            stamp: int = 100) -> pb.Task:
    task = pb.Task(id=task_id, service_id="s1", desired_state=pb.RUNNING)
    task.status.state = state
    task.meta.updated_at.seconds = stamp  # what the store stamps before writing
    return task


def as_read_back(task: pb.Task, version: int = 7) -> pb.Task:
    copy = pb.Task()
    copy.CopyFrom(task)
    copy.meta.version = version
    return copy


def test_the_write_read_back_is_an_echo() -> None:
    task = written()
    assert is_echo(task, as_read_back(task))


def test_a_deletion_read_back_is_an_echo() -> None:
    assert is_echo(None, None)


def test_another_writers_version_is_news() -> None:
    task = written()
    theirs = as_read_back(task)
    theirs.meta.updated_at.seconds = 101
    theirs.status.state = pb.RUNNING
    assert not is_echo(task, theirs)
    # The same stamp but another state (cannot come from this write) is news too.
    odd = as_read_back(task)
    odd.status.state = pb.FAILED
    assert not is_echo(task, odd)


def test_a_task_deleted_instead_of_updated_is_news_and_vice_versa() -> None:
    assert not is_echo(written(), None)
    assert not is_echo(None, written())


def test_task_writes_names_each_task_written() -> None:
    created, updated = written("a"), written("b", pb.RUNNING)
    groups: list[list[Op]] = [[Create(created)], [Update(updated)],
                              [Delete("tasks", "c", 3)], [Delete("services", "s9", 2)],
                              [Update(pb.Service(id="s1"))]]
    assert _task_writes(groups) == {"a": created, "b": updated, "c": None}


def test_passes_coalesce_as_long_as_the_last_one_took() -> None:
    from swarm.controller.orchestrator.reconciler import _BATCH_WINDOW, coalesce_window

    assert coalesce_window(0.0) == _BATCH_WINDOW  # small passes: the usual batch window
    assert coalesce_window(0.001) == _BATCH_WINDOW
    assert coalesce_window(2.5) == 2.5  # a 2.5 s pass: changes gather 2.5 s
    assert coalesce_window(60.0) == 5.0  # never longer than the limit
    assert coalesce_window(60.0, limit=1.0) == 1.0


def _node(state: pb.NodeStatus.State.ValueType, hostname: str = "h") -> pb.Node:
    node = pb.Node(id="n1")
    node.status.state = state
    node.description.hostname = hostname
    return node


def test_a_node_going_down_is_left_to_the_disruption_gate() -> None:
    from swarm.controller.orchestrator.reconciler import node_change_replans

    ready, down = _node(pb.NodeStatus.READY), _node(pb.NodeStatus.DOWN)
    assert not node_change_replans(ready, down, was_released=False)
    # Back from DOWN: only if the gate had released it (its tasks were replaced).
    assert not node_change_replans(down, ready, was_released=False)
    assert node_change_replans(down, ready, was_released=True)
    # Anything else that matters still does.
    assert node_change_replans(None, ready, was_released=False)
    assert node_change_replans(ready, None, was_released=False)
    assert node_change_replans(down, None, was_released=False)
    assert node_change_replans(ready, _node(pb.NodeStatus.DOWN, hostname="renamed"),
                               was_released=False)
    drained = _node(pb.NodeStatus.READY)
    drained.spec.availability = pb.NodeSpec.DRAIN
    assert node_change_replans(ready, drained, was_released=False)
    # And what never mattered still does not.
    assert not node_change_replans(ready, _node(pb.NodeStatus.READY), was_released=True)
