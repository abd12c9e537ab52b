"""A node reporting disk pressure (with its heartbeats) gets no new tasks;
what it runs stays; once the pressure is gone it is fed again."""

from __future__ import annotations

from swarm.agent.conditions import DISK_PRESSURE
from swarm.agent.simulated import SimulatedCluster
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from tests.waiting import eventually_async


async def test_a_node_under_disk_pressure_is_not_fed(control: cgrpc.ControlAsyncStub,
                                                      sim_nodes: SimulatedCluster) -> None:
    full = sim_nodes.nodes[0]
    spec = pb.ServiceSpec(name="before", replicated=pb.ReplicatedService(replicas=3))
    spec.task.container.image = "busybox"
    await control.CreateService(cpb.CreateServiceRequest(spec=spec))

    async def running(service: str, count: int) -> bool:
        tasks = (await control.ListTasks(cpb.ListTasksRequest())).tasks
        ids = {s.id for s in (await control.ListServices(cpb.ListServicesRequest())).services
               if s.spec.name == service}
        return sum(t.service_id in ids and t.status.state == pb.RUNNING for t in tasks) == count

    await eventually_async(lambda: running("before", 3), timeout=10)
    full.session.conditions = lambda: [DISK_PRESSURE]

    async def reported(conditions: list[str]) -> bool:
        nodes = (await control.ListNodes(cpb.ListNodesRequest())).nodes
        return [list(n.status.conditions) for n in nodes
                if n.id == full.session.node_id] == [conditions]

    await eventually_async(lambda: reported([DISK_PRESSURE]), timeout=10, message="reported")
    spec = pb.ServiceSpec(name="after", replicated=pb.ReplicatedService(replicas=6))
    spec.task.container.image = "busybox"
    await control.CreateService(cpb.CreateServiceRequest(spec=spec))
    await eventually_async(lambda: running("after", 6), timeout=10)
    tasks = (await control.ListTasks(cpb.ListTasksRequest())).tasks
    on_full = [t for t in tasks if t.node_id == full.session.node_id and t.desired_state == pb.RUNNING]
    assert len(on_full) == 1  # its task of "before" stays; nothing of "after"
    full.session.conditions = lambda: []
    await eventually_async(lambda: reported([]), timeout=10, message="pressure gone")
    await control.ScaleService(cpb.ScaleServiceRequest(ref="after", replicas=9))
    await eventually_async(lambda: running("after", 9), timeout=10)
    tasks = (await control.ListTasks(cpb.ListTasksRequest())).tasks
    assert any(t.node_id == full.session.node_id for t in tasks
               if t.desired_state == pb.RUNNING and t.slot > 6)
