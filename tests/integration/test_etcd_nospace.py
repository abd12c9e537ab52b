"""etcd out of space (issue 11 item 4): a real etcd with a tiny
--quota-backend-bytes is filled until it raises its NOSPACE alarm. The
controller keeps serving reads, refuses writes with RESOURCE_EXHAUSTED and
what to do, no loop crashes, and the task statuses the dispatcher took while
etcd was full are written once an operator has compacted, defragmented and
disarmed (the runbook of deploy/PRODUCTION.md, with etcdctl)."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Iterator

import grpc
import pytest

from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli.dev.etcd import etcd_binary
from swarm.controller.server import Controller
from swarm.controller.store import EtcdClient, EtcdSettings, StoreFull
from swarm.controller.store import etcd as E
from tests.etcd_server import EtcdServer
from tests.integration.conftest import FAST_SESSION, admin_channel, controller_config, sim_cluster
from tests.waiting import eventually

QUOTA = 4 * 1024 * 1024
HELD = "reported while etcd was full"


@pytest.fixture
def small_etcd() -> Iterator[EtcdServer]:
    server = EtcdServer.start(extra=["--quota-backend-bytes", str(QUOTA)])
    try:
        yield server
    finally:
        server.stop()


def etcdctl(server: EtcdServer, *args: str) -> str:
    ctl = etcd_binary() + "ctl"
    done = subprocess.run([ctl, "--endpoints", server.endpoint, *args], check=True,
                          capture_output=True, text=True, timeout=30)
    return done.stdout


async def fill(endpoint: str) -> int:
    """Rewrite one key until etcd raises NOSPACE (history is what fills it,
    as task status writes do without compaction); returns the puts it took."""
    client = EtcdClient.open(EtcdSettings(endpoints=(endpoint,)))
    try:
        for count in range(1, 200):
            try:
                await client.txn([], [E.op_put(b"/junk", bytes(256 * 1024))])
            except StoreFull:
                return count
        raise AssertionError("etcd never ran out of space")
    finally:
        await client.close()


def crashes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "crashed" in r.getMessage()
            or (r.name == "swarm.controller.leadership" and "stopped" in r.getMessage())]


async def test_nospace_is_survived_and_no_reported_status_is_lost(
        small_etcd: EtcdServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    controller = Controller(controller_config(small_etcd.endpoint, "/nospace/"))
    await controller.start()
    nodes = sim_cluster(controller, 2, settings=FAST_SESSION)
    nodes.start()
    try:
        await nodes.wait_connected(timeout=15)
        async with admin_channel(controller) as channel:
            control = cgrpc.ControlStub(channel)
            spec = pb.ServiceSpec(name="web", replicated=pb.ReplicatedService(replicas=4))
            spec.task.container.image = "busybox"
            await control.CreateService(cpb.CreateServiceRequest(spec=spec))
            cache = controller.store.cache

            def running() -> list[pb.Task]:
                return [t for t in cache.tasks.values() if t.status.state == pb.RUNNING]

            await eventually(lambda: len(running()) == 4, timeout=20, message="web at 4/4")

            puts = await fill(small_etcd.endpoint)
            assert "NOSPACE" in etcdctl(small_etcd, "alarm", "list")

            # Reads are served; writes are refused with what to do, in one line.
            listed = await control.ListServices(cpb.ListServicesRequest(), timeout=5)
            assert [s.spec.name for s in listed.services] == ["web"]
            other = pb.ServiceSpec(name="other")
            other.task.container.image = "busybox"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await control.CreateService(cpb.CreateServiceRequest(spec=other), timeout=10)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = caught.value.details() or ""
            assert details.startswith("cannot create service: etcd is out of space"), details
            assert "etcdctl defrag" in details
            assert "etcdctl alarm disarm" in details
            assert "\n" not in details

            # The agents report; the dispatcher takes the reports and holds them.
            reported = 0
            for node in nodes.nodes:
                for task_id in list(node.worker.tasks):
                    node.session.report(task_id, pb.TaskStatus(state=pb.RUNNING, message=HELD))
                    reported += 1
            assert reported == 4
            await eventually(lambda: any("cannot write" in r.getMessage() and "kept" in
                                         r.getMessage() for r in caplog.records),
                             timeout=10, message="the status writer holding the reports")
            assert not [t for t in cache.tasks.values() if t.status.message == HELD]

            # The operator's runbook: compact, defragment, disarm.
            status = json.loads(etcdctl(small_etcd, "endpoint", "status", "-w", "json"))
            revision = status[0]["Status"]["header"]["revision"]
            etcdctl(small_etcd, "compact", str(revision))
            etcdctl(small_etcd, "defrag")
            etcdctl(small_etcd, "alarm", "disarm")

            # Every held report lands, and writes work again.
            await eventually(lambda: len([t for t in cache.tasks.values()
                                          if t.status.message == HELD]) == 4,
                             timeout=20, message="the held statuses written")
            _, kvs = await controller.etcd.range_prefix(b"/nospace/tasks/")
            assert sorted(pb.Task.FromString(kv.value).status.message for kv in kvs) == [HELD] * 4
            await control.CreateService(cpb.CreateServiceRequest(spec=other), timeout=10)
            assert crashes(caplog) == [], crashes(caplog)
            assert puts > 1
    finally:
        await nodes.stop()
        await controller.stop()
