"""`service ps` shows a task's health next to its state."""

from __future__ import annotations

from datetime import UTC, datetime

from cli.render import current_state
from swarmapi.v1 import objects_pb2 as pb


def test_current_state_shows_health() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    task = pb.Task(status=pb.TaskStatus(state=pb.RUNNING))
    assert current_state(task, now) == "Running"
    task.status.health = pb.TaskStatus.HEALTHY
    assert current_state(task, now) == "Running (healthy)"
    task.status.health = pb.TaskStatus.HEALTH_STARTING
    assert current_state(task, now) == "Running (health: starting)"
    task.status.state = pb.FAILED
    task.status.health = pb.TaskStatus.UNHEALTHY
    assert current_state(task, now) == "Failed (unhealthy)"
