"""Mass-disconnect protection: when many nodes go DOWN together, their tasks
are not all replaced at once.

A node marked DOWN has only missed its heartbeats; whether it is dead or the
controllers lost the network for a while, nobody can tell from here. One node
going DOWN is most likely that node's trouble: its tasks are replaced. But
when more than `threshold` of all nodes (a third by default) go DOWN within
one `window` of each other, or a node goes DOWN within `leader_grace` of this
controller's election (a failover, not the node, is the likely cause), the
disconnect is *massive*: those nodes are held, and their tasks are replaced
one node at a time, no more often than every `release_interval`. A held node
that comes back is simply no longer DOWN: its tasks were never touched.

A node is judged only once it has been DOWN for a whole window, so nodes of
one burst (their last heartbeats spread over a period) are seen together.
That delays the replacement of a lone node's tasks by one window.

Compare Kubernetes' node lifecycle controller: it evicts pods from NotReady
nodes at --node-eviction-rate (0.1 node/s), slows to
--secondary-node-eviction-rate (0.01/s) when more than
--unhealthy-zone-threshold (55 %) of a zone is NotReady, and stops evicting
when the whole zone (or every zone) is NotReady, assuming a network problem on
its own side. Nomad's per-group `disconnect` block (`lost_after`, `replace`,
`reconcile`) decides per job how long a disconnected client's allocations
stay and whether replacements start meanwhile. Here the rule is cluster-wide
and rate-based, like Kubernetes', with the rate applying to bursts only.

`released` is pure; `DisruptionGate` keeps the state between passes and gives
the planner a view of the nodes in which a held node still looks READY.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from swarm.api.v1 import objects_pb2 as pb


@dataclass(frozen=True)
class DisruptionSettings:
    # More than this fraction of all nodes DOWN within one window is a mass disconnect.
    threshold: float = 1 / 3
    # The rest are given in heartbeat periods (the cluster's, known at run time).
    window_periods: float = 2.0  # nodes DOWN this close together are one burst
    leader_grace_periods: float = 5.0  # DOWN this soon after an election: held
    release_periods: float = 2.0  # one held node released per this many periods

    def scaled(self, period: float) -> tuple[float, float, float]:
        """(window, leader_grace, release_interval) in seconds."""
        return (self.window_periods * period, self.leader_grace_periods * period,
                self.release_periods * period)


@dataclass(frozen=True)
class Verdict:
    release: frozenset[str]  # nodes whose tasks may be replaced from now on
    released_at: float  # the time of the last rate-limited release (updated)
    recheck_at: float | None  # when to decide again, if anything is still held


def released(down_since: Mapping[str, float], already: frozenset[str] | set[str], total: int,
             leader_since: float, last_release: float, now: float,
             settings: DisruptionSettings, period: float) -> Verdict:
    """Which DOWN nodes (down_since: node -> when it was first seen DOWN) may
    have their tasks replaced now, besides `already`; total: all nodes."""
    window, grace, interval = settings.scaled(period)
    release: set[str] = set()
    recheck: float | None = None
    times = sorted(down_since.values())
    limit = settings.threshold * total
    for node_id, since in sorted(down_since.items(), key=lambda item: (item[1], item[0])):
        if node_id in already:
            continue
        if now - since < window:  # not judged before its burst is complete
            recheck = min(recheck if recheck is not None else math.inf, since + window)
            continue
        burst = bisect.bisect_right(times, since + window) - bisect.bisect_left(times, since - window)
        if burst <= limit and since - leader_since >= grace:
            release.add(node_id)
            continue
        if now - last_release >= interval:
            release.add(node_id)
            last_release = now
            continue
        recheck = min(recheck if recheck is not None else math.inf, last_release + interval)
    return Verdict(frozenset(release), last_release, recheck)


def _looks_ready(node: pb.Node) -> pb.Node:
    copy = pb.Node()
    copy.CopyFrom(node)
    copy.status.state = pb.NodeStatus.READY
    return copy


class HeldView(Mapping[str, pb.Node]):
    """The nodes as the planner is to see them: a held node as READY."""

    def __init__(self, nodes: Mapping[str, pb.Node], held: set[str]) -> None:
        self._nodes = nodes
        self._held = held
        self._copies: dict[str, pb.Node] = {}

    def __getitem__(self, node_id: str) -> pb.Node:
        node = self._nodes[node_id]
        if node_id not in self._held:
            return node
        copy = self._copies.get(node_id)
        if copy is None:
            copy = self._copies[node_id] = _looks_ready(node)
        return copy

    def __iter__(self) -> Iterator[str]:
        return iter(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)


@dataclass
class DisruptionGate:
    settings: DisruptionSettings = field(default_factory=DisruptionSettings)
    leader_since: float = 0.0
    down_since: dict[str, float] = field(default_factory=dict)
    released: set[str] = field(default_factory=set)
    last_release: float = -math.inf

    def restart(self, now: float) -> None:
        """A new leadership: nodes DOWN now are judged afresh (held, as just after
        an election), the rate starts over."""
        self.leader_since = now
        self.down_since.clear()
        self.released.clear()
        self.last_release = -math.inf

    def observe(self, nodes: Mapping[str, pb.Node], now: float) -> None:
        """Look at every node (after an election); later changes come one
        node at a time through observe_node."""
        for node_id, node in nodes.items():
            self.observe_node(node_id, node, now)
        for node_id in [n for n in self.down_since if n not in nodes]:
            self.observe_node(node_id, None, now)

    def observe_node(self, node_id: str, node: pb.Node | None, now: float) -> None:
        """One node changed (None: removed). O(1), so that a cluster of
        thousands of nodes joining is not a scan per join."""
        if node is not None and node.status.state == pb.NodeStatus.DOWN:
            self.down_since.setdefault(node_id, now)
        else:
            self.down_since.pop(node_id, None)
            self.released.discard(node_id)

    def decide(self, total: int, now: float, period: float) -> tuple[frozenset[str], float | None]:
        """(newly released nodes, when to decide again)."""
        verdict = released(self.down_since, self.released, total, self.leader_since,
                           self.last_release, now, self.settings, period)
        self.released |= verdict.release
        self.last_release = verdict.released_at
        return verdict.release, verdict.recheck_at

    @property
    def held(self) -> set[str]:
        return {n for n in self.down_since if n not in self.released}
