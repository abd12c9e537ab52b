"""Mass-disconnect protection with real processes: a controller, a real etcd,
and simulated agents in two processes. Most nodes' process is SIGSTOPped past
the DOWN threshold, then SIGCONTed: their tasks are replaced one node at a
time at most, and everything is back afterwards with no slot running twice."""

from __future__ import annotations

import asyncio
import signal
import time

from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from tests.etcd_server import EtcdServer
from tests.integration.test_failover import running_slots
from tests.processes import admin_channel, start_controller, start_simulated_agents, worker_token
from tests.waiting import eventually_async

HEARTBEAT = 0.5
RELEASE_PERIODS = 10  # one held node per 5 s


async def test_most_nodes_silent_at_once_are_not_all_replaced(
        etcd_server: EtcdServer, etcd_prefix: str) -> None:
    controller = start_controller(etcd_server.endpoint, etcd_prefix, heartbeat_period=HEARTBEAT,
                                  extra_args=["--disconnect-release-periods",
                                              str(RELEASE_PERIODS)])
    token = await worker_token(controller)
    silent = start_simulated_agents([controller], 4, token, hostname_prefix="quiet")
    steady = start_simulated_agents([controller], 2, token, hostname_prefix="steady")
    try:
        async with admin_channel(controller) as channel:
            control = cgrpc.ControlStub(channel)

            async def nodes_ready(count: int) -> bool:
                nodes = (await control.ListNodes(cpb.ListNodesRequest())).nodes
                return sum(n.status.state == pb.NodeStatus.READY for n in nodes) == count

            await eventually_async(lambda: nodes_ready(6), timeout=20, message="6 nodes")
            spec = pb.ServiceSpec(name="web", replicated=pb.ReplicatedService(replicas=12))
            spec.task.container.image = "busybox"
            await control.CreateService(cpb.CreateServiceRequest(spec=spec))

            async def running(count: int) -> bool:
                tasks = (await control.ListTasks(cpb.ListTasksRequest())).tasks
                return sum(t.status.state == pb.RUNNING and t.desired_state == pb.RUNNING
                           for t in tasks) == count

            await eventually_async(lambda: running(12), timeout=20, message="12 running")
            nodes = (await control.ListNodes(cpb.ListNodesRequest())).nodes
            quiet = {n.id for n in nodes if n.description.hostname.startswith("quiet")}
            before = {t.id: t.node_id for t in
                      (await control.ListTasks(cpb.ListTasksRequest())).tasks}
            on_quiet = sum(node in quiet for node in before.values())
            assert on_quiet >= 6  # spread: 8 of 12 on 4 of 6 nodes

            silent.signal(signal.SIGSTOP)  # 4 of 6 nodes: more than a third
            stopped = time.monotonic()
            await eventually_async(lambda: nodes_ready(2), timeout=10, message="4 nodes DOWN")
            # Well past the DOWN threshold and the burst window: at most the
            # first node (released at once), plus one per release interval.
            await asyncio.sleep(4.0)
            elapsed = time.monotonic() - stopped
            tasks = (await control.ListTasks(cpb.ListTasksRequest())).tasks
            moved = {before[t.id] for t in tasks
                     if t.id in before and t.desired_state > pb.RUNNING and before[t.id] in quiet}
            bound = 1 + int(elapsed / (RELEASE_PERIODS * HEARTBEAT))
            assert 1 <= len(moved) <= bound, f"{len(moved)} nodes' tasks replaced in {elapsed:.1f}s"
            assert len(moved) < len(quiet)

            silent.signal(signal.SIGCONT)
            await eventually_async(lambda: nodes_ready(6), timeout=15, message="all nodes back")
            back = time.monotonic() - stopped
            await eventually_async(lambda: running(12), timeout=15, message="12 running again")
            tasks = (await control.ListTasks(cpb.ListTasksRequest())).tasks
            # The nodes still held when they came back keep their tasks: they run on.
            replaced = {before[t.id] for t in tasks
                        if t.id in before and t.desired_state > pb.RUNNING}
            assert len(replaced) <= 1 + int(back / (RELEASE_PERIODS * HEARTBEAT))
            assert len(replaced) < len(quiet)
            kept = {t.id for t in tasks if t.id in before and t.desired_state == pb.RUNNING}
            assert {tid for tid, node in before.items() if node in quiet - replaced} <= kept

            async def each_slot_once() -> bool:
                # A released node's old tasks ran on, cut off; back, it is told to stop them.
                tasks = (await control.ListTasks(cpb.ListTasksRequest())).tasks
                return all(len(ids) == 1 for ids in running_slots(list(tasks)).values())

            await eventually_async(each_slot_once, timeout=10, message="no slot running twice")
            await asyncio.sleep(HEARTBEAT * 4)  # nothing else happens afterwards
            tasks = (await control.ListTasks(cpb.ListTasksRequest())).tasks
            assert sum(t.status.state == pb.RUNNING for t in tasks) == 12
    finally:
        silent.signal(signal.SIGCONT)
        silent.stop()
        steady.stop()
        controller.stop()
