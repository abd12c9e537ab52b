"""Container health checks, as docker runs them.

Three layers, the first two pure:

- `plan_health` merges the service's HealthConfig over the image config's
  Healthcheck field by field (docker's daemon/commit.go `merge`) and fills in
  docker's defaults (interval 30 s, timeout 30 s, 3 retries, no start period,
  start interval 5 s);
  ["NONE"] or no test at all means no health check.
- `HealthTracker` turns probe results into a health state: failures inside
  the start period do not count until a probe first succeeds; `retries`
  consecutive failures afterwards make the container UNHEALTHY.
- `watch_health` runs the probe every interval (every start interval while the
  container is still starting inside its start period, as docker Engine 25+
  does, so that a long interval does not delay the first success) until the
  container turns
  unhealthy. Time is injected (sleep, clock), so tests need not wait.

The probe itself (a process inside the container, via Runtime.exec) is the
worker's business: here it is any `async () -> ProbeResult`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from swarm.api.healthcheck import (
    DEFAULT_INTERVAL,
    DEFAULT_RETRIES,
    DEFAULT_START_INTERVAL,
    DEFAULT_START_PERIOD,
    DEFAULT_TIMEOUT,
)
from swarm.api.units import to_seconds
from swarm.api.v1 import objects_pb2 as pb

from .images import Healthcheck

STARTING = pb.TaskStatus.HEALTH_STARTING
HEALTHY = pb.TaskStatus.HEALTHY
UNHEALTHY = pb.TaskStatus.UNHEALTHY


@dataclass(frozen=True)
class HealthPlan:
    """A resolved health check: the argv to exec in the container, and timing
    in seconds."""

    argv: tuple[str, ...]
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    start_period: float = DEFAULT_START_PERIOD
    start_interval: float = DEFAULT_START_INTERVAL


def _argv(test: tuple[str, ...]) -> tuple[str, ...] | None:
    """docker's Test forms: CMD exe args..., CMD-SHELL "cmd", NONE. Anything
    else (the API refuses it, an image might carry it) disables the check."""
    if not test:
        return None
    kind, rest = test[0], test[1:]
    if kind == "CMD" and rest and rest[0]:
        return rest
    if kind == "CMD-SHELL" and len(rest) == 1 and rest[0].strip():
        return ("/bin/sh", "-c", rest[0])
    return None


def plan_health(spec: pb.HealthConfig | None, image: Healthcheck | None) -> HealthPlan | None:
    """The health check to run, or None. `spec` is the service's (None when
    the container spec has no healthcheck field), `image` the image's."""
    image = image or Healthcheck(test=())
    if spec is None:
        test, interval, timeout = image.test, image.interval, image.timeout
        retries, start_period = image.retries, image.start_period
        start_interval = image.start_interval
    else:
        # Field by field: an unset (zero) field of the service inherits the image's.
        test = tuple(spec.test) or image.test
        interval = to_seconds(spec.interval) or image.interval
        timeout = to_seconds(spec.timeout) or image.timeout
        retries = spec.retries or image.retries
        start_period = to_seconds(spec.start_period) or image.start_period
        start_interval = to_seconds(spec.start_interval) or image.start_interval
    argv = _argv(test)
    if argv is None:
        return None
    return HealthPlan(argv=argv, interval=interval or DEFAULT_INTERVAL,
                      timeout=timeout or DEFAULT_TIMEOUT, retries=retries or DEFAULT_RETRIES,
                      start_period=start_period or DEFAULT_START_PERIOD,
                      start_interval=start_interval or DEFAULT_START_INTERVAL)


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str  # "exit 1", "timed out after 1.0s", ... for the task's error message


@dataclass
class HealthTracker:
    """The health state machine of one container run."""

    plan: HealthPlan
    started_at: float
    state: int = STARTING
    failures: int = 0  # consecutive failures that count
    last: ProbeResult | None = None

    def record(self, result: ProbeResult, now: float) -> int:
        self.last = result
        if result.ok:
            self.failures = 0
            self.state = HEALTHY
        elif self.state == STARTING and now - self.started_at < self.plan.start_period:
            pass  # still starting up: failures are expected and not counted
        else:
            self.failures += 1
            if self.failures >= self.plan.retries:
                self.state = UNHEALTHY
        return self.state

    def next_interval(self, now: float) -> float:
        """Seconds until the next probe (docker's getInterval)."""
        if self.state == STARTING and now - self.started_at < self.plan.start_period:
            return self.plan.start_interval
        return self.plan.interval

    def reason(self) -> str:
        last = self.last.detail if self.last else "no probe ran"
        return (f"unhealthy container: {self.failures} consecutive failed health checks "
                f"(last: {last})")


Probe = Callable[[], Awaitable[ProbeResult]]


async def watch_health(plan: HealthPlan, probe: Probe, on_change: Callable[[int], None], *,
                       sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                       clock: Callable[[], float] = time.monotonic,
                       initial: int = STARTING) -> HealthTracker:
    """Probe every interval (the first after one interval, as docker does;
    every start interval while still starting inside the start period, as
    docker Engine 25+ does) until the container is unhealthy; returns the
    tracker, whose reason() says why. on_change gets every change of health
    state, the initial one included. initial HEALTHY (an adopted container
    known healthy) skips the start period."""
    tracker = HealthTracker(plan, started_at=clock(), state=initial)
    on_change(tracker.state)
    while True:
        await sleep(tracker.next_interval(clock()))
        before = tracker.state
        state = tracker.record(await probe(), clock())
        if state != before:
            on_change(state)
        if state == UNHEALTHY:
            return tracker
