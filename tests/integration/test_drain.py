"""Drain before stop on the control plane: a real etcd, the real controller
and simulated agents over the real dispatcher API. Agents that confirm the
network versions they applied (HeartbeatRequest.applied) hold a stopping
task's `drained` word until every one of them has confirmed the version
without it; an agent that confirms nothing is not waited for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, TypeAlias

import grpc
import pytest

from swarm.agent.simulated import FakeWorker, SimulatedCluster, SimulatedNode
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.server import Controller
from tests.integration.conftest import FAST_SESSION, sim_cluster
from tests.integration.test_ipam import create_network, service_spec
from tests.waiting import eventually

if TYPE_CHECKING:
    Control: TypeAlias = cgrpc.ControlAsyncStub


class ConfirmingWorker(FakeWorker):
    """A simulated worker that confirms what it applied (as agent.worker
    does once its load balancers have it), unless held; it records the
    `drained` words it is sent. Its tasks take a while to stop, so a
    stopping task stays RUNNING long enough to be drained."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.release.set()
        self.drained: list[str] = []
        self.stop_delay = 30.0

    async def apply(self, assignments: dpb.Assignments) -> None:
        await super().apply(assignments)
        self.drained.extend(assignments.drained)

    async def settled(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.release.wait(), timeout)
        except TimeoutError:
            return False
        return True


def confirming(node: SimulatedNode) -> ConfirmingWorker:
    worker = ConfirmingWorker()
    worker.session = node.session
    node.worker = node.session.worker = worker
    return worker


@pytest.fixture
async def nodes(controller: Controller) -> AsyncIterator[SimulatedCluster]:
    """Three simulated nodes: two confirm, the third (a simulated node as
    benchmarks use them) does not."""
    cluster = sim_cluster(controller, 3, settings=FAST_SESSION)
    confirming(cluster.nodes[0])
    confirming(cluster.nodes[1])
    cluster.start()
    try:
        await cluster.wait_connected(timeout=15)
        yield cluster
    finally:
        await cluster.stop()


@pytest.mark.parametrize("slow_node", ["confirms", "goes away"])
async def test_a_stopping_task_is_drained_once_every_confirming_node_has_let_it_go(
        controller: Controller, control: Control, nodes: SimulatedCluster,
        slow_node: str) -> None:
    """A confirming node that is slow to apply holds the drain until it
    confirms, or until its session ends (it serves nothing then)."""
    cache = controller.store.cache
    network = await create_network(control, "drainnet")
    web = (await control.CreateService(cpb.CreateServiceRequest(
        spec=service_spec("web", 3, "drainnet")))).service

    def running() -> list[pb.Task]:
        return [t for t in cache.tasks_by_service.get(web.id, {}).values()
                if t.status.state == pb.RUNNING and t.desired_state == pb.RUNNING]

    await eventually(lambda: len(running()) == 3, 15, "3 tasks running")
    second = nodes.nodes[1].worker
    assert isinstance(second, ConfirmingWorker)
    # Every node has every endpoint as ready before anything stops.
    await eventually(lambda: all(sum(p.ready for p in n.worker.peer_sets.endpoints(network.id))
                                 == 3 for n in nodes.nodes), 10, "every endpoint ready")
    node_ids = {n.session.node_id: n for n in nodes.nodes}
    # The task to stop: one on a confirming node.
    victim = next(t for t in running() if t.node_id == nodes.nodes[0].session.node_id)
    owner = node_ids[victim.node_id].worker
    assert isinstance(owner, ConfirmingWorker)

    # The second confirming node is slow to apply: nothing is drained.
    second.release.clear()
    await scale_down_to_exclude(control, web.id, victim)
    await eventually(lambda: cache.tasks[victim.id].desired_state > pb.RUNNING, 10,
                     "the task told to stop")
    # Every node is sent the task as not ready, the slow one included.
    await eventually(lambda: all(
        not any(p.ready for p in n.worker.peer_sets.endpoints(network.id)
                if p.task_id == victim.id) for n in nodes.nodes), 10, "the task not ready")
    await asyncio.sleep(0.5)
    assert victim.id not in owner.drained
    if slow_node == "confirms":  # the task's node is told the task is drained
        second.release.set()
    else:
        await nodes.nodes[1].stop()
    await eventually(lambda: victim.id in owner.drained, 10, "drained")
    assert cache.tasks[victim.id].status.state == pb.RUNNING  # the agent decides when to stop


async def scale_down_to_exclude(control: Control, service_id: str, victim: pb.Task) -> None:
    """Scale the service down so that the victim's slot goes (the highest
    slots go first: make the victim's the highest by scaling to its slot-1)."""
    await control.ScaleService(cpb.ScaleServiceRequest(
        ref=service_id, replicas=victim.slot - 1 if victim.slot > 1 else 0))


class RecordingWorker(FakeWorker):
    """A simulated worker that confirms nothing (it has no `settled`), records
    per message the tasks it is told to stop and the `drained` words, and
    takes a while to stop a task."""

    def __init__(self) -> None:
        super().__init__()
        self.stop_delay = 30.0
        self.messages: list[tuple[set[str], set[str]]] = []  # (told to stop, drained)

    async def apply(self, assignments: dpb.Assignments) -> None:
        await super().apply(assignments)
        self.messages.append(({t.id for t in assignments.tasks if t.desired_state > pb.RUNNING},
                              set(assignments.drained)))


async def test_without_confirming_nodes_a_task_is_drained_at_once(
        controller: Controller, control: Control) -> None:
    """Nodes that confirm nothing are not waited for: the stopping task's node
    is told it is drained in the message that tells it to stop, or the one
    right after (never held back for a confirmation that cannot come)."""
    cluster = sim_cluster(controller, 2, settings=FAST_SESSION)
    workers = []
    for node in cluster.nodes:
        worker = RecordingWorker()
        worker.session = node.session
        node.worker = node.session.worker = worker
        workers.append(worker)
    cluster.start()
    try:
        await cluster.wait_connected(timeout=15)
        cache = controller.store.cache
        await create_network(control, "plainnet")
        web = (await control.CreateService(cpb.CreateServiceRequest(
            spec=service_spec("web", 2, "plainnet")))).service
        await eventually(lambda: sum(t.status.state == pb.RUNNING for t in
                                     cache.tasks_by_service.get(web.id, {}).values()) == 2, 15,
                         "2 running")
        victim = next(t for t in cache.tasks_by_service[web.id].values() if t.slot == 2)
        owner = workers[[n.session.node_id for n in cluster.nodes].index(victim.node_id)]
        await scale_down_to_exclude(control, web.id, victim)

        def told_to_stop() -> int | None:
            return next((i for i, (stopping, _) in enumerate(owner.messages)
                         if victim.id in stopping), None)

        await eventually(lambda: told_to_stop() is not None, 10, "the stop sent")
        first = told_to_stop()
        assert first is not None
        await eventually(lambda: any(victim.id in drained
                                     for _, drained in owner.messages[first:first + 2]),
                         5, "drained with the stop")
        assert cache.tasks[victim.id].status.state == pb.RUNNING, \
            "told before the task stopped (it takes 30 s)"
        assert controller.dispatcher is not None
        assert controller.dispatcher._state is not None
        assert victim.id not in controller.dispatcher._state.drains
    finally:
        await cluster.stop()


async def test_a_negative_or_absurd_drain_timeout_is_refused_and_nothing_changes(
        controller: Controller, control: Control) -> None:
    """Through the API (swarmctl refuses them before sending, exit 2:
    tests/integration/test_cli.py): INVALID_ARGUMENT naming the field, and
    the stored service is the same."""
    spec = service_spec("api", 1)
    service = (await control.CreateService(cpb.CreateServiceRequest(spec=spec))).service
    stored = controller.store.cache.services[service.id].meta.version
    for seconds, problem in ((-1, "must not be negative"), (3600, "at most 5m")):
        bad = pb.ServiceSpec()
        bad.CopyFrom(service.spec)
        bad.task.container.drain_timeout.seconds = seconds
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await control.UpdateService(cpb.UpdateServiceRequest(
                service_id=service.id, version=service.meta.version, spec=bad))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "spec.task.container.drain_timeout" in (caught.value.details() or "")
        assert problem in (caught.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await control.CreateService(cpb.CreateServiceRequest(spec=pb.ServiceSpec(
                name="other", task=bad.task, replicated=pb.ReplicatedService(replicas=1))))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert controller.store.cache.services[service.id].meta.version == stored
    assert [s.spec.name for s in controller.store.cache.services.values()] == ["api"]
