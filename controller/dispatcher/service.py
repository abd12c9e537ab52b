"""The dispatcher's gRPC service: agents' sessions, heartbeats and task
status, on every controller.

An agent registers once (getting its node ID), then keeps one session stream
open: the first message carries the complete set of its assigned tasks, later
ones only what changed (assignments.py computes them, sessions.py batches
them). Heartbeats live in memory (heartbeats.py); a node silent for
HEARTBEAT_MISSES periods of the leader's serving time is marked DOWN (and the
orchestrator replaces its tasks). Status reports and node state go to etcd
through status.py.

Every controller serves sessions, so session and TLS work spreads over
processes while the leader alone decides (orchestrator, allocator,
scheduler): a follower sends assignments from its own watch cache, writes
status reports with the same compare-and-swap and forward-only rules as the
leader (status.py, unfenced: a report decides nothing), and tells the leader
which of its nodes beat (liveness.py), so only the leader marks nodes DOWN.
An agent stays with the controller it reached and moves to another only
when that one fails; nothing is replaced if it comes back within the grace.
A node a follower serves that the leader marks DOWN anyway (a report lost)
has its session closed there, so its agent opens a new one and is READY
again. Drain before stop (drain.py, assignments.py) holds across
controllers: each judges the nodes it serves and reports the tasks drained
on its side to the others (drainreports.py, the internal ReportDrained).

With mutual TLS the node ID is the CN of the agent's certificate: Register
binds it (the node object gets the certificate's ID), and an agent may open
only its own session, heartbeat only for it and report status only for tasks
assigned to it (PERMISSION_DENIED otherwise). Which roles may call at all is
the server's AuthInterceptor's business (swarm.api.channels).

Log subscriptions (logbroker.py) live on the leader: a follower relays its
nodes' ListenSubscriptions and PublishLogs streams to the leader (marked with
the relayed-by metadata key; the leader takes them only from a controller's
certificate, the follower having checked the node's).
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
from swarm.api.telemetry import NO_TELEMETRY, Telemetry
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import dispatcher_pb2_grpc as dgrpc
from swarm.api.v1 import logs_pb2 as lpb
from swarm.api.v1 import objects_pb2 as pb

from ..api.errors import (
    Context,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    Relayed,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from ..api.logs import RELAYED_METADATA_KEY
from ..ca import is_controller
from ..drain import Drain
from ..heartbeat import DEFAULT_HEARTBEAT_PERIOD, heartbeat_period
from ..ids import new_id
from ..leadership import Leadership
from ..logbroker import LogBroker, PublishRefused
from ..payloads import PayloadServer, serve_task_payloads
from ..pullauth import PullCredentials
from ..store import Change, Conflict, Create, Guard, NodeChange, Store, StoreError
from ..wire import Encoded, session_message
from ..wire import assignments as encode
from .assignments import Assignments
from .beatserver import BeatLedger, BeatView
from .drainreports import DrainReporter
from .heartbeats import HEARTBEAT_MISSES, Heartbeats, backlog_limit
from .liveness import AliveReporter, Dial
from .sessions import Session as NodeSession
from .sessions import Sessions, network_window
from .status import StatusWriter, mark_node, set_conditions

log = logging.getLogger(__name__)

# A session message with controllers and no assignment news.
NO_NEWS: Encoded = encode(dpb.Assignments(type=dpb.Assignments.INCREMENTAL), ())

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
class _ServingState:
    heartbeats: Heartbeats
    status: StatusWriter
    reporter: AliveReporter
    drain_reports: DrainReporter
    sessions: Sessions = field(default_factory=Sessions)
    assignments: Assignments | None = None
    # Beats handled by the heartbeat server's threads, folded in on the loop.
    ledger: BeatLedger = field(default_factory=BeatLedger)

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
                 clock: Callable[[], float] = time.monotonic,
                 dial: Dial | None = None) -> None:
        self._store = store
        self._leadership = leadership
        self.settings = settings or DispatcherSettings()
        self._clock = clock
        # A channel to another controller (the leader, for liveness reports).
        self._dial: Dial = dial or (lambda addr: grpc.aio.insecure_channel(addr))
        self._state: _ServingState | None = None
        self._log_channels: dict[str, grpc.aio.Channel] = {}  # to the leader, for log relays
        self._guard: Guard | None = None  # while leading
        # The heartbeat answer, made once per period value (it is the same
        # for every beat of every node).
        self._beat_answer: tuple[float, dpb.HeartbeatResponse] | None = None
        store.cache.subscribe(self._on_change)
        store.cache.controller_listeners.append(self._on_controllers)
        self.logs: LogBroker | None = None  # serves the log RPCs when set (controller.server)
        self.payloads: PayloadServer | None = None  # secrets and configs (controller/payloads.py)
        self.pull_auth: PullCredentials | None = None  # registry credentials (pullauth.py)
        self.telemetry: Telemetry = NO_TELEMETRY  # metrics (controller/metrics.py)
        # The heartbeat server's address agents are told (beatserver.py); empty: none.
        self.beat_addr = ""
        self._beat_view: BeatView | None = None  # what its threads read
        self._extras: set[asyncio.Task[None]] = set()  # condition writes handed over by it

    def session_count(self) -> int:
        """Agent sessions served now by this controller."""
        return len(self._state.sessions) if self._state is not None else 0

    def heartbeat_max_lag(self) -> float:
        """The longest a heartbeat waited here before it was handled (seconds)."""
        return self._state.heartbeats.max_lag if self._state is not None else 0.0

    def beat_server_max_lag(self) -> float:
        """The longest a heartbeat waited in the heartbeat server (seconds)."""
        return self._state.ledger.max_lag if self._state is not None else 0.0

    def beat_server_max_gap(self) -> float:
        """The longest time between two signs of life of one node, as the
        node monitor saw them arrive (a beat from the heartbeat server after
        any sign of life)."""
        return self._state.heartbeats.max_gap if self._state is not None else 0.0

    def beat_server_beats(self) -> int:
        """Heartbeats the heartbeat server recorded."""
        return self._state.ledger.count if self._state is not None else 0

    def beat_view(self) -> BeatView | None:
        """The serving state as the heartbeat server's threads read it."""
        return self._beat_view

    def probe_max_wait(self) -> float:
        """The longest the node monitor's probe took to come back through this
        controller's queue (seconds; heartbeats.py)."""
        return self._state.heartbeats.max_probe_wait if self._state is not None else 0.0

    def heartbeat_period(self) -> float:
        cache = self._store.cache
        return heartbeat_period(cache.clusters.values(), self.settings.heartbeat_period,
                                nodes=len(cache.nodes))

    def _heartbeat_response(self) -> dpb.HeartbeatResponse:
        period = self.heartbeat_period()
        answer = self._beat_answer
        if answer is None or answer[0] != period:
            answer = self._beat_answer = (period, dpb.HeartbeatResponse(period=_duration(period)))
        return answer[1]

    # ------------------------------------------------------------ serving

    async def serve(self) -> None:
        """Serve agent sessions until cancelled (every controller): the
        session monitor, the status writer and, while following, the
        liveness reports to the leader."""
        cache = self._store.cache
        state = _ServingState(heartbeats=Heartbeats(self._clock),
                              status=StatusWriter(self._store, lambda: self._guard,
                                                  self.settings.status_flush_interval),
                              reporter=AliveReporter(self._leadership.identity, self._dial),
                              drain_reports=DrainReporter(self._leadership.identity, self._dial,
                                                          lambda: cache.controllers))
        state.assignments = Assignments(cache, state.sessions, self.pull_auth,
                                        identity=self._leadership.identity,
                                        announce=state.drain_reports.announce)
        self._state = state
        loop = asyncio.get_running_loop()

        def on_loop(request: dpb.HeartbeatRequest) -> None:  # called from the beat threads
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(self._beat_extras, state, request)

        nodes = cache.nodes

        def node_conditions(node_id: str) -> list[str] | None:
            node = nodes.get(node_id)
            return None if node is None else list(node.status.conditions)

        self._beat_view = BeatView(ledger=state.ledger, sessions=state.sessions,
                                   node_conditions=node_conditions,
                                   now=state.heartbeats.clock.now, on_loop=on_loop,
                                   answer=self._heartbeat_response(),
                                   period=self.heartbeat_period(), loop_tick=time.monotonic())
        loops = [
            start_supervised("dispatcher-beat-ledger", lambda: self._take_beats(state)),
            start_supervised("dispatcher-node-monitor", lambda: self._monitor_nodes(state)),
            start_supervised("dispatcher-beat-probe", lambda: self._probe_beats(state)),
            start_supervised("dispatcher-beat-server-probe",
                             lambda: self._probe_beats(state, "heartbeat server")),
            start_supervised("dispatcher-status-writer", state.status.run),
            start_supervised("dispatcher-liveness-reports", lambda: self._report_alive(state)),
            start_supervised("dispatcher-drain-reports", state.drain_reports.run),
        ]
        try:
            await asyncio.Future()  # until cancelled
        finally:
            self._state = None
            self._beat_view = None
            state.sessions.close_all()
            await cancel_all(loops)
            await state.reporter.close()
            await state.drain_reports.close()
            channels, self._log_channels = self._log_channels, {}
            for channel in channels.values():
                await channel.close(None)

    async def serve_as_leader(self, guard: Guard) -> None:
        """The leader's side (marking silent nodes DOWN, fenced writes) until
        cancelled."""
        self._guard = guard
        state = self._state
        if state is not None:
            # Every node gets a full grace period to find a controller (or for
            # its follower's next report to arrive here).
            for node in self._store.cache.nodes.values():
                if node.status.state == pb.NodeStatus.READY:
                    state.heartbeats.grant(node.id)
        try:
            await asyncio.Future()  # until cancelled
        finally:
            self._guard = None

    def _serving(self) -> _ServingState:
        state = self._state
        if state is None:
            raise Unavailable("this controller is starting or stopping; try another")
        return state

    async def _report_alive(self, state: _ServingState) -> None:
        while True:
            period = self.heartbeat_period()
            await asyncio.sleep(period / 2)
            if self._guard is not None:
                state.reporter.beaten.clear()  # the leader's own beats count here already
                continue
            self._fold_beats(state)
            await state.reporter.report(self._leadership.leader_addr, timeout=period)

    def _fold_beats(self, state: _ServingState) -> None:
        """The beats the heartbeat server's threads handled since the last
        fold count now (on a follower, for the leader too)."""
        taken, lag = state.ledger.take()
        # Judged only up to where this server has read its queue too.
        state.heartbeats.lag(lag)
        seen = state.heartbeats.seen
        following = self._guard is None
        for node_id, at in taken.items():
            seen(node_id, at)
            if following:
                state.reporter.beat(node_id)

    async def _take_beats(self, state: _ServingState) -> None:
        """Fold the heartbeat server's beats in, and tell its threads the
        loop still turns (and the current period and answer), a few times a
        second: a tick late by more than beatserver.stall_limit makes them
        refuse beats, so agents leave a controller whose loop is wedged."""
        while True:
            view = self._beat_view
            if view is not None:
                view.answer = self._heartbeat_response()
                view.period = self.heartbeat_period()
                view.loop_tick = time.monotonic()
            self._fold_beats(state)
            await asyncio.sleep(min(0.25, self.heartbeat_period() / 8))

    def _beat_extras(self, state: _ServingState, request: dpb.HeartbeatRequest) -> None:
        """A beat handled off the loop carried more than a sign of life:
        confirmed networks, or conditions unlike the node's stored ones.
        Done here, as the main server's Heartbeat does (_beat_news)."""
        if self._state is not state:
            return
        try:
            session = self._check_session(state, request.node_id, request.session_id)
        except NotFound:
            return  # the session ended meanwhile
        conditions = self._beat_news(state, session, request)
        if conditions is not None:
            task = asyncio.create_task(self._write_conditions(request.node_id, conditions),
                                       name=f"conditions-{request.node_id}")
            self._extras.add(task)
            task.add_done_callback(self._extras.discard)

    def _beat_news(self, state: _ServingState, session: NodeSession,
                   request: dpb.HeartbeatRequest) -> list[str] | None:
        """What a beat says beyond a sign of life: the networks it confirms
        are heard at once; the node's conditions are returned when they
        differ from the stored ones (rare: a disk filling up or freed), to
        be written (_write_conditions), else None."""
        if request.applied:
            assert state.assignments is not None
            state.assignments.heard(session, list(request.applied))
        node = self._store.cache.nodes.get(request.node_id)
        if node is not None and node.status.conditions != request.conditions:
            return list(request.conditions)
        return None

    async def _write_conditions(self, node_id: str, conditions: list[str]) -> None:
        with contextlib.suppress(Conflict, StoreError):
            await set_conditions(self._store, self._guard, node_id, conditions)

    async def _probe_beats(self, state: _ServingState, queue: str = "main") -> None:
        """Send this controller's own server a probe (a Heartbeat with no
        node), one after the other: each one back tells the node monitor
        that every beat that arrived before it was sent has been handled
        (heartbeats.py: nodes are judged only up to there). The heartbeat
        server (beatserver.py) has a queue of its own, probed the same way:
        a node whose beat waits there is not judged either."""
        heartbeats = state.heartbeats
        addr = self._leadership.identity if queue == "main" else self.beat_addr
        if not addr:
            return  # no heartbeat server
        channel = self._dial(addr)
        stub = dgrpc.DispatcherStub(channel)
        failures = 0
        try:
            while True:
                period = self.heartbeat_period()
                sent = heartbeats.probe_sent(queue)
                try:
                    await stub.Heartbeat(dpb.HeartbeatRequest(), timeout=backlog_limit(period))
                except grpc.aio.AioRpcError as error:
                    # Not through (this controller unreachable at its own
                    # address, or further behind than the limit): nodes are
                    # then judged at the limit (heartbeats.judged_until).
                    # Said from the second failure in a row on: a controller
                    # that is stopping closes its port before this loop ends,
                    # and one failed probe then is no news.
                    failures += 1
                    if failures == 2:
                        log.warning("heartbeat probe to this controller's %s (%s) failed: %s "
                                    "%s; silent nodes are judged %.0fs late", queue, addr,
                                    error.code().name, error.details(), backlog_limit(period))
                    await asyncio.sleep(min(1.0, period / 4))
                    continue
                failures = 0
                heartbeats.caught_up(sent, queue)
                # Often enough that the judgement follows closely behind.
                await asyncio.sleep(min(0.5, period / 8))
        finally:
            await channel.close(None)

    # ------------------------------------------------------------ RPCs

    @staticmethod
    def _certified_node(context: Context) -> str | None:
        """The node ID of the caller's certificate; None on an --insecure server."""
        try:
            peer = pki.peer_identity(context)
        except pki.PKIError as error:
            raise Unauthenticated(str(error)) from error
        return peer.node_id if peer is not None else None

    def _check_caller(self, node_id: str, context: Context) -> None:
        certified = self._certified_node(context)
        if certified is not None and certified != node_id:
            log.warning("node %s tried to act as node %s", certified, node_id)
            raise PermissionDenied(f"the certificate of node {certified} cannot act for node "
                                   f"{node_id}")

    async def Register(self, request: dpb.RegisterRequest,
                       context: Context) -> dpb.RegisterResponse:
        self._serving()
        certified = self._certified_node(context)
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
            # Create-if-absent: safe from any controller.
            await self._store.commit([Create(node)], guard=self._guard)
        except (Conflict, StoreError) as error:
            raise Unavailable(f"could not register node: {error}") from error
        log.info("registered node %s (%s) as a %s", node.id, request.description.hostname,
                 pb.NodeSpec.Role.Name(request.role).lower())
        return dpb.RegisterResponse(node_id=node.id)

    async def Session(self, request: dpb.SessionRequest,  # type: ignore[override]  # bytes
                      context: Context) -> AsyncIterator[bytes]:
        """The node's session stream: SessionMessages, encoded here
        (wire.session_message) and sent as they are (wire.add_dispatcher)."""
        state = self._serving()
        assignments = state.assignments
        assert assignments is not None
        node_id = request.node_id
        self._check_caller(node_id, context)
        if node_id not in self._store.cache.nodes:
            raise NotFound(f"node {node_id} is not known; register again")
        session = NodeSession(node_id=node_id, session_id=new_id(),
                              compact_deltas=request.compact_deltas,
                              peer_groups=request.peer_groups)
        state.sessions.open(session)
        self._beat(state, node_id)
        try:
            description = request.description if request.HasField("description") else None
            node = self._store.cache.nodes.get(node_id)
            # etcd hears of a session only when it changes the node: a node
            # already READY with the same description is not written again.
            if node is None or node.status.state != pb.NodeStatus.READY or (
                    description is not None and node.description != description):
                await mark_node(self._store, self._guard, node_id, pb.NodeStatus.READY, "",
                                description=description)
        except (Conflict, StoreError) as error:
            state.sessions.end(session)
            raise Unavailable(f"could not open session: {error}") from error
        log.info("session %s opened for node %s", session.session_id, node_id)
        settings = self.settings
        try:
            # Bytes (wire.py): the shared network entries are serialized once
            # for every session, not once per session.
            yield session_message(dpb.SessionMessage(
                session_id=session.session_id,
                heartbeat_period=_duration(self.heartbeat_period()),
                controllers=self._controller_set(),
                heartbeat_addr=self.beat_addr,
            ), assignments.complete(session))
            while True:
                await session.wait_for_news(settings.assignment_flush_interval,
                                            network_window(settings.network_flush_interval,
                                                           len(state.sessions)))
                if session.closed:
                    return
                message = assignments.incremental(session)
                controllers, session.controllers_dirty = session.controllers_dirty, False
                if message is None and not controllers:
                    continue
                yield session_message(dpb.SessionMessage(
                    session_id=session.session_id,
                    # The period grows with the node count: a node that joined
                    # early learns of it here even while its beats wait in a
                    # busy controller's queue (it waits 3 periods for their answers).
                    heartbeat_period=self._heartbeat_response().period,
                    controllers=self._controller_set() if controllers else (),
                ), message or NO_NEWS)
        finally:
            state.sessions.end(session)
            assignments.ended(session)
            log.info("session %s of node %s ended", session.session_id, node_id)
            if node_id not in state.sessions:
                # Not replaced: nothing to wait for there.
                assignments.release_node(node_id)

    @staticmethod
    def _waited(state: _ServingState, deadline: Duration | None, context: Context) -> float:
        """How long a call that carries its deadline waited here before it
        was handled (heartbeats.py: not counted against its node); 0 when
        unknown."""
        remaining = context.time_remaining()
        if remaining is None or deadline is None:
            return 0.0
        lag = max(0.0, deadline.ToNanoseconds() / 1e9 - remaining)
        state.heartbeats.lag(lag)
        return lag

    def _beat(self, state: _ServingState, node_id: str, lag: float = 0.0) -> None:
        state.heartbeats.beat(node_id, lag)
        if self._guard is None:
            state.reporter.beat(node_id)  # the leader hears of it in the next report

    async def Heartbeat(self, request: dpb.HeartbeatRequest,
                        context: Context) -> dpb.HeartbeatResponse:
        # The hot path of thousands of nodes: a dict lookup and a dict write
        # (and a set add on a follower), and the same answer object each time.
        state = self._serving()
        if not request.node_id:
            # The dispatcher's own probe (_probe_beats): it waited in the
            # queue with the beats, and that is all it is for.
            return self._heartbeat_response()
        self._check_caller(request.node_id, context)
        session = self._check_session(state, request.node_id, request.session_id)
        self._beat(state, request.node_id, self._waited(state, request.timeout
                                                        if request.HasField("timeout") else None,
                                                        context))
        conditions = self._beat_news(state, session, request)
        if conditions is not None:  # written at once, beside the beat
            await self._write_conditions(request.node_id, conditions)
        return self._heartbeat_response()

    async def UpdateTaskStatus(self, request: dpb.UpdateTaskStatusRequest,
                               context: Context) -> dpb.UpdateTaskStatusResponse:
        state = self._serving()
        self._check_caller(request.node_id, context)
        self._check_session(state, request.node_id, request.session_id)
        # A report is as good a sign of life as a beat (the agent sends no
        # beat while one is on its way: agent/session.py).
        self._beat(state, request.node_id, self._waited(state, request.timeout
                                                        if request.HasField("timeout") else None,
                                                        context))
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
                raise PermissionDenied(f"task {update.task_id} is not assigned to node "
                                       f"{request.node_id}")
            accepted.append(update)
        for update in accepted:
            state.status.queue(request.node_id, update.task_id, update.status)
        return dpb.UpdateTaskStatusResponse()

    @staticmethod
    def _check_session(state: _ServingState, node_id: str, session_id: str) -> NodeSession:
        session = state.sessions.get(node_id)
        if session is None or session.session_id != session_id:
            raise NotFound(f"session {session_id} of node {node_id} is not current; open a new one")
        return session

    async def ReportAlive(self, request: dpb.ReportAliveRequest,
                          context: Context) -> dpb.ReportAliveResponse:
        """A follower's nodes that beat (liveness.py): each counts as a beat here."""
        state = self._serving()
        if self._guard is None:
            raise FailedPrecondition("this controller is not the leader")
        beat = state.heartbeats.beat
        for node_id in request.node_ids:
            beat(node_id)
        return dpb.ReportAliveResponse()

    async def ReportDrained(self, request: dpb.ReportDrainedRequest,
                            context: Context) -> dpb.ReportDrainedResponse:
        """Another controller's side of some drains is done (drain.py)."""
        state = self._serving()
        assert state.assignments is not None
        state.assignments.reported(request.controller, request.task_ids)
        return dpb.ReportDrainedResponse()

    # ------------------------------------------------------------ controllers

    def _controller_set(self) -> list[str]:
        """Every registered controller's address, this one's too."""
        addrs = set(self._store.cache.controllers)
        addrs.add(self._leadership.identity)
        return sorted(addrs)

    def _on_controllers(self) -> None:
        state = self._state
        if state is None:
            return
        if state.assignments is not None:
            state.assignments.controllers_changed()
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
            case NodeChange(object_id=node_id, new=node) if node is not None:
                if node.status.state == pb.NodeStatus.READY and self._guard is not None:
                    # READY through a follower's session: judged from now on,
                    # even if that follower dies before its first report.
                    state.heartbeats.grant(node_id)
                elif node.status.state == pb.NodeStatus.DOWN:
                    # Marked DOWN while its session is open here (the leader
                    # missed the reports): a new session makes it READY again.
                    session = state.sessions.pop(node_id, None)
                    if session is not None:
                        log.warning("node %s was marked down while its session %s is open "
                                    "here: closing it", node_id, session.session_id)
                        session.close()
            case _:
                pass

    # ------------------------------------------------------------ nodes

    async def _monitor_nodes(self, state: _ServingState) -> None:
        """Close the sessions of silent nodes; while leading, mark them DOWN."""
        while True:
            period = self.heartbeat_period()
            await asyncio.sleep(period / 2)
            assert state.assignments is not None
            self._fold_beats(state)
            for node_id, seen in state.heartbeats.expired(period / 2, period).items():
                node = self._store.cache.nodes.get(node_id)
                session = state.sessions.pop(node_id, None)
                if session is not None:
                    session.close()
                guard = self._guard
                if guard is None or node is None or node.status.state == pb.NodeStatus.DOWN:
                    continue
                judged_at, until = state.heartbeats.judged
                log.warning("node %s missed %d heartbeats: marking it down (its last beat "
                            "arrived %.1fs before the time judged, %.1fs before the judgement)",
                            node_id, HEARTBEAT_MISSES, until - seen, judged_at - until)
                self.telemetry.inc("swarm_dispatcher_missed_heartbeats_total")
                try:
                    await mark_node(self._store, guard, node_id, pb.NodeStatus.DOWN,
                                    "heartbeat failure")
                except (Conflict, StoreError) as error:
                    # Try again next round (unless it has come back meanwhile).
                    log.warning("cannot mark node %s down: %s", node_id, error)
                    state.heartbeats.restore(node_id, seen)

    # ------------------------------------------------------------ logs (controller/logbroker.py)

    def _log_broker(self) -> LogBroker:
        if self.logs is None:
            raise Unimplemented("this controller serves no logs")
        return self.logs

    def _relayed(self, context: Context) -> bool:
        """A log call a follower relays for a node it serves: it checked the
        node's certificate and session; the caller must be a controller."""
        if not dict(context.invocation_metadata() or ()).get(RELAYED_METADATA_KEY):
            return False
        try:
            peer = pki.peer_identity(context)
        except pki.PKIError as error:
            raise Unauthenticated(str(error)) from error
        if peer is not None and not is_controller(peer):
            raise PermissionDenied(f"{peer.node_id} is not a controller: it relays no logs")
        return True

    def _leader_stub(self) -> tuple[dgrpc.DispatcherAsyncStub, str]:
        """The leader's dispatcher, to relay log calls to (the log broker
        lives there)."""
        leader = self._leadership.leader_addr
        if not leader or leader == self._leadership.identity:
            raise Unavailable("logs are served by the leader, and there is none now; "
                              "try again shortly")
        channel = self._log_channels.get(leader)
        if channel is None:
            channel = self._log_channels[leader] = self._dial(leader)
        return dgrpc.DispatcherStub(channel), leader

    async def ListenSubscriptions(self, request: lpb.ListenSubscriptionsRequest,
                                  context: Context) -> AsyncIterator[lpb.SubscriptionMessage]:
        state = self._serving()
        if not self._relayed(context):
            self._check_caller(request.node_id, context)
            self._check_session(state, request.node_id, request.session_id)
        broker = self._log_broker()
        if self._guard is not None:
            async with contextlib.aclosing(broker.listen(request.node_id)) as messages:
                async for message in messages:
                    yield message
            return
        # A follower: the node's subscriptions come from the leader's broker.
        stub, leader = self._leader_stub()
        call = stub.ListenSubscriptions(request, metadata=self._relay_metadata())
        try:
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as error:
            raise Relayed(error.code(), f"leader {leader}: {error.details()}") from None
        finally:
            call.cancel()

    def _relay_metadata(self) -> tuple[tuple[str, str]]:
        return ((RELAYED_METADATA_KEY, self._leadership.identity),)

    async def PublishLogs(self, request_iterator: AsyncIterator[lpb.PublishLogsMessage],
                          context: Context) -> lpb.PublishLogsResponse:
        state = self._serving()
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return lpb.PublishLogsResponse()
        if not self._relayed(context):
            self._check_caller(first.node_id, context)
            self._check_session(state, first.node_id, first.session_id)
        broker = self._log_broker()
        if self._guard is None:
            stub, leader = self._leader_stub()

            async def messages() -> AsyncIterator[lpb.PublishLogsMessage]:
                yield first
                async for message in request_iterator:
                    yield message

            try:
                return await stub.PublishLogs(messages(),
                                              metadata=self._relay_metadata())
            except grpc.aio.AioRpcError as error:
                raise Relayed(error.code(), f"leader {leader}: {error.details()}") from None
        try:
            await broker.publish(first.node_id, first, aiter(request_iterator))
        except PublishRefused as error:
            log.warning("node %s: log messages refused: %s", first.node_id, error)
            raise Relayed(error.code, str(error)) from error
        return lpb.PublishLogsResponse()

    # ------------------------------------------------------------ payloads (controller/payloads.py)

    async def TaskPayloads(self, request: dpb.TaskPayloadsRequest,
                           context: Context) -> dpb.TaskPayloadsResponse:
        self._check_caller(request.node_id, context)
        return serve_task_payloads(self.payloads, request.node_id, request.task_id)
