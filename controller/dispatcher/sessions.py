"""Agent sessions: one open stream per node, and what is owed to it.

A Session is the dispatcher's record of one agent's stream: the tasks and
networks that changed since its last message (filled by the assignments
module from cache changes), what it was last sent of each network, the
drain-before-stop bookkeeping, and the event that wakes its stream.
`Sessions` maps nodes to their current session; opening a session for a node
closes the one it replaces.

Messages are batched: a woken stream waits `assignment_flush_interval`
before it takes what is owed (a scheduler pass writes its placements in many
transactions; without the pause a node with 20 new tasks got 20 messages),
and `network_flush_interval` when networks changed, unless something waits
for this node (a task told to stop or removed, a stop's drained word): then
it goes at once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from swarm.api.loops import paced_pause
from swarm.api.v1 import objects_pb2 as pb

from ..drain import NodeView


@dataclass
class Session:
    node_id: str
    session_id: str
    # Tasks changed since the last message: task -> new version, or None if removed.
    dirty: dict[str, pb.Task | None] = field(default_factory=dict)
    # Networks whose assignment may have changed since the last message.
    dirty_networks: set[str] = field(default_factory=set)
    # The peer-set version (PeerTable) the agent was last sent, per network: the
    # next message carries only what changed after it, and the networks the
    # agent has are removed when it no longer needs them.
    sent_networks: dict[str, int] = field(default_factory=dict)
    # What it was last told of the routing mesh besides the peers (mesh.py).
    sent_mesh: bytes | None = None
    # Drain before stop (drain.py): the peer-set versions the agent confirmed
    # having in force, whether it confirms at all, and the tasks of this node
    # to tell that they are drained.
    acked: dict[str, int] = field(default_factory=dict)
    confirms: bool = False
    drained: set[str] = field(default_factory=set)
    # A task is waiting for this node (its removal to apply, or its drained
    # word): the next message goes without the coalescing pause.
    urgent: bool = False
    # The controller set changed since the last message.
    controllers_dirty: bool = False
    # The agent takes compact network deltas (SessionRequest.compact_deltas).
    compact_deltas: bool = False
    # ... with their peers grouped (SessionRequest.peer_groups).
    peer_groups: bool = False
    # When it was sent networks the last two times (monotonic): peer news
    # goes at once unless two messages went within the last two coalescing
    # windows (a task start, its endpoint then its readiness, is two quick
    # messages; a burst still averages one per window).
    networks_sent: tuple[float, float] = (0.0, 0.0)

    def sent_networks_now(self) -> None:
        self.networks_sent = (self.networks_sent[1], time.monotonic())
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    def close(self) -> None:
        self.closed = True
        self.wake.set()

    def view(self) -> NodeView:
        return NodeView(self.sent_networks, self.acked, self.confirms)

    async def wait_for_news(self, assignment_flush: float, network_flush: float) -> None:
        """Until there is something to send (or the session is closed),
        with the coalescing pause unless the news is urgent: peer news at
        most twice per two network_flush windows, the rest after a short
        pause (a lone task start reaches the other nodes at once; a burst
        still becomes about one message per window)."""
        await self.wake.wait()
        if not self.closed and not self.urgent:
            pause = assignment_flush
            if self.dirty_networks:
                # Two messages per two windows: the one before last is the pace's mark.
                first = pause if self.dirty else NETWORK_FIRST_PAUSE  # peer news alone: nothing to gather
                pause = paced_pause(self.networks_sent[0], 2 * network_flush, first, time.monotonic())
            await asyncio.sleep(pause)
        self.wake.clear()
        self.urgent = False


NETWORK_FIRST_PAUSE = 0.005  # gathers one status write's changes
# Peer news messages per second the sessions of one controller are paced to
# during a burst, all together: each message costs the controller its
# stream's turn, serialization and a send whatever it carries, so 500 nodes
# each paced to the base window were 5,000 small messages a second that
# left the loop no time for anything else (heartbeats included).
NETWORK_MESSAGES_PER_S = 1000.0


def network_window(base: float, sessions: int,
                   rate: float = NETWORK_MESSAGES_PER_S) -> float:
    """The peer news window of each session: the base window, widened so
    that `sessions` sessions each sending one message per window stay
    within `rate` messages a second. Only bursts are paced: news after a
    quiet spell still goes at once (Session.wait_for_news), so a lone task
    start reaches every node as quickly at any scale."""
    return max(base, sessions / rate)


class Sessions(dict[str, Session]):
    """The current session of each node."""

    def open(self, session: Session) -> None:
        previous = self.get(session.node_id)
        if previous is not None:
            previous.close()
        self[session.node_id] = session

    def end(self, session: Session) -> bool:
        """The session's stream ended; whether it was still the node's current one."""
        if self.get(session.node_id) is session:
            del self[session.node_id]
            return True
        return False

    def close_all(self) -> None:
        for session in self.values():
            session.close()
