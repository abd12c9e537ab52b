"""What instrumented code calls to record a measurement, without knowing whether
metrics are on.

Metrics are off unless a daemon is started with --metrics-addr; then its
Telemetry is the Prometheus one (swarm/api/metrics.py, which alone imports
prometheus_client, so a daemon without metrics never loads it). Instrumented
objects hold a `telemetry` attribute that defaults to NO_TELEMETRY, which does
nothing: a measurement costs one method call when metrics are off.

Names are the metric names declared in swarm/api/metrics.py (METRICS); labels
are positional, in the declared order.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class Telemetry(Protocol):
    def observe(self, name: str, value: float, *labels: str) -> None:
        """A histogram sample (seconds, bytes)."""

    def inc(self, name: str, *labels: str, amount: float = 1.0) -> None:
        """A counter step."""


class NullTelemetry:
    """Metrics off: every measurement is dropped."""

    def observe(self, name: str, value: float, *labels: str) -> None:
        pass

    def inc(self, name: str, *labels: str, amount: float = 1.0) -> None:
        pass


NO_TELEMETRY: Telemetry = NullTelemetry()


@contextmanager
def timed(telemetry: Telemetry, name: str, *labels: str) -> Iterator[None]:
    """Observe the block's duration in seconds (also when it raises)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        telemetry.observe(name, time.perf_counter() - started, *labels)


def metrics_addr_error(text: str) -> str:
    """Why `--metrics-addr` is not a HOST:PORT to listen on ('' when it is)."""
    _host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        return f"expected HOST:PORT, got {text!r}"
    return ""
