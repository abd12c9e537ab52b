"""Prometheus metrics and health endpoints of a daemon (--metrics-addr HOST:PORT).

Imported only when metrics are on (prometheus_client is never loaded
otherwise; see swarm/api/telemetry.py). Each daemon gets its own
CollectorRegistry (no module-level state): the instruments declared in
METRICS, whatever the daemon collects at scrape time from its own state (a
prometheus Collector, such as the controller's view of its watch cache), and
the process's own figures (RSS, CPU, open files).

The HTTP side is a few lines of asyncio rather than prometheus_client's
threaded server, because readiness is asked of the daemon's event loop
(the controller pings etcd):

    GET /metrics  the text exposition format
    GET /healthz  200 "ok" while the process serves (liveness)
    GET /readyz   200 "ok" when ready(), else 503 with the reason (readiness)

Anything else is 404; a request is one line and headers, at most 8 KiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SLOW = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass(frozen=True)
class Declared:
    kind: str  # "histogram" or "counter"
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = _LATENCY


# Every measurement instrumented code may record (through Telemetry).
METRICS: dict[str, Declared] = {
    # controller
    "swarm_scheduling_latency_seconds": Declared(
        "histogram", "From a task's creation until the scheduler assigned it a node.",
        buckets=_SLOW),
    "swarm_reconcile_seconds": Declared(
        "histogram", "Duration of one reconcile pass, by loop.", ("loop",)),
    "swarm_etcd_request_seconds": Declared(
        "histogram", "Latency of etcd requests, by method.", ("method",)),
    "swarm_etcd_request_errors_total": Declared(
        "counter", "etcd requests that failed, by method.", ("method",)),
    "swarm_etcd_conflicts_total": Declared(
        "counter", "etcd transactions whose compare failed (a lost optimistic-concurrency "
                   "race: the writer retries)."),
    "swarm_dispatcher_missed_heartbeats_total": Declared(
        "counter", "Nodes marked down because they missed their heartbeats."),
    # agent
    "swarm_agent_container_start_seconds": Declared(
        "histogram", "From preparing a task until its container runs.", buckets=_SLOW),
    "swarm_agent_image_pull_seconds": Declared(
        "histogram", "Duration of image pulls.", buckets=_SLOW),
    "swarm_agent_image_pull_bytes_total": Declared(
        "counter", "Bytes of image layers pulled."),
    "swarm_agent_dns_queries_total": Declared(
        "counter", "Queries answered by the embedded DNS server, by result.", ("result",)),
    "swarm_agent_lb_updates_total": Declared(
        "counter", "Load-balancer (service VIP) rule updates applied."),
}


class PrometheusTelemetry:
    """Telemetry into a registry: instruments made on first use."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._instruments: dict[str, Histogram | Counter] = {}

    def _get(self, name: str) -> Histogram | Counter:
        instrument = self._instruments.get(name)
        if instrument is None:
            declared = METRICS[name]  # a KeyError is a bug: every name is declared
            if declared.kind == "histogram":
                instrument = Histogram(name, declared.help, declared.labels,
                                       buckets=declared.buckets, registry=self.registry)
            else:
                instrument = Counter(name.removesuffix("_total"), declared.help,
                                     declared.labels, registry=self.registry)
            self._instruments[name] = instrument
        return instrument

    def observe(self, name: str, value: float, *labels: str) -> None:
        instrument = self._get(name)
        assert isinstance(instrument, Histogram), name
        (instrument.labels(*labels) if labels else instrument).observe(value)

    def inc(self, name: str, *labels: str, amount: float = 1.0) -> None:
        instrument = self._get(name)
        assert isinstance(instrument, Counter), name
        (instrument.labels(*labels) if labels else instrument).inc(amount)

    def touch(self, names: Iterable[str]) -> None:
        """Make these instruments now, so that a scrape lists them (at zero) before
        their first measurement."""
        for name in names:
            if not METRICS[name].labels:
                self._get(name)


def new_registry(collectors: Iterable[Collector] = ()) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    for collector in collectors:
        registry.register(collector)
    return registry


Ready = Callable[[], Awaitable[str]]  # "" when ready, else why not


async def _always_ready() -> str:
    return ""


class MetricsServer:
    """/metrics, /healthz and /readyz on one address."""

    def __init__(self, registry: CollectorRegistry, ready: Ready = _always_ready) -> None:
        self.registry = registry
        self.ready = ready
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self, addr: str) -> None:
        host, _, port = addr.rpartition(":")
        self._server = await asyncio.start_server(self._serve, host.strip("[]") or None,
                                                  int(port), limit=8192)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics and health on http://%s:%d/metrics", host or "0.0.0.0", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
                status, content_type, body = await self._answer(head)
                writer.write(b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: " +
                             content_type.encode() + b"\r\nContent-Length: " +
                             str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n")
                if not head.startswith(b"HEAD "):
                    writer.write(body)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, head: bytes) -> tuple[str, str, bytes]:
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        path = parts[1].split(b"?", 1)[0]
        if path == b"/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == b"/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if path == b"/readyz":
            try:
                reason = await self.ready()
            except Exception as error:  # a failing check is a reason, not a crash
                reason = f"readiness check failed: {error}"
            if reason:
                return "503 Service Unavailable", "text/plain", reason.encode() + b"\n"
            return "200 OK", "text/plain", b"ok\n"
        return "404 Not Found", "text/plain", b"not found\n"
