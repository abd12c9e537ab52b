"""The nodes' heartbeat period: the cluster object's setting, else the
controller's own default, stretched at scale. Read by the dispatcher (it
tells agents in every session and heartbeat answer, and marks silent nodes
DOWN) and by the orchestrator (its disconnect windows).

Stretched at scale: every heartbeat is an RPC the controllers serve on their
event loops, and at thousands of nodes a fixed 5 s period was 400-1,250 of
them a second; a loop busy with them answered late, agents gave up and
reconnected, and live nodes were marked DOWN. As SwarmKit's dispatcher does,
the period is the controller's to set, in each answer; here it grows with
the number of nodes so that the cluster's heartbeats stay at about
MAX_BEAT_RATE a second whatever its size (at most 250/s: 5 s up to 1,250
nodes, 8 s at 2,000, 20 s at 5,000). A silent node is then found after
HEARTBEAT_MISSES of the longer periods (60 s at 5,000 nodes; Kubernetes
waits 40-50 s for a node's lease): that is what the stretching costs. Up to
MAX_BEAT_RATE x the configured period nodes (1,250 at 5 s) nothing changes.
"""

from __future__ import annotations

from collections.abc import Iterable

from swarm.api.units import to_seconds
from swarm.api.v1 import objects_pb2 as pb

DEFAULT_HEARTBEAT_PERIOD = 5.0
MAX_BEAT_RATE = 250.0  # heartbeats a second, the whole cluster's, before the period grows


def configured_period(clusters: Iterable[pb.Cluster],
                      default: float = DEFAULT_HEARTBEAT_PERIOD) -> float:
    """The cluster object's period if it sets one, else `default`."""
    for cluster in clusters:
        period = cluster.spec.dispatcher.heartbeat_period
        if period.seconds or period.nanos:
            return to_seconds(period)
    return default


def scaled_period(base: float, nodes: int, rate: float = MAX_BEAT_RATE) -> float:
    """The period for `nodes` nodes: `base`, or longer so that they beat at
    most `rate` times a second together."""
    return max(base, nodes / rate)


def heartbeat_period(clusters: Iterable[pb.Cluster],
                     default: float = DEFAULT_HEARTBEAT_PERIOD, nodes: int = 0) -> float:
    """The period agents are told and judged by, for a cluster of `nodes` nodes."""
    return scaled_period(configured_period(clusters, default), nodes)
