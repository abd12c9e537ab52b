from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from swarm.agent.session import SessionSettings
from swarm.agent.simulated import SimulatedCluster
from swarm.api import channels, pki
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.ca import CASettings
from swarm.controller.dispatcher import DispatcherSettings
from swarm.controller.leadership import LeadershipSettings
from swarm.controller.server import Controller, ControllerConfig
from swarm.controller.store import EtcdSettings
from tests.etcd_server import EtcdServer

if TYPE_CHECKING:
    from tests.integration.live import LiveCluster

HEARTBEAT = 0.5  # seconds: a silent node is down after three of these
# One key-encryption key for the whole run (mutual TLS is on, as in production).
TEST_KEK = pki.generate_kek()
TEST_CA = CASettings(kek=TEST_KEK, join_rate=1000.0, join_burst=1000)


def controller_config(etcd_endpoint: str, prefix: str, *, insecure: bool = False,
                      ingress: bool = False) -> ControllerConfig:
    """ingress: whether the leader makes the ingress network (off: the tests
    of other parts count networks, subnets and address keys from none)."""
    return ControllerConfig(
        create_ingress=ingress,
        insecure=insecure,
        ca=TEST_CA,
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
    channel = admin_channel(controller)
    try:
        yield cgrpc.ControlStub(channel)
    finally:
        await channel.close(None)


def admin_channel(controller: Controller) -> grpc.aio.Channel:
    """A mutual-TLS channel with an admin certificate of the controller's cluster."""
    return channels.client_channel(f"127.0.0.1:{controller.port}",
                                   controller.pki.admin_identity())


def worker_token(controller: Controller) -> str:
    return str(controller.pki.token(pki.Role.WORKER))


def sim_cluster(controller: Controller, count: int, *, settings: SessionSettings | None = None,
                hostname_prefix: str = "sim", reject_images: Collection[str] = (),
                managers: int = 0,
                generic: Mapping[int, Sequence[pb.GenericResource]] | None = None
                ) -> SimulatedCluster:
    """Simulated nodes joined to the controller with its worker token; the first
    `managers` register as managers (placement's node.role)."""
    return SimulatedCluster([f"127.0.0.1:{controller.port}"], count, settings=settings,
                            hostname_prefix=hostname_prefix, reject_images=reject_images,
                            managers=managers, generic=generic,
                            join_token=worker_token(controller),
                            join_addrs=[controller.join_addr])


FAST_SESSION = SessionSettings(backoff_initial=0.05, backoff_max=0.5, status_flush_interval=0.02)


@pytest.fixture
async def sim_nodes(controller: Controller) -> AsyncIterator[SimulatedCluster]:
    """Three simulated nodes attached to the controller."""
    cluster = sim_cluster(controller, 3, settings=FAST_SESSION)
    cluster.start()
    try:
        await cluster.wait_connected(timeout=15)
        yield cluster
    finally:
        await cluster.stop()


@pytest.fixture
def live(etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveCluster]:
    """A fresh controller and nodes per test (under a second), in a key space of its own;
    swarmctl finds the admin certificate through SWARMCTL_TLS_DIR."""
    # Imported here: tests/integration/live.py imports this module's settings.
    from tests.integration.live import BROKEN_IMAGE, LiveCluster

    cluster = LiveCluster(etcd_server, etcd_prefix, reject_images={BROKEN_IMAGE})
    cluster.controller.pki.admin_identity().save(tmp_path / "admin")
    monkeypatch.setenv("SWARMCTL_TLS_DIR", str(tmp_path / "admin"))
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def own_etcd() -> Iterator[EtcdServer]:
    server = EtcdServer.start()  # a test's own: it freezes or kills it
    try:
        yield server
    finally:
        server.resume()
        server.stop()
