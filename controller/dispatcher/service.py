"""The dispatcher's gRPC service: agents' sessions, heartbeats and task
status, on the leader.

An agent registers once (getting its node ID), then keeps one session stream
open: the first message carries the complete set of its assigned tasks, later
ones only what changed (assignments.py computes them, sessions.py batches
them). Heartbeats live in memory (heartbeats.py); a node silent for
HEARTBEAT_MISSES periods of the leader's serving time is marked DOWN (and the
orchestrator replaces its tasks). Status reports and node state go to etcd
through status.py.

With mutual TLS the node ID is the CN of the agent's certificate: Register
binds it (the node object gets the certificate's ID), and an agent may open
only its own session, heartbeat only for it and report status only for tasks
assigned to it (PERMISSION_DENIED otherwise). Which roles may call at all is
the server's AuthInterceptor's business (swarm.api.channels).

A follower refuses every call with FAILED_PRECONDITION and names the leader in
the trailing metadata key `swarm-leader-addr`, so agents can follow it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
from google.protobuf.duration_pb2 import Duration

from swarm.api import pki
from swarm.api.loops import cancel_all, start_supervised
from swarm.api.metadata import LEADER_METADATA_KEY
from swarm.api.telemetry import NO_TELEMETRY, Telemetry
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import dispatcher_pb2_grpc as dgrpc
from swarm.api.v1 import logs_pb2 as lpb
from swarm.api.v1 import objects_pb2 as pb

from ..drain import Drain
from ..heartbeat import DEFAULT_HEARTBEAT_PERIOD, heartbeat_period
from ..ids import new_id
from ..leadership import Leadership
from ..logbroker import LogBroker, PublishRefused
from ..payloads import PayloadServer, serve_task_payloads
from ..pullauth import PullCredentials
from ..store import Change, Conflict, Create, Guard, NodeChange, Store, StoreError
from .assignments import Assignments
from .heartbeats import HEARTBEAT_MISSES, Heartbeats
from .sessions import Session as NodeSession
from .sessions import Sessions
from .status import StatusWriter, mark_node, set_conditions

log = logging.getLogger(__name__)

__all__ = ["HEARTBEAT_MISSES", "Dispatcher", "DispatcherSettings"]


@dataclass(frozen=True)
class DispatcherSettings:
    heartbeat_period: float = DEFAULT_HEARTBEAT_PERIOD  # unless the cluster object sets one
    status_flush_interval: float = 0.02  # coalescing window for status writes
    # Coalescing window for peer updates: a burst of task placements becomes one
    # message per node, not one per transaction.
    network_flush_interval: float = 0.1
    # Coalescing window for task assignments: a scheduler pass's many
    # transactions become one message per node.
    assignment_flush_interval: float = 0.02


@dataclass
class _LeaderState:
    guard: Guard
    heartbeats: Heartbeats
    status: StatusWriter
    sessions: Sessions = field(default_factory=Sessions)
    assignments: Assignments | None = None

    @property
    def drains(self) -> dict[str, Drain]:  # the pending drains by task (tests read it)
        assert self.assignments is not None
        return self.assignments.drains


def _duration(value: float) -> Duration:
    result = Duration()
    result.FromNanoseconds(int(value * 1e9))
    return result


class Dispatcher(dgrpc.DispatcherServicer):
    def __init__(self, store: Store, leadership: Leadership,
                 settings: DispatcherSettings | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._leadership = leadership
        self.settings = settings or DispatcherSettings()
        self._clock = clock
        self._state: _LeaderState | None = None
        # The heartbeat answer, made once per period value (it is the same
        # for every beat of every node).
        self._beat_answer: tuple[float, dpb.HeartbeatResponse] | None = None
        store.cache.subscribe(self._on_change)
        store.cache.controller_listeners.append(self._on_controllers)
        self.logs: LogBroker | None = None  # serves the log RPCs when set (controller.server)
        self.payloads: PayloadServer | None = None  # secrets and configs (controller/payloads.py)
        self.pull_auth: PullCredentials | None = None  # registry credentials (pullauth.py)
        self.telemetry: Telemetry = NO_TELEMETRY  # metrics (controller/metrics.py)

    def session_count(self) -> int:
        """Agent sessions served now (0 unless leading)."""
        return len(self._state.sessions) if self._state is not None else 0

    # ------------------------------------------------------------ leading

    def heartbeat_period(self) -> float:
        return heartbeat_period(self._store.cache.clusters.values(),
                                self.settings.heartbeat_period)

    def _heartbeat_response(self) -> dpb.HeartbeatResponse:
        period = self.heartbeat_period()
        answer = self._beat_answer
        if answer is None or answer[0] != period:
            answer = self._beat_answer = (period, dpb.HeartbeatResponse(period=_duration(period)))
        return answer[1]

    async def serve_as_leader(self, guard: Guard) -> None:
        """Run the leader's side (node monitor, status writer) until cancelled."""
        cache = self._store.cache
        state = _LeaderState(guard=guard, heartbeats=Heartbeats(self._clock),
                             status=StatusWriter(self._store, guard,
                                                 self.settings.status_flush_interval))
        state.assignments = Assignments(cache, state.sessions, self.pull_auth)
        # Every node gets a full grace period to find the new leader.
        for node in cache.nodes.values():
            if node.status.state == pb.NodeStatus.READY:
                state.heartbeats.grant(node.id)
        self._state = state
        loops = [
            start_supervised("dispatcher-node-monitor", lambda: self._monitor_nodes(state)),
            start_supervised("dispatcher-status-writer", state.status.run),
        ]
        try:
            await asyncio.Future()  # until cancelled
        finally:
            self._state = None
            state.sessions.close_all()
            await cancel_all(loops)

    async def _leader_state(self, context: grpc.aio.ServicerContext[object, object]) -> _LeaderState:
        state = self._state
        if state is None:
            # Read from etcd, not the cache: a lagging cache would name a dead leader.
            leader = await self._leadership.confirmed_leader()
            context.set_trailing_metadata(((LEADER_METADATA_KEY, leader),))
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"this controller is not the leader; the leader is {leader or 'unknown'}")
        assert state is not None
        return state

    # ------------------------------------------------------------ RPCs

    @staticmethod
    async def _certified_node(context: grpc.aio.ServicerContext[object, object]) -> str | None:
        """The node ID of the caller's certificate; None on an --insecure server."""
        try:
            peer = pki.peer_identity(context)
        except pki.PKIError as error:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(error))
            raise AssertionError("unreachable") from None
        return peer.node_id if peer is not None else None

    async def _check_caller(self, node_id: str,
                            context: grpc.aio.ServicerContext[object, object]) -> None:
        certified = await self._certified_node(context)
        if certified is not None and certified != node_id:
            log.warning("node %s tried to act as node %s", certified, node_id)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"the certificate of node {certified} cannot act for node {node_id}")

    async def Register(self, request: dpb.RegisterRequest,
                       context: grpc.aio.ServicerContext[object, object]) -> dpb.RegisterResponse:
        state = await self._leader_state(context)
        certified = await self._certified_node(context)
        if certified is not None and certified in self._store.cache.nodes:
            return dpb.RegisterResponse(node_id=certified)  # registered before: same node
        node = pb.Node(
            id=certified or new_id(),
            spec=pb.NodeSpec(labels=request.labels, role=request.role,
                             availability=pb.NodeSpec.ACTIVE),
            description=request.description,
            status=pb.NodeStatus(state=pb.NodeStatus.UNKNOWN),
        )
        try:
            await self._store.commit([Create(node)], guard=state.guard)
        except (Conflict, StoreError) as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"could not register node: {error}")
        log.info("registered node %s (%s) as a %s", node.id, request.description.hostname,
                 pb.NodeSpec.Role.Name(request.role).lower())
        return dpb.RegisterResponse(node_id=node.id)

    async def Session(self, request: dpb.SessionRequest,
                      context: grpc.aio.ServicerContext[object, object]
                      ) -> AsyncIterator[dpb.SessionMessage]:
        state = await self._leader_state(context)
        assignments = state.assignments
        assert assignments is not None
        node_id = request.node_id
        await self._check_caller(node_id, context)
        if node_id not in self._store.cache.nodes:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"node {node_id} is not known; register again")
        session = NodeSession(node_id=node_id, session_id=new_id(),
                              compact_deltas=request.compact_deltas)
        state.sessions.open(session)
        state.heartbeats.beat(node_id)
        try:
            description = request.description if request.HasField("description") else None
            node = self._store.cache.nodes.get(node_id)
            # etcd hears of a session only when it changes the node: a node
            # already READY with the same description is not written again.
            if node is None or node.status.state != pb.NodeStatus.READY or (
                    description is not None and node.description != description):
                await mark_node(self._store, state.guard, node_id, pb.NodeStatus.READY, "",
                                description=description)
        except (Conflict, StoreError) as error:
            state.sessions.end(session)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"could not open session: {error}")
        log.info("session %s opened for node %s", session.session_id, node_id)
        settings = self.settings
        try:
            yield dpb.SessionMessage(
                session_id=session.session_id,
                heartbeat_period=_duration(self.heartbeat_period()),
                assignments=assignments.complete(session),
                controllers=self._controller_set(),
            )
            while True:
                await session.wait_for_news(settings.assignment_flush_interval,
                                            settings.network_flush_interval)
                if session.closed:
                    return
                message = assignments.incremental(session)
                controllers, session.controllers_dirty = session.controllers_dirty, False
                if message is None and not controllers:
                    continue
                yield dpb.SessionMessage(
                    session_id=session.session_id,
                    assignments=message or dpb.Assignments(type=dpb.Assignments.INCREMENTAL),
                    controllers=self._controller_set() if controllers else (),
                )
        finally:
            state.sessions.end(session)
            assignments.ended(session)
            log.info("session %s of node %s ended", session.session_id, node_id)
            if node_id not in state.sessions:
                # Not replaced: nothing to wait for there.
                assignments.release_node(node_id)

    async def Heartbeat(self, request: dpb.HeartbeatRequest,
                        context: grpc.aio.ServicerContext[object, object]) -> dpb.HeartbeatResponse:
        # The hot path of thousands of nodes: a dict lookup and a dict write,
        # and the same answer object each time.
        state = await self._leader_state(context)
        await self._check_caller(request.node_id, context)
        session = await self._check_session(state, request.node_id, request.session_id, context)
        state.heartbeats.beat(request.node_id)
        if request.applied:
            assert state.assignments is not None
            state.assignments.heard(session, list(request.applied))
        node = self._store.cache.nodes.get(request.node_id)
        if node is not None and node.status.conditions != request.conditions:
            # Rare (a disk filling up or freed): written at once, beside the beat.
            with contextlib.suppress(Conflict, StoreError):
                await set_conditions(self._store, state.guard, request.node_id,
                                     list(request.conditions))
        return self._heartbeat_response()

    async def UpdateTaskStatus(self, request: dpb.UpdateTaskStatusRequest,
                               context: grpc.aio.ServicerContext[object, object]
                               ) -> dpb.UpdateTaskStatusResponse:
        state = await self._leader_state(context)
        await self._check_caller(request.node_id, context)
        await self._check_session(state, request.node_id, request.session_id, context)
        tasks = self._store.cache.tasks
        accepted: list[dpb.TaskStatusUpdate] = []
        # All checked before any is queued: a refused batch changes nothing.
        for update in request.updates:
            task = tasks.get(update.task_id)
            if task is None:
                continue  # deleted meanwhile; the next complete set tells the agent
            if task.node_id != request.node_id:
                log.warning("node %s reported status for task %s of node %s",
                            request.node_id, update.task_id, task.node_id)
                await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                    f"task {update.task_id} is not assigned to node {request.node_id}")
            accepted.append(update)
        for update in accepted:
            state.status.queue(request.node_id, update.task_id, update.status)
        return dpb.UpdateTaskStatusResponse()

    async def _check_session(self, state: _LeaderState, node_id: str, session_id: str,
                             context: grpc.aio.ServicerContext[object, object]) -> NodeSession:
        session = state.sessions.get(node_id)
        if session is None or session.session_id != session_id:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"session {session_id} of node {node_id} is not current; open a new one")
        assert session is not None
        return session

    # ------------------------------------------------------------ controllers

    def _controller_set(self) -> list[str]:
        """Every registered controller's address, this one's (the leader's) too."""
        addrs = set(self._store.cache.controllers)
        addrs.add(self._leadership.identity)
        return sorted(addrs)

    def _on_controllers(self) -> None:
        state = self._state
        if state is None:
            return
        for session in state.sessions.values():
            session.controllers_dirty = True
            session.wake.set()

    # ------------------------------------------------------------ changes

    def _on_change(self, change: Change) -> None:
        state = self._state
        if state is None or state.assignments is None:
            return
        state.assignments.on_change(change)
        match change:
            case NodeChange(object_id=node_id, new=None):
                state.heartbeats.forget(node_id)
            case _:
                pass

    # ------------------------------------------------------------ nodes

    async def _monitor_nodes(self, state: _LeaderState) -> None:
        while True:
            period = self.heartbeat_period()
            await asyncio.sleep(period / 2)
            assert state.assignments is not None
            for node_id, seen in state.heartbeats.expired(period / 2, period).items():
                node = self._store.cache.nodes.get(node_id)
                session = state.sessions.pop(node_id, None)
                if session is not None:
                    session.close()
                if node is not None and node.status.state != pb.NodeStatus.DOWN:
                    log.warning("node %s missed %d heartbeats: marking it down",
                                node_id, HEARTBEAT_MISSES)
                    self.telemetry.inc("swarm_dispatcher_missed_heartbeats_total")
                    try:
                        await mark_node(self._store, state.guard, node_id, pb.NodeStatus.DOWN,
                                        "heartbeat failure")
                    except (Conflict, StoreError) as error:
                        # Try again next round (unless it has come back meanwhile).
                        log.warning("cannot mark node %s down: %s", node_id, error)
                        state.heartbeats.restore(node_id, seen)

    # ------------------------------------------------------------ logs (controller/logbroker.py)

    async def _log_broker(self, context: grpc.aio.ServicerContext[object, object]) -> LogBroker:
        if self.logs is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this controller serves no logs")
        assert self.logs is not None
        return self.logs

    async def ListenSubscriptions(self, request: lpb.ListenSubscriptionsRequest,
                                  context: grpc.aio.ServicerContext[object, object]
                                  ) -> AsyncIterator[lpb.SubscriptionMessage]:
        state = await self._leader_state(context)
        await self._check_caller(request.node_id, context)
        await self._check_session(state, request.node_id, request.session_id, context)
        broker = await self._log_broker(context)
        async with contextlib.aclosing(broker.listen(request.node_id)) as messages:
            async for message in messages:
                yield message

    async def PublishLogs(self, request_iterator: AsyncIterator[lpb.PublishLogsMessage],
                          context: grpc.aio.ServicerContext[object, object]
                          ) -> lpb.PublishLogsResponse:
        state = await self._leader_state(context)
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return lpb.PublishLogsResponse()
        await self._check_caller(first.node_id, context)
        await self._check_session(state, first.node_id, first.session_id, context)
        broker = await self._log_broker(context)
        try:
            await broker.publish(first.node_id, first, aiter(request_iterator))
        except PublishRefused as error:
            log.warning("node %s: log messages refused: %s", first.node_id, error)
            await context.abort(error.code, str(error))
        return lpb.PublishLogsResponse()

    # ------------------------------------------------------------ payloads (controller/payloads.py)

    async def TaskPayloads(self, request: dpb.TaskPayloadsRequest,
                           context: grpc.aio.ServicerContext[object, object]
                           ) -> dpb.TaskPayloadsResponse:
        await self._check_caller(request.node_id, context)
        return await serve_task_payloads(self.payloads, request.node_id, request.task_id, context)
