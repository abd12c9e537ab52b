"""The control plane end to end: a real etcd, a controller, simulated agents
speaking the real dispatcher API."""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, TypeAlias

import grpc
import pytest

from swarm.agent.simulated import SimulatedCluster
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.server import Controller
from swarm.controller.store import Update
from tests.integration.conftest import FAST_SESSION, HEARTBEAT, sim_cluster
from tests.waiting import eventually

if TYPE_CHECKING:  # the async stub type exists only in the generated .pyi
    Control: TypeAlias = cgrpc.ControlAsyncStub


def web_spec(name: str = "web", replicas: int = 3, **task: object) -> pb.ServiceSpec:
    spec = pb.ServiceSpec(name=name, replicated=pb.ReplicatedService(replicas=replicas))
    spec.task.container.image = "busybox:latest"
    for key, value in task.items():
        setattr(spec.task, key, value)
    return spec


def running(controller: Controller, service_id: str) -> list[pb.Task]:
    tasks = controller.store.cache.tasks_by_service.get(service_id, {}).values()
    return [t for t in tasks if t.desired_state == pb.RUNNING and t.status.state == pb.RUNNING]


def per_node(tasks: list[pb.Task]) -> dict[str, int]:
    return dict(collections.Counter(t.node_id for t in tasks))


async def test_nodes_register_and_are_ready(control: Control, sim_nodes: SimulatedCluster) -> None:
    nodes = (await control.ListNodes(cpb.ListNodesRequest())).nodes
    assert len(nodes) == 3
    assert {n.status.state for n in nodes} == {pb.NodeStatus.READY}
    assert sorted(n.description.hostname for n in nodes) == ["sim-0000", "sim-0001", "sim-0002"]


async def test_create_scale_up_down_and_remove(
        controller: Controller, control: Control, sim_nodes: SimulatedCluster) -> None:
    service = (await control.CreateService(cpb.CreateServiceRequest(spec=web_spec()))).service
    await eventually(lambda: len(running(controller, service.id)) == 3, message="3 running")
    assert sorted(per_node(running(controller, service.id)).values()) == [1, 1, 1]

    await control.ScaleService(cpb.ScaleServiceRequest(ref="web", replicas=6))
    await eventually(lambda: len(running(controller, service.id)) == 6, message="6 running")
    assert sorted(per_node(running(controller, service.id)).values()) == [2, 2, 2]

    await control.ScaleService(cpb.ScaleServiceRequest(ref=service.id[:6], replicas=2))
    await eventually(lambda: len(running(controller, service.id)) == 2, message="2 running")
    assert sorted(t.slot for t in running(controller, service.id)) == [1, 2], \
        "scaling down removes the highest slots first"
    # The agents were told to stop the others, and did.
    for node in sim_nodes.nodes:
        for task_id, status in node.worker.tasks.items():
            task = controller.store.cache.tasks.get(task_id)
            if task is not None and task.slot > 2:
                assert status.state == pb.SHUTDOWN

    await control.RemoveService(cpb.RemoveRequest(ref="web"))
    await eventually(lambda: not controller.store.cache.tasks_by_service.get(service.id),
                     message="tasks of the removed service deleted")
    # The agents learn of the deletion from their sessions, a moment later.
    await eventually(lambda: all(not node.worker.tasks for node in sim_nodes.nodes),
                     timeout=5, message="the agents told to forget the tasks")


async def test_silent_node_is_declared_down_and_its_tasks_move(
        controller: Controller, control: Control, sim_nodes: SimulatedCluster) -> None:
    service = (await control.CreateService(cpb.CreateServiceRequest(spec=web_spec()))).service
    await eventually(lambda: len(running(controller, service.id)) == 3)
    victim = sim_nodes.nodes[0]
    victim_id = victim.session.node_id
    loop_time = __import__("asyncio").get_running_loop().time
    await victim.stop()  # the node goes silent: no heartbeats, no session
    silenced = loop_time()
    await eventually(
        lambda: controller.store.cache.nodes[victim_id].status.state == pb.NodeStatus.DOWN,
        timeout=10, message="node down")
    down_after = loop_time() - silenced
    assert down_after <= HEARTBEAT * 3 + HEARTBEAT, f"declared down after {down_after:.2f}s"
    await eventually(lambda: len(running(controller, service.id)) == 3
                     and victim_id not in per_node(running(controller, service.id)),
                     timeout=10, message="replacements running elsewhere")
    stale = [t for t in controller.store.cache.tasks_by_node.get(victim_id, {}).values()
             if t.desired_state <= pb.RUNNING]
    assert stale == [], "the down node's tasks are no longer wanted there"


async def test_returning_node_is_told_to_stop_replaced_tasks(
        controller: Controller, control: Control, sim_nodes: SimulatedCluster) -> None:
    service = (await control.CreateService(cpb.CreateServiceRequest(spec=web_spec()))).service
    await eventually(lambda: len(running(controller, service.id)) == 3)
    victim = sim_nodes.nodes[1]
    victim_id = victim.session.node_id
    old_tasks = set(victim.worker.tasks)
    await victim.stop()
    await eventually(lambda: controller.store.cache.nodes[victim_id].status.state
                     == pb.NodeStatus.DOWN, timeout=10)
    await eventually(lambda: victim_id not in per_node(running(controller, service.id))
                     and len(running(controller, service.id)) == 3, timeout=10)
    victim.start()  # same node ID: its session comes back
    await eventually(lambda: controller.store.cache.nodes[victim_id].status.state
                     == pb.NodeStatus.READY, timeout=10)
    await eventually(lambda: all(victim.worker.tasks.get(t) is None
                                 or victim.worker.tasks[t].state == pb.SHUTDOWN
                                 for t in old_tasks), timeout=10,
                     message="old tasks stopped on the returning node")


async def test_drain_moves_tasks_and_pause_stops_new_placements(
        controller: Controller, control: Control, sim_nodes: SimulatedCluster) -> None:
    service = (await control.CreateService(cpb.CreateServiceRequest(spec=web_spec()))).service
    await eventually(lambda: len(running(controller, service.id)) == 3)
    drained = (await control.GetNode(cpb.GetRequest(ref="sim-0000"))).node
    spec = pb.NodeSpec()
    spec.CopyFrom(drained.spec)
    spec.availability = pb.NodeSpec.DRAIN
    await control.UpdateNode(cpb.UpdateNodeRequest(node_id=drained.id, version=drained.meta.version,
                                                   spec=spec))
    await eventually(lambda: drained.id not in per_node(running(controller, service.id))
                     and len(running(controller, service.id)) == 3, message="drained")

    paused = (await control.GetNode(cpb.GetRequest(ref="sim-0001"))).node
    spec.CopyFrom(paused.spec)
    spec.availability = pb.NodeSpec.PAUSE
    await control.UpdateNode(cpb.UpdateNodeRequest(node_id=paused.id, version=paused.meta.version,
                                                   spec=spec))
    before = per_node(running(controller, service.id)).get(paused.id, 0)
    await control.ScaleService(cpb.ScaleServiceRequest(ref="web", replicas=6))
    await eventually(lambda: len(running(controller, service.id)) == 6)
    counts = per_node(running(controller, service.id))
    assert counts.get(paused.id, 0) == before, "a paused node keeps its tasks, gets no new ones"
    assert drained.id not in counts


async def test_global_service_follows_nodes(
        controller: Controller, control: Control, sim_nodes: SimulatedCluster) -> None:
    spec = pb.ServiceSpec(name="monitor")
    getattr(spec, "global").SetInParent()
    spec.task.container.image = "busybox"
    service = (await control.CreateService(cpb.CreateServiceRequest(spec=spec))).service
    await eventually(lambda: len(running(controller, service.id)) == 3)
    assert sorted(per_node(running(controller, service.id)).values()) == [1, 1, 1]
    joiner = sim_cluster(controller, 1, settings=FAST_SESSION, hostname_prefix="late")
    joiner.start()
    try:
        await eventually(lambda: len(running(controller, service.id)) == 4,
                         message="a task on the joining node")
    finally:
        await joiner.stop()


async def test_unplaceable_task_explains_why(
        controller: Controller, control: Control, sim_nodes: SimulatedCluster) -> None:
    spec = web_spec(replicas=1)
    spec.task.placement.constraints.append("node.labels.zone==a")
    spec.task.resources.reservations.memory_bytes = 64 << 30  # more than any node has
    service = (await control.CreateService(cpb.CreateServiceRequest(spec=spec))).service

    def reason() -> str:
        tasks = list(controller.store.cache.tasks_by_service.get(service.id, {}).values())
        return tasks[0].status.message if tasks else ""

    await eventually(lambda: reason().startswith("no suitable node"), message="explanation")
    assert "3 nodes lack memory" in reason()


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda s: s.replicated.__setattr__("replicas", -1), "replicas"),
    (lambda s: s.task.container.__setattr__("image", "Bad Image!"), "spec.task.container.image"),
    (lambda s: s.task.placement.constraints.append("node.labels.zone~=a"), "constraints"),
    (lambda s: s.__setattr__("name", "-bad-"), "spec.name"),
    (lambda s: s.endpoint.ports.add(target_port=70000), "target_port"),
    (lambda s: s.task.networks.add(target="nonexistent"), "networks"),
])
async def test_invalid_specs_are_refused_and_nothing_is_written(
        controller: Controller, control: Control, mutate: object, field: str) -> None:
    spec = web_spec()
    mutate(spec)  # type: ignore[operator]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await control.CreateService(cpb.CreateServiceRequest(spec=spec))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (caught.value.details() or "")
    assert "\n" not in (caught.value.details() or "")
    assert controller.store.cache.services == {}
    _rev, kvs = await controller.store.etcd.range_prefix(controller.store.keys.prefix)
    assert [kv.key for kv in kvs if b"/services/" in kv.key or b"/names/" in kv.key] == []


async def test_duplicate_names_and_unknown_refs(controller: Controller, control: Control) -> None:
    await control.CreateService(cpb.CreateServiceRequest(spec=web_spec()))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await control.CreateService(cpb.CreateServiceRequest(spec=web_spec()))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await control.ScaleService(cpb.ScaleServiceRequest(ref="nope", replicas=2))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_stale_update_is_aborted(controller: Controller, control: Control) -> None:
    service = (await control.CreateService(cpb.CreateServiceRequest(spec=web_spec()))).service
    await control.ScaleService(cpb.ScaleServiceRequest(ref="web", replicas=5))
    spec = pb.ServiceSpec()
    spec.CopyFrom(service.spec)
    spec.task.container.image = "busybox:1.36"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await control.UpdateService(cpb.UpdateServiceRequest(
            service_id=service.id, version=service.meta.version, spec=spec))
    assert caught.value.code() == grpc.StatusCode.ABORTED
    stored = controller.store.cache.services[service.id]
    assert stored.spec.replicated.replicas == 5
    assert stored.spec.task.container.image == "busybox:latest"


async def test_an_update_over_status_changes_is_retried_on_the_controller(
        controller: Controller, control: Control) -> None:
    """A status write since the caller's read (the orchestrator's, as here)
    is no conflict: the controller writes the update over it."""
    service = (await control.CreateService(cpb.CreateServiceRequest(spec=web_spec()))).service
    status_only = pb.Service()
    status_only.CopyFrom(controller.store.cache.services[service.id])
    status_only.update_status.message = "a status write meanwhile"
    await controller.store.commit([Update(status_only)])
    spec = pb.ServiceSpec()
    spec.CopyFrom(service.spec)
    spec.task.container.image = "busybox:1.36"
    updated = (await control.UpdateService(cpb.UpdateServiceRequest(
        service_id=service.id, version=service.meta.version, spec=spec))).service
    assert updated.meta.version > status_only.meta.version
    stored = controller.store.cache.services[service.id]
    assert stored.spec.task.container.image == "busybox:1.36"


async def test_a_node_update_conflicts_only_with_a_spec_change(
        controller: Controller, control: Control, sim_nodes: SimulatedCluster) -> None:
    """Nodes' status is written all the time (the dispatcher): an update at
    the version read goes over it; another operator's spec change since is
    ABORTED, and nothing is written."""
    read = (await control.GetNode(cpb.GetRequest(ref="sim-0000"))).node
    status_only = pb.Node()
    status_only.CopyFrom(controller.store.cache.nodes[read.id])
    status_only.status.message = "a status write meanwhile"
    await controller.store.commit([Update(status_only)])
    labelled = pb.NodeSpec()
    labelled.CopyFrom(read.spec)
    labelled.labels["zone"] = "a"
    await control.UpdateNode(cpb.UpdateNodeRequest(node_id=read.id, version=read.meta.version,
                                                   spec=labelled))
    assert controller.store.cache.nodes[read.id].spec.labels["zone"] == "a"
    paused = pb.NodeSpec()
    paused.CopyFrom(read.spec)
    paused.availability = pb.NodeSpec.PAUSE
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await control.UpdateNode(cpb.UpdateNodeRequest(node_id=read.id, version=read.meta.version,
                                                       spec=paused))
    assert caught.value.code() == grpc.StatusCode.ABORTED
    assert caught.value.details() == "node 'sim-0000' changed since it was read; read it again"
    stored = controller.store.cache.nodes[read.id]
    assert (stored.spec.labels["zone"], stored.spec.availability) == ("a", pb.NodeSpec.ACTIVE)


async def test_rolling_update_replaces_every_task(
        controller: Controller, control: Control, sim_nodes: SimulatedCluster) -> None:
    service = (await control.CreateService(cpb.CreateServiceRequest(spec=web_spec()))).service
    await eventually(lambda: len(running(controller, service.id)) == 3)
    current = (await control.GetService(cpb.GetRequest(ref="web"))).service
    spec = pb.ServiceSpec()
    spec.CopyFrom(current.spec)
    spec.task.container.image = "busybox:1.36"
    await control.UpdateService(cpb.UpdateServiceRequest(
        service_id=service.id, version=current.meta.version, spec=spec))
    await eventually(
        lambda: len(running(controller, service.id)) == 3 and all(
            t.spec.container.image == "busybox:1.36" for t in running(controller, service.id))
        and controller.store.cache.services[service.id].update_status.state
        == pb.UpdateStatus.COMPLETED,
        timeout=15, message="update completed")
