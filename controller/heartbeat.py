"""The nodes' heartbeat period: the cluster object's setting, else the
controller's own default. Read by the dispatcher (it tells agents, and marks
silent nodes DOWN) and by the orchestrator (its disconnect windows)."""

from __future__ import annotations

from collections.abc import Iterable

from swarm.api.units import to_seconds
from swarm.api.v1 import objects_pb2 as pb

DEFAULT_HEARTBEAT_PERIOD = 5.0


def heartbeat_period(clusters: Iterable[pb.Cluster],
                     default: float = DEFAULT_HEARTBEAT_PERIOD) -> float:
    for cluster in clusters:
        period = cluster.spec.dispatcher.heartbeat_period
        if period.seconds or period.nanos:
            return to_seconds(period)
    return default
