"""Liveness of nodes served by followers: the leader must know a node is
alive when another controller holds its session, without an etcd write per
heartbeat.

Every controller serves agent sessions and keeps its nodes' beats in memory
(heartbeats.py). A follower tells the leader which of its nodes beat, in one
internal call (Dispatcher.ReportAlive) every half heartbeat period: the node
IDs that beat since the last report that was taken. The leader counts each as
a beat of that node; a node silent everywhere is missing from every report
and the leader marks it DOWN after HEARTBEAT_MISSES periods, as for a node of
its own. A report the leader did not take (it is dead, or is not the leader
any more) is kept and merged into the next one, sent to whoever leads then.

Why this design and not per-controller etcd leases with one key per session:
- cost: the leader handles one small RPC per follower per half period (a dict
  write per node, as for its own beats) and etcd hears nothing; the lease
  design writes one key per session open and close (a burst of 1,000
  sessions is 1,000 puts, seen by every controller's watch) and needs every
  key rewritten when a controller's lease is granted anew;
- detection time: a silent node on a follower is judged by the leader's own
  clock, HEARTBEAT_MISSES periods after its last beat, as today; with leases
  the leader learns of it only when the follower ends the session (its own
  HEARTBEAT_MISSES periods) and must then wait out a grace of its own, or
  the follower must decide DOWN itself, and the leader alone decides;
- the failure cases fall out: a follower that dies (SIGKILL) stops
  reporting, its agents open sessions elsewhere within the grace and the new
  controller reports them; a follower that is paused reports nothing and its
  agents' heartbeats time out, so they move too; a new leader grants every
  READY node a full grace period (as before), and followers send their next
  report to it.
- the leader also grants a grace to a node that becomes READY through a
  follower's session before the follower's first report reaches it, so a
  node whose follower dies at once is still judged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import dispatcher_pb2_grpc as dgrpc

log = logging.getLogger(__name__)

Dial = Callable[[str], grpc.aio.Channel]


def merge_report(unsent: set[str], beaten: set[str]) -> set[str]:
    """What the next report carries: what the last report could not deliver
    and what beat since."""
    return unsent | beaten


class AliveReporter:
    """On a follower: the nodes that beat here since the last report taken by
    the leader, and the loop that reports them."""

    def __init__(self, identity: str, dial: Dial) -> None:
        self._identity = identity
        self._dial = dial
        self.beaten: set[str] = set()
        self._channels: dict[str, grpc.aio.Channel] = {}

    def beat(self, node_id: str) -> None:
        self.beaten.add(node_id)

    def _stub(self, addr: str) -> dgrpc.DispatcherAsyncStub:
        channel = self._channels.get(addr)
        if channel is None:
            channel = self._channels[addr] = self._dial(addr)
        return dgrpc.DispatcherStub(channel)

    async def report(self, leader: str, timeout: float) -> bool:
        """Send what beat to the leader; whether it was taken (if not, it is
        kept for the next report)."""
        if not self.beaten or not leader or leader == self._identity:
            return False
        sent, self.beaten = self.beaten, set()
        try:
            await self._stub(leader).ReportAlive(
                dpb.ReportAliveRequest(controller=self._identity, node_ids=sorted(sent)),
                timeout=timeout)
            return True
        except grpc.aio.AioRpcError as error:
            log.info("leader %s did not take the report of %d live nodes: %s %s", leader,
                     len(sent), error.code().name, error.details())
            # A channel reconnects by itself: kept for the next report.
            self.beaten = merge_report(sent, self.beaten)
            return False

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close(None)
