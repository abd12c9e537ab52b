"""Drain before stop across controllers (controller/drain.py): two real
controller processes (mutual TLS) on a real etcd, simulated agents that
confirm the peer-set versions they applied, each pinned to one controller.

What an operator cares about: during a stop, a node whose session is on
ANOTHER controller than the stopping task's node still has the task dropped
from its load balancers before the task's node is told it may stop it
(Assignments.drained); and when that other controller dies (SIGKILL), the
stop is not held for it beyond its registry record's expiry.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from swarm.agent.simulated import SimulatedCluster
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from tests.etcd_server import EtcdServer
from tests.integration.conftest import FAST_SESSION
from tests.integration.test_drain import ConfirmingWorker, confirming
from tests.integration.test_follower_sessions import roles
from tests.integration.test_ipam import create_network, service_spec
from tests.processes import Proc, admin_channel, start_controller, worker_token
from tests.waiting import eventually, eventually_async

LEASE_TTL = 2  # the controllers' registry records expire this long after a SIGKILL


@pytest.fixture
def controllers(etcd_server: EtcdServer, etcd_prefix: str) -> Iterator[list[Proc]]:
    procs: list[Proc] = []
    try:
        for _ in range(2):
            procs.append(start_controller(etcd_server.endpoint, etcd_prefix, lease_ttl=LEASE_TTL,
                                          heartbeat_period=0.5))
        yield procs
    finally:
        for proc in procs:
            proc.stop()


async def pinned(controller: Proc, prefix: str) -> tuple[SimulatedCluster, ConfirmingWorker]:
    """One confirming simulated node whose session is on this controller."""
    cluster = SimulatedCluster([controller.addr], 1, settings=FAST_SESSION,
                               hostname_prefix=prefix,
                               join_token=await worker_token(controller),
                               join_addrs=[controller.extra["join"]])
    worker = confirming(cluster.nodes[0])
    return cluster, worker


@pytest.fixture(params=["own-on-leader", "own-on-follower"])
async def two_sides(request: pytest.FixtureRequest, etcd_server: EtcdServer, etcd_prefix: str,
                    controllers: list[Proc]
                    ) -> AsyncIterator[tuple[Proc, Proc, ConfirmingWorker, ConfirmingWorker]]:
    """One controller with the stopping task's node ("drx-own"), the other
    with a node holding the same network ("drx-far"); the task's node on
    the leader, then on the follower (the far one, killed, is the leader)."""
    leader, (follower,) = await roles(etcd_server, etcd_prefix, controllers)
    near, away = (leader, follower) if request.param == "own-on-leader" else (follower, leader)
    own, own_worker = await pinned(near, "drx-own")
    far, far_worker = await pinned(away, "drx-far")
    own.start()
    far.start()
    try:
        await own.wait_connected(timeout=20)
        await far.wait_connected(timeout=20)
        yield near, away, own_worker, far_worker
    finally:
        await own.stop()
        await far.stop()


def on(spec: pb.ServiceSpec, hostname: str) -> pb.ServiceSpec:
    spec.task.placement.constraints.append(f"node.hostname=={hostname}")
    return spec


async def test_a_stop_waits_for_nodes_served_by_another_controller_until_it_dies(
        two_sides: tuple[Proc, Proc, ConfirmingWorker, ConfirmingWorker]) -> None:
    near, away, own, far = two_sides
    async with admin_channel(near) as channel:
        control = cgrpc.ControlStub(channel)
        network = await create_network(control, "drxnet", "192.168.158.0/24", "192.168.158.1")
        # Two tasks on the own node (stopped one at a time), one on the far
        # node: it has the network, so it is sent the peers.
        web = (await control.CreateService(cpb.CreateServiceRequest(
            spec=on(service_spec("web", 2, "drxnet"), "drx-own-0000")), timeout=5)).service
        await control.CreateService(cpb.CreateServiceRequest(
            spec=on(service_spec("holder", 1, "drxnet"), "drx-far-0000")), timeout=5)

        async def web_tasks() -> list[pb.Task]:
            found = (await control.ListTasks(cpb.ListTasksRequest(), timeout=5)).tasks
            return [t for t in found if t.service_id == web.id]

        async def all_ready() -> bool:
            return all(sum(p.ready for p in w.peer_sets.endpoints(network.id)) == 3
                       for w in (own, far))

        await eventually_async(all_ready, timeout=20, message="3 endpoints ready on both nodes")
        by_slot = {t.slot: t for t in await web_tasks()}

        async def stop_slot(slot: int) -> pb.Task:
            victim = by_slot[slot]
            await control.ScaleService(cpb.ScaleServiceRequest(ref=web.id, replicas=slot - 1),
                                       timeout=5)
            # Applied (not yet confirmed) by the far node too.
            await eventually(lambda: not any(
                p.ready for p in far.peer_sets.endpoints(network.id) if p.task_id == victim.id),
                10, "the stop seen on the far node")
            return victim

        # 1. The far node is slow to apply: the own controller's side is
        # drained once the own node confirms, yet it is not told until the far
        # node confirmed (through the far controller's report).
        far.release.clear()
        first = await stop_slot(2)
        await eventually(lambda: not any(
            p.ready for p in own.peer_sets.endpoints(network.id) if p.task_id == first.id),
            10, "the task not ready on its own node")
        await asyncio.sleep(1.5)
        assert first.id not in own.drained, "drained before the other controller's node confirmed"
        far.release.set()
        await eventually(lambda: first.id in own.drained, 10, "drained once the far node confirmed")

        # 2. Held again, and the far controller dies: the stop waits only until its
        # registry record expires (LEASE_TTL), not for the agent's bound.
        far.release.clear()
        second = await stop_slot(1)
        await asyncio.sleep(1.0)
        assert second.id not in own.drained
        away.signal(signal.SIGKILL)
        killed = time.monotonic()
        await eventually(lambda: second.id in own.drained, LEASE_TTL + 8,
                         "drained without the dead controller")
        waited = time.monotonic() - killed
        assert waited < LEASE_TTL + 6, f"held {waited:.1f} s for a dead controller"
        far.release.set()
