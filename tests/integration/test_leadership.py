"""Leadership between real controller processes sharing one etcd."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.store import EtcdClient, EtcdSettings
from swarm.controller.store.keys import Keys
from tests.etcd_server import EtcdServer
from tests.processes import (
    Proc,
    admin_channel,
    start_controller,
    start_simulated_agents,
    worker_token,
)
from tests.waiting import eventually_async


@pytest.fixture
def two_controllers(etcd_server: EtcdServer, etcd_prefix: str) -> Iterator[list[Proc]]:
    procs: list[Proc] = []
    try:
        for _ in range(2):
            procs.append(start_controller(etcd_server.endpoint, etcd_prefix, lease_ttl=2))
        yield procs
    finally:
        for proc in procs:
            proc.stop()


async def leader_of(etcd_server: EtcdServer, prefix: str) -> str:
    client = EtcdClient.open(EtcdSettings(endpoints=(etcd_server.endpoint,)))
    try:
        _rev, kv = await client.get(Keys(prefix).leader)
        return kv.value.decode() if kv is not None else ""
    finally:
        await client.close()


async def test_handover_when_the_leader_dies(
        etcd_server: EtcdServer, etcd_prefix: str, two_controllers: list[Proc]) -> None:
    addrs = {proc.addr: proc for proc in two_controllers}

    async def has_leader() -> bool:
        return await leader_of(etcd_server, etcd_prefix) in addrs

    await eventually_async(has_leader, timeout=10, message="a leader")
    first = await leader_of(etcd_server, etcd_prefix)
    follower = next(a for a in addrs if a != first)

    agents = start_simulated_agents(two_controllers, 2, await worker_token(two_controllers[0]))
    try:
        # Agents may dial the follower first: it points them at the leader.
        async with admin_channel(addrs[follower]) as channel:
            control = cgrpc.ControlStub(channel)

            async def nodes_ready() -> bool:
                nodes = (await control.ListNodes(cpb.ListNodesRequest())).nodes
                return len(nodes) == 2 and all(
                    n.status.state == pb.NodeStatus.READY for n in nodes)

            await eventually_async(nodes_ready, timeout=15, message="nodes ready via follower")
            spec = pb.ServiceSpec(name="web", replicated=pb.ReplicatedService(replicas=4))
            spec.task.container.image = "busybox"
            # Any controller accepts writes; the leader acts on them.
            await control.CreateService(cpb.CreateServiceRequest(spec=spec))

            async def all_running() -> bool:
                tasks = (await control.ListTasks(cpb.ListTasksRequest())).tasks
                return sum(t.status.state == pb.RUNNING for t in tasks) == 4

            await eventually_async(all_running, timeout=15, message="4 running")

            addrs[first].signal(signal.SIGKILL)  # no goodbye: the lease must expire

            async def follower_leads() -> bool:
                return await leader_of(etcd_server, etcd_prefix) == follower

            await eventually_async(follower_leads, timeout=10, message="the follower takes over")
            await eventually_async(nodes_ready, timeout=15, message="agents follow the new leader")
            await control.ScaleService(cpb.ScaleServiceRequest(ref="web", replicas=6))

            async def six_running() -> bool:
                tasks = (await control.ListTasks(cpb.ListTasksRequest())).tasks
                return sum(t.status.state == pb.RUNNING and t.desired_state == pb.RUNNING
                           for t in tasks) == 6

            await eventually_async(six_running, timeout=15, message="the new leader schedules")
    finally:
        agents.stop()


async def test_graceful_stop_hands_over_at_once(
        etcd_server: EtcdServer, etcd_prefix: str, two_controllers: list[Proc]) -> None:
    addrs = {proc.addr: proc for proc in two_controllers}

    async def has_leader() -> bool:
        return await leader_of(etcd_server, etcd_prefix) in addrs

    await eventually_async(has_leader, timeout=10)
    first = await leader_of(etcd_server, etcd_prefix)
    follower = next(a for a in addrs if a != first)
    addrs[first].stop()  # SIGTERM: the lease is revoked on the way out

    async def follower_leads() -> bool:
        return await leader_of(etcd_server, etcd_prefix) == follower

    # Well under the 2 s lease: the successor need not wait for expiry.
    await eventually_async(follower_leads, timeout=1.5, message="prompt handover")
