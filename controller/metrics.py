"""The controller's metrics (--metrics-addr): what Prometheus scrapes, and when
the controller is ready.

Most figures are read at scrape time from the watch cache, which every
controller keeps current (so a follower reports the same cluster view as the
leader, and nothing is counted twice): replicas desired and running per
service (the same counts as `swarmctl service ls`), tasks by state, pending
tasks by the scheduler's reason, nodes by state, leadership, certificate
expiry, agent sessions and event subscribers. Latencies are measured where
they happen (swarm/api/telemetry.py): reconcile passes, etcd requests and
conflicts, missed heartbeats; scheduling latency (a task's creation until it is
assigned) is taken from the cache's changes, so the scheduler needs no hook.

Readiness (/readyz): etcd answers a read within a second, and the watch cache
has synced; the leader also needs its leadership confirmed in etcd.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from swarm.api.healthcheck import is_up
from swarm.api.metrics import MetricsServer, PrometheusTelemetry, new_registry
from swarm.api.pki import NodeIdentity
from swarm.api.telemetry import Telemetry
from swarm.api.v1 import objects_pb2 as pb

from .store.cache import Change, TaskChange, WatchCache
from .store.etcd import EtcdClient

if TYPE_CHECKING:
    from .server import Controller

_DIGITS = re.compile(r"\d+")


def pending_reason(task: pb.Task) -> str:
    """The scheduler's reason with its counts taken out, so that the label takes few
    values: 'no suitable node (N nodes lack memory)'."""
    return _DIGITS.sub("N", task.status.message or task.status.err or "waiting")


def replica_counts(service: pb.Service, tasks: Iterator[pb.Task] | list[pb.Task]
                   ) -> tuple[int, int]:
    """(desired, running), counted as `swarmctl service ls` counts them."""
    own = list(tasks)
    running = sum(1 for t in own if t.desired_state == pb.RUNNING and t.status.state == pb.RUNNING)
    mode = service.spec.WhichOneof("mode")
    if mode in ("global", "global_job"):
        desired = sum(1 for t in own if t.desired_state == pb.RUNNING)
    elif mode == "replicated_job":
        job = service.spec.replicated_job
        desired = min(job.max_concurrent, job.total_completions)
    else:
        desired = service.spec.replicated.replicas
    return desired, running


class ControllerCollector(Collector):
    """Gauges read from the controller's state at each scrape."""

    def __init__(self, cache: WatchCache, *, is_leader: Callable[[], bool],
                 sessions: Callable[[], int], identity: Callable[[], NodeIdentity | None],
                 subscribers: Callable[[], int]) -> None:
        self._cache = cache
        self._is_leader = is_leader
        self._sessions = sessions
        self._identity = identity
        self._subscribers = subscribers

    def collect(self) -> Iterator[Metric]:
        cache = self._cache
        desired = GaugeMetricFamily("swarm_service_replicas_desired",
                                    "Tasks a service wants running.", labels=["service"])
        running = GaugeMetricFamily("swarm_service_replicas_running",
                                    "A service's tasks running (as service ls counts them).",
                                    labels=["service"])
        healthy = GaugeMetricFamily("swarm_service_replicas_up",
                                    "A service's running tasks that are up (healthy when "
                                    "they have a health check).", labels=["service"])
        for service in cache.services.values():
            tasks = list(cache.tasks_by_service.get(service.id, {}).values())
            wanted, run = replica_counts(service, tasks)
            name = service.spec.name
            desired.add_metric([name], wanted)
            running.add_metric([name], run)
            healthy.add_metric([name], sum(1 for t in tasks if t.desired_state == pb.RUNNING
                                           and is_up(t.status)))
        yield desired
        yield running
        yield healthy

        states = Counter(pb.TaskState.Name(t.status.state).lower() for t in cache.tasks.values())
        by_state = GaugeMetricFamily("swarm_tasks", "Tasks by observed state.", labels=["state"])
        for state, _number in pb.TaskState.items():
            by_state.add_metric([state.lower()], states.get(state.lower(), 0))
        yield by_state

        reasons = Counter(pending_reason(t) for t in cache.tasks.values()
                          if t.status.state < pb.ASSIGNED and t.desired_state <= pb.RUNNING)
        pending = GaugeMetricFamily("swarm_tasks_pending",
                                    "Tasks waiting for a node, by the scheduler's reason.",
                                    labels=["reason"])
        for reason, count in sorted(reasons.items()):
            pending.add_metric([reason], count)
        yield pending

        nodes = Counter(pb.NodeStatus.State.Name(n.status.state).lower()
                        for n in cache.nodes.values())
        by_node_state = GaugeMetricFamily("swarm_nodes", "Nodes by state.", labels=["state"])
        for state, _node_state in pb.NodeStatus.State.items():
            by_node_state.add_metric([state.lower()], nodes.get(state.lower(), 0))
        yield by_node_state

        yield GaugeMetricFamily("swarm_leader", "1 while this controller leads.",
                                value=1 if self._is_leader() else 0)
        yield GaugeMetricFamily("swarm_dispatcher_sessions",
                                "Agent sessions this controller serves.", value=self._sessions())
        yield GaugeMetricFamily("swarm_events_subscribers", "Open event streams.",
                                value=self._subscribers())
        yield GaugeMetricFamily("swarm_watch_cache_staleness_seconds",
                                "Seconds since etcd last proved the watch cache current.",
                                value=min(cache.staleness(), 1e9))
        identity = self._identity()
        if identity is not None:
            now = time.time()
            expiry = GaugeMetricFamily("swarm_certificate_expiry_seconds",
                                       "Seconds until a certificate expires.", labels=["cert"])
            expiry.add_metric(["controller"], identity.cert.not_valid_after_utc.timestamp() - now)
            from cryptography import x509  # only with metrics on and TLS

            ca = x509.load_pem_x509_certificate(identity.ca_pem)
            expiry.add_metric(["ca"], ca.not_valid_after_utc.timestamp() - now)
            yield expiry


def watch_scheduling(cache: WatchCache, telemetry: Telemetry,
                     clock: Callable[[], float] = time.time) -> Callable[[], None]:
    """Observe each task's time from creation until it is first seen ASSIGNED (or
    further); returns the unsubscribe."""
    def on_change(change: Change) -> None:
        if not isinstance(change, TaskChange) or change.new is None:
            return
        old, new = change.old, change.new
        if new.status.state < pb.ASSIGNED or not new.meta.HasField("created_at"):
            return
        if isinstance(old, pb.Task) and old.status.state >= pb.ASSIGNED:
            return
        telemetry.observe("swarm_scheduling_latency_seconds",
                          max(0.0, clock() - new.meta.created_at.ToNanoseconds() / 1e9))

    return cache.subscribe(on_change)


async def readiness(etcd: EtcdClient, cache: WatchCache, *, is_leader: Callable[[], bool],
                    timeout: float = 1.0) -> str:
    """'' when ready, else why not (see the module docstring)."""
    try:
        async with asyncio.timeout(timeout):
            await etcd.revision()
    except Exception as error:  # unreachable, refused, timed out: all "not ready"
        return f"etcd unreachable: {error or type(error).__name__}"
    if not cache.synced.is_set():
        return "watch cache not synced yet"
    if is_leader() and cache.staleness() > 5.0:
        return f"leader's watch cache is {cache.staleness():.0f}s behind etcd"
    return ""


async def serve_metrics(controller: Controller, addr: str) -> MetricsServer:
    """Turn the controller's metrics on and serve them (with /healthz, /readyz) on addr."""
    registry = new_registry()
    telemetry = PrometheusTelemetry(registry)
    telemetry.touch(["swarm_scheduling_latency_seconds", "swarm_etcd_conflicts_total",
                     "swarm_dispatcher_missed_heartbeats_total"])
    controller.etcd.instrument(telemetry)
    controller.orchestrator.telemetry = telemetry
    controller.scheduler.telemetry = telemetry
    dispatcher = controller.dispatcher
    leadership = controller.leadership
    if dispatcher is not None:
        dispatcher.telemetry = telemetry
    cache = controller.store.cache
    watch_scheduling(cache, telemetry)

    def is_leader() -> bool:
        return leadership is not None and leadership.is_leader

    registry.register(ControllerCollector(
        cache, is_leader=is_leader,
        sessions=lambda: dispatcher.session_count() if dispatcher is not None else 0,
        identity=lambda: controller.identity.current() if controller.identity else None,
        subscribers=lambda: controller.events.subscribers))
    server = MetricsServer(registry, lambda: readiness(controller.etcd, cache,
                                                       is_leader=is_leader))
    await server.start(addr)
    return server
