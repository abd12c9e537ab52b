from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import grpc
import pytest

from agent.session import SessionSettings
from agent.simulated import SimulatedCluster
from controller.dispatcher import DispatcherSettings
from controller.leadership import LeadershipSettings
from controller.server import Controller, ControllerConfig
from controller.store import EtcdSettings
from swarmapi.v1 import control_pb2_grpc as cgrpc
from tests.etcd_server import EtcdServer

if TYPE_CHECKING:
    from tests.integration.live import LiveCluster

HEARTBEAT = 0.5  # seconds: a silent node is down after three of these


def controller_config(etcd_endpoint: str, prefix: str) -> ControllerConfig:
    return ControllerConfig(
        listen="127.0.0.1:0",
        etcd=EtcdSettings(endpoints=(etcd_endpoint,), timeout=2.0),
        prefix=prefix,
        leadership=LeadershipSettings(lease_ttl=2, poll_interval=0.1),
        dispatcher=DispatcherSettings(heartbeat_period=HEARTBEAT),
        heartbeat_period=HEARTBEAT,
    )


@pytest.fixture
async def controller(etcd_server: EtcdServer, etcd_prefix: str) -> AsyncIterator[Controller]:
    instance = Controller(controller_config(etcd_server.endpoint, etcd_prefix))
    await instance.start()
    try:
        yield instance
    finally:
        await instance.stop()


@pytest.fixture
async def control(controller: Controller) -> AsyncIterator[cgrpc.ControlAsyncStub]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{controller.port}")
    try:
        yield cgrpc.ControlStub(channel)
    finally:
        await channel.close(None)


FAST_SESSION = SessionSettings(backoff_initial=0.05, backoff_max=0.5, status_flush_interval=0.02)


@pytest.fixture
async def sim_nodes(controller: Controller) -> AsyncIterator[SimulatedCluster]:
    """Three simulated nodes attached to the controller."""
    cluster = SimulatedCluster([f"127.0.0.1:{controller.port}"], 3, settings=FAST_SESSION)
    cluster.start()
    try:
        await cluster.wait_connected(timeout=15)
        yield cluster
    finally:
        await cluster.stop()


@pytest.fixture
def live(etcd_server: EtcdServer, etcd_prefix: str) -> Iterator[LiveCluster]:
    """A fresh controller and nodes per test (under a second), in a key space of its own."""
    # Imported here: tests/integration/live.py imports this module's settings.
    from tests.integration.live import BROKEN_IMAGE, LiveCluster

    cluster = LiveCluster(etcd_server, etcd_prefix, reject_images={BROKEN_IMAGE})
    try:
        yield cluster
    finally:
        cluster.close()
