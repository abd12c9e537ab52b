"""Docker's health-check defaults, and how long a health check may take to
decide, shared by the agent (which runs the checks) and the controller (whose
rolling updates wait for them).

Docker's defaults for a HealthConfig field left unset: interval 30 s, timeout
30 s, 3 retries, no start period, a start interval of 5 s (the time between
checks during the start period, until one succeeds: docker Engine 25+). A
check decides within its start period plus `retries` probes of at most
interval + timeout each: failures inside the start period do not count, and
`retries` consecutive failures after it make the container unhealthy.
"""

from __future__ import annotations

from swarm.api.v1 import objects_pb2 as pb

from .units import to_seconds

DEFAULT_INTERVAL = 30.0
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
DEFAULT_START_PERIOD = 0.0
DEFAULT_START_INTERVAL = 5.0  # docker's, between checks in the start period

_PASSING = (pb.TaskStatus.NO_HEALTHCHECK, pb.TaskStatus.HEALTHY)


def is_up(status: pb.TaskStatus) -> bool:
    """RUNNING, and healthy when it has a health check (not unhealthy, nor
    still waiting for its first success). One rule for every side: what a
    rolling update waits for (orchestrator, swarmctl's wait), what is a
    backend (peers.is_ready) and what must be drained before it stops (agent)."""
    return status.state == pb.RUNNING and status.health in _PASSING


def has_healthcheck(config: pb.HealthConfig) -> bool:
    """Whether the service's own HealthConfig names a check (the image may carry
    one too, which only the agent sees)."""
    test = list(config.test)
    return bool(test) and test != ["NONE"]


def decision_window(config: pb.HealthConfig) -> float:
    """Seconds a container with this check may stay "starting" before its agent
    must have called it healthy or unhealthy: start_period + retries x (interval
    + timeout), unset fields at docker's defaults (so a check only the image
    carries gets docker's default window)."""
    interval = to_seconds(config.interval) or DEFAULT_INTERVAL
    timeout = to_seconds(config.timeout) or DEFAULT_TIMEOUT
    start = to_seconds(config.start_period) or DEFAULT_START_PERIOD
    return start + (config.retries or DEFAULT_RETRIES) * (interval + timeout)
