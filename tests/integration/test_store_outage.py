"""A controller that loses etcd keeps answering reads, refuses writes with
UNAVAILABLE, and recovers by itself when etcd returns."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.server import Controller
from tests.etcd_server import EtcdServer
from tests.integration.conftest import admin_channel, controller_config
from tests.waiting import eventually_async


@pytest.fixture
async def lone_controller(own_etcd: EtcdServer) -> AsyncIterator[Controller]:
    instance = Controller(controller_config(own_etcd.endpoint, "/outage/"))
    await instance.start()
    try:
        yield instance
    finally:
        own_etcd.resume()
        await instance.stop()


async def test_reads_survive_and_writes_recover(own_etcd: EtcdServer,
                                                lone_controller: Controller) -> None:
    async with admin_channel(lone_controller) as channel:
        control = cgrpc.ControlStub(channel)
        spec = pb.ServiceSpec(name="web", replicated=pb.ReplicatedService(replicas=1))
        spec.task.container.image = "busybox"
        await control.CreateService(cpb.CreateServiceRequest(spec=spec))

        own_etcd.pause()
        listed = await control.ListServices(cpb.ListServicesRequest(), timeout=5)
        assert [s.spec.name for s in listed.services] == ["web"]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await control.ScaleService(cpb.ScaleServiceRequest(ref="web", replicas=3), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "reads still work" in (caught.value.details() or "") or \
            "unavailable" in (caught.value.details() or "")

        own_etcd.resume()

        async def scaled() -> bool:
            try:
                await control.ScaleService(cpb.ScaleServiceRequest(ref="web", replicas=3),
                                           timeout=5)
            except grpc.aio.AioRpcError:
                return False
            return True

        await eventually_async(scaled, timeout=20, message="writes work again")
        service = (await control.GetService(cpb.GetRequest(ref="web"))).service
        assert service.spec.replicated.replicas == 3
