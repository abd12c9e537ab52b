"""The metrics and health endpoints over a real socket: what each path answers,
readiness with its reason, and the Prometheus telemetry's instruments."""

from __future__ import annotations

import asyncio

from swarm.api.metrics import METRICS, MetricsServer, PrometheusTelemetry, new_registry


async def _request(port: int, head: bytes) -> tuple[str, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    status, _, rest = answer.partition(b"\r\n")
    return status.decode(), rest.partition(b"\r\n\r\n")[2]


async def test_paths_and_readiness() -> None:
    registry = new_registry()
    telemetry = PrometheusTelemetry(registry)
    telemetry.observe("swarm_reconcile_seconds", 0.02, "orchestrator")
    telemetry.inc("swarm_etcd_conflicts_total", amount=2)
    reason = ["etcd unreachable: timeout"]

    async def ready() -> str:
        return reason[0]

    server = MetricsServer(registry, ready)
    await server.start("127.0.0.1:0")
    try:
        status, body = await _request(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert status == "HTTP/1.1 200 OK"
        assert b'swarm_reconcile_seconds_count{loop="orchestrator"} 1.0' in body
        assert b"swarm_etcd_conflicts_total 2.0" in body
        assert await _request(server.port, b"GET /healthz HTTP/1.1\r\n\r\n") == \
            ("HTTP/1.1 200 OK", b"ok\n")
        assert await _request(server.port, b"GET /readyz HTTP/1.1\r\n\r\n") == \
            ("HTTP/1.1 503 Service Unavailable", b"etcd unreachable: timeout\n")
        reason[0] = ""
        assert (await _request(server.port, b"GET /readyz HTTP/1.1\r\n\r\n"))[0] == \
            "HTTP/1.1 200 OK"
        assert await _request(server.port, b"HEAD /healthz HTTP/1.1\r\n\r\n") == \
            ("HTTP/1.1 200 OK", b"")
        assert (await _request(server.port, b"POST /metrics HTTP/1.1\r\n\r\n"))[0] == \
            "HTTP/1.1 405 Method Not Allowed"
        assert (await _request(server.port, b"GET /x HTTP/1.1\r\n\r\n"))[0] == \
            "HTTP/1.1 404 Not Found"
    finally:
        await server.stop()


def test_every_declared_instrument_can_be_made() -> None:
    telemetry = PrometheusTelemetry(new_registry())
    for name, declared in METRICS.items():
        labels = ["x"] * len(declared.labels)
        if declared.kind == "histogram":
            telemetry.observe(name, 1.0, *labels)
        else:
            telemetry.inc(name, *labels)
