"""The agent's metrics (--metrics-addr), imported only when they are on.

At scrape time: this node's tasks by state (the worker's view) and whether a
session with a controller is open. Measured as they happen: container start
latency (the worker's reports of a task, from PREPARING until RUNNING: image,
network, container start), image pulls (time and bytes, in the image store),
DNS queries by outcome and load-balancer rule updates (in discovery); the
routing mesh's open TCP connections (its userspace proxy's; a kernel NAT mesh
would have the kernel count them).

/readyz: the agent has an open session with a controller.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from swarm.api.metrics import MetricsServer, PrometheusTelemetry, new_registry
from swarm.api.telemetry import Telemetry
from swarm.api.v1 import objects_pb2 as pb

from .discovery import Discovery
from .images.store import ImageStore
from .published import PublishedPorts
from .session import AgentSession
from .worker import Report, Worker


class AgentCollector(Collector):
    def __init__(self, statuses: Callable[[], dict[str, pb.TaskStatus]],
                 connected: Callable[[], bool], mesh_connections: Callable[[], int]) -> None:
        self._statuses = statuses
        self._connected = connected
        self._mesh_connections = mesh_connections

    def collect(self) -> Iterator[Metric]:
        states = Counter(pb.TaskState.Name(s.state).lower() for s in self._statuses().values())
        tasks = GaugeMetricFamily("swarm_agent_tasks", "This node's tasks by state.",
                                  labels=["state"])
        for state, _number in pb.TaskState.items():
            tasks.add_metric([state.lower()], states.get(state.lower(), 0))
        yield tasks
        yield GaugeMetricFamily("swarm_agent_session_connected",
                                "1 while a session with a controller is open.",
                                value=1 if self._connected() else 0)
        yield GaugeMetricFamily("swarm_agent_mesh_connections",
                                "TCP connections the routing mesh carries now.",
                                value=self._mesh_connections())


def timing_report(report: Report, telemetry: Telemetry,
                  clock: Callable[[], float] = time.monotonic) -> Report:
    """The worker's report, observing each task's time from PREPARING to RUNNING."""
    preparing: dict[str, float] = {}

    def observed(task_id: str, status: pb.TaskStatus) -> None:
        if status.state == pb.PREPARING:
            preparing.setdefault(task_id, clock())
        elif status.state == pb.RUNNING and task_id in preparing:
            telemetry.observe("swarm_agent_container_start_seconds",
                              clock() - preparing.pop(task_id))
        elif status.state > pb.RUNNING:
            preparing.pop(task_id, None)
        report(task_id, status)

    return observed


async def serve_agent_metrics(addr: str, worker: Worker, session: AgentSession,
                              images: ImageStore, discovery: Discovery,
                              ports: PublishedPorts) -> MetricsServer:
    registry = new_registry()
    telemetry = PrometheusTelemetry(registry)
    telemetry.touch(["swarm_agent_container_start_seconds", "swarm_agent_image_pull_seconds",
                     "swarm_agent_image_pull_bytes_total", "swarm_agent_lb_updates_total"])
    images.telemetry = telemetry
    discovery.telemetry = telemetry
    worker.report = timing_report(worker.report, telemetry)
    registry.register(AgentCollector(worker.statuses, session.connected.is_set,
                                     ports.open_connections))

    async def ready() -> str:
        return "" if session.connected.is_set() else "no session with a controller"

    server = MetricsServer(registry, ready)
    await server.start(addr)
    return server
