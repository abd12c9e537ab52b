"""Drain before stop, on the leader: when may a task told to stop get its
stop signal?

A task told to stop (desired state past RUNNING) stops being ready at once
(peers.is_ready), so every node on its networks is sent a new version of
their peer sets without it as a backend: DNS, the VIP load balancers and the
routing mesh (the ingress network is one of its networks when its service
publishes ports) stop choosing it. Each agent confirms the versions it has
in force (HeartbeatRequest.applied, sent right after applying). The task is
*drained* once every node that was sent one of its networks has confirmed,
for each of them, at least the version recorded when the task began to
stop; the dispatcher then tells the task's node (Assignments.drained) and
its agent sends the stop signal. The agent never waits longer than the
task's drain timeout (agent.worker.drain_left): a node that is slow, gone or
cut off costs that bound, not the stop.

Nodes whose agent has confirmed nothing in this session (simulated nodes,
agents that do not confirm) are not waited for: they would only ever cost
the bound. A node whose session ends stops counting too (its agent serves
nothing until it has a session again, and then it starts from a complete
set without the task as a backend). Drains are kept in the leader's memory:
after a failover the agents' bound applies.
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


@dataclass(frozen=True)
class NodeView:
    """What the leader knows of one node's session."""

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
