"""Metrics and health of a live controller (--metrics-addr): the replica gauges agree
with `swarmctl service ls`; /readyz follows etcd (SIGSTOPped, then resumed) while
/healthz stays up; grpc.health.v1 answers on the control port (with a cluster
certificate) and on the join port (without one)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from swarm.api import channels
from swarm.controller.server import Controller
from tests.etcd_server import EtcdServer
from tests.integration.conftest import admin_channel, controller_config
from tests.integration.live import BROKEN_IMAGE, LiveCluster, ok, swarmctl, table_rows


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def samples(text: str, name: str) -> dict[str, float]:
    """{label value: sample} of a one-label metric in the exposition format."""
    found = {}
    for match in re.finditer(rf'^{name}{{\w+="([^"]*)"}} (\S+)$', text, re.MULTILINE):
        found[match.group(1)] = float(match.group(2))
    return found


@pytest.fixture
def live_metrics(etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveCluster]:
    cluster = LiveCluster(etcd_server, etcd_prefix, reject_images={BROKEN_IMAGE},
                          metrics_addr="127.0.0.1:0")
    cluster.controller.pki.admin_identity().save(tmp_path / "admin")
    monkeypatch.setenv("SWARMCTL_TLS_DIR", str(tmp_path / "admin"))
    try:
        yield cluster
    finally:
        cluster.close()


def test_replica_gauges_match_service_ls(live_metrics: LiveCluster) -> None:
    live = live_metrics
    assert live.controller.metrics is not None
    url = f"http://127.0.0.1:{live.controller.metrics.port}/metrics"
    ok(swarmctl(live, "service", "create", "web", "--image", "busybox", "--replicas", "3"))
    ok(swarmctl(live, "service", "create", "-d", "stuck", "--image", "busybox",
                "--constraint", "node.labels.planet==mars"))
    ok(swarmctl(live, "service", "scale", "web=2"))

    def agree() -> bool:
        listed = {row[1]: row[3] for row in table_rows(ok(swarmctl(live, "service", "ls")).stdout)}
        _, text = http_get(url)
        desired = samples(text, "swarm_service_replicas_desired")
        running = samples(text, "swarm_service_replicas_running")
        return set(listed) == {"web", "stuck"} and all(
            listed[name] == f"{running[name]:.0f}/{desired[name]:.0f}" for name in listed)

    live.eventually(agree, message="the gauges agree with service ls")
    _, text = http_get(url)
    assert samples(text, "swarm_service_replicas_desired")["web"] == 2
    assert samples(text, "swarm_service_replicas_running")["web"] == 2
    assert samples(text, "swarm_service_replicas_running")["stuck"] == 0
    pending = samples(text, "swarm_tasks_pending")
    assert any("no suitable node" in reason for reason in pending), pending
    assert "swarm_leader 1.0" in text
    assert re.search(r"^swarm_dispatcher_sessions 3\.0$", text, re.MULTILINE), text
    assert re.search(r'^swarm_etcd_request_seconds_count\{method="Txn"\} [1-9]', text,
                     re.MULTILINE)
    assert re.search(r"^swarm_scheduling_latency_seconds_count [1-9]", text, re.MULTILINE)
    assert re.search(r'^swarm_reconcile_seconds_count\{loop="orchestrator"\} [1-9]', text,
                     re.MULTILINE)
    assert samples(text, "swarm_certificate_expiry_seconds")["controller"] > 86400
    assert "process_resident_memory_bytes" in text
    assert http_get(url.replace("/metrics", "/nothing"))[0] == 404


@pytest.fixture
async def metered_controller(own_etcd: EtcdServer) -> AsyncIterator[Controller]:
    config = dataclasses.replace(controller_config(own_etcd.endpoint, "/metered/"),
                                 metrics_addr="127.0.0.1:0")
    instance = Controller(config)
    await instance.start()
    try:
        yield instance
    finally:
        own_etcd.resume()
        await instance.stop()


async def test_readyz_fails_while_etcd_is_stopped_and_recovers(
        own_etcd: EtcdServer, metered_controller: Controller) -> None:
    assert metered_controller.metrics is not None
    base = f"http://127.0.0.1:{metered_controller.metrics.port}"

    async def get(path: str) -> tuple[int, str]:
        return await asyncio.to_thread(http_get, base + path)

    async def until(path: str, status: int, timeout: float = 20.0) -> str:
        async with asyncio.timeout(timeout):
            while True:
                code, body = await get(path)
                if code == status:
                    return body
                await asyncio.sleep(0.1)

    await until("/readyz", 200)
    own_etcd.pause()
    body = await until("/readyz", 503)
    assert "etcd unreachable" in body
    assert await get("/healthz") == (200, "ok\n")  # alive, only not ready
    own_etcd.resume()
    assert await until("/readyz", 200) == "ok\n"


async def test_grpc_health_on_the_control_and_join_ports(own_etcd: EtcdServer,
                                                         metered_controller: Controller) -> None:
    request = health_pb2.HealthCheckRequest(service="swarm.v1.Control")
    async with admin_channel(metered_controller) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    join = channels.client_channel(metered_controller.join_addr, None,
                                   ca_pem=metered_controller.pki.ca.cert_pem)
    async with join:
        answer = await health_pb2_grpc.HealthStub(join).Check(
            health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_pb2_grpc.HealthStub(join).Check(
                health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
