"""How big passes run: the orchestrator plans big services in a worker thread
(orchestrator.reconciler.THREAD_PLAN_TASKS) and the scheduler decides and
writes a pass a chunk at a time (scheduler.reconciler.SCHEDULE_CHUNK). The
same end-to-end flows as test_control_plane, with every service planned in a
thread and every pass cut into chunks of two tasks."""

from __future__ import annotations

import pytest

from swarm.agent.simulated import SimulatedCluster
from swarm.controller.orchestrator import reconciler
from swarm.controller.scheduler import reconciler as scheduling
from swarm.controller.server import Controller
from tests.integration import test_control_plane as flows


@pytest.fixture(autouse=True)
def every_pass_big(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconciler, "THREAD_PLAN_TASKS", 0)
    monkeypatch.setattr(scheduling, "SCHEDULE_CHUNK", 2)


async def test_scale_up_down_and_remove_planned_in_a_thread(
        controller: Controller, control: flows.Control, sim_nodes: SimulatedCluster) -> None:
    await flows.test_create_scale_up_down_and_remove(controller, control, sim_nodes)


async def test_a_silent_nodes_tasks_move_planned_in_a_thread(
        controller: Controller, control: flows.Control, sim_nodes: SimulatedCluster) -> None:
    await flows.test_silent_node_is_declared_down_and_its_tasks_move(
        controller, control, sim_nodes)


async def test_a_rolling_update_planned_in_a_thread(
        controller: Controller, control: flows.Control, sim_nodes: SimulatedCluster) -> None:
    await flows.test_rolling_update_replaces_every_task(controller, control, sim_nodes)
