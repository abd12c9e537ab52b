"""Drain before stop, on every controller that serves agent sessions: when
may a task told to stop get its stop signal?

A task told to stop (desired state past RUNNING) stops being ready at once
(peers.is_ready), so every node on its networks is sent a new version of
their peer sets without it as a backend: DNS, the VIP load balancers and the
routing mesh (the ingress network is one of its networks when its service
publishes ports) stop choosing it. Each agent confirms the versions it has
in force (HeartbeatRequest.applied, sent right after applying). The agent
never waits longer than the task's drain timeout (agent.worker.drain_left):
a node that is slow, gone or cut off costs that bound, not the stop.

Every controller serves sessions, and a controller knows only the nodes it
serves; its peer-set versions are its own (each keeps its own PeerTable), so
versions are never compared across controllers. Hence each controller
judges its own side: the task is *drained here* once every node this
controller serves that was sent one of its networks has confirmed, for each
of them, at least the version recorded here when the task began to stop (a
controller serving no such node is drained here at once). It then tells the
other live controllers (Dispatcher.ReportDrained, batched task IDs, kept and
sent again while a controller does not take them). The controller serving
the task's node tells it (Assignments.drained) once it is drained there AND
every other controller that was registered when the drain began has
reported it drained, or has left the registry (dead or stopped: its agents
open sessions elsewhere and get complete sets without the task). A lost
report costs at most the agent's bound.

Nodes whose agent has confirmed nothing in this session (simulated nodes,
agents that do not confirm) are not waited for: they would only ever cost
the bound. A node whose session ends stops counting too (its agent serves
nothing until it has a session again, and then it starts from a complete
set without the task as a backend). Drains are kept in memory: a task's
node that moves to another controller mid-drain gets its bound.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from swarm.api.v1 import objects_pb2 as pb


@dataclass
class Drain:
    task_id: str
    node_id: str  # where the task runs: who is told
    required: Mapping[str, int]  # network -> the peer-set version to confirm
    # The nodes still to confirm (see holds), found when the drain began and
    # shrinking as they confirm or go away: each confirmation looks only at
    # the drains waiting for its node, not at every drain and every node.
    pending: set[str] = field(default_factory=set)
    # The other controllers still to report the task drained on their side:
    # those registered when the drain began, less those that reported (or
    # left the registry) since.
    controllers: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class NodeView:
    """What this controller knows of one node's session."""

    sent: Mapping[str, int]  # network -> version last sent
    acked: Mapping[str, int]  # network -> version confirmed
    confirms: bool  # has confirmed anything in this session


def is_stopping(task: pb.Task | None) -> bool:
    """Told to stop and not ended yet (so it may still be a backend somewhere)."""
    return task is not None and task.desired_state > pb.RUNNING \
        and pb.ASSIGNED <= task.status.state <= pb.RUNNING


def starts_draining(old: pb.Task | None, new: pb.Task | None) -> bool:
    """Whether this change is the one that tells a task on networks to stop."""
    return new is not None and bool(new.networks) and is_stopping(new) \
        and not is_stopping(old)


def holds(required: Mapping[str, int], node: NodeView) -> bool:
    """Whether the node has yet to confirm a drain: it confirms at all, was
    sent one of the networks, and has not confirmed the required version."""
    return node.confirms and any(
        network_id in node.sent and node.acked.get(network_id, 0) < version
        for network_id, version in required.items())


def is_drained(drain: Drain, nodes: Iterable[NodeView]) -> bool:
    """Whether every confirming node that has one of the task's networks has
    confirmed the version without it."""
    return not any(holds(drain.required, node) for node in nodes)


def awaited_controllers(live: Iterable[str], identity: str,
                        reported: Iterable[str]) -> set[str]:
    """The other controllers a drain starting now waits for: every live one
    but this one, less those that reported it drained already (a report may
    come before this controller's watch has seen the stop)."""
    return set(live) - {identity} - set(reported)


def still_awaited(awaited: set[str], live: Iterable[str]) -> set[str]:
    """Of the controllers awaited, those still registered: one that left the
    registry (died, or stopped) reports nothing more and is not waited for."""
    return awaited & set(live)


def is_complete(drain: Drain) -> bool:
    """Drained here and reported drained by every other controller awaited."""
    return not drain.pending and not drain.controllers


def keeps_early_report(task: pb.Task | None) -> bool:
    """Whether a report of a task this controller has no drain for is worth
    keeping for when its watch sees the stop: not when the task is gone or
    has ended (the report comes late, and nothing would ever remove it)."""
    return task is not None and (task.desired_state <= pb.RUNNING or is_stopping(task))
