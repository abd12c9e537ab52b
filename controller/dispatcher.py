"""The dispatcher: agents' sessions, heartbeats and task status, on the leader.

An agent registers once (getting its node ID), then keeps one session stream
open: the first message carries the complete set of its assigned tasks, later
ones only what changed. Heartbeats live in the leader's memory; a node silent
for `HEARTBEAT_MISSES` periods is marked DOWN (and the orchestrator replaces
its tasks). Status reports are coalesced per task (latest wins) and written in
batched, fenced transactions.

Assignments also carry the overlay networks the node's tasks use, with every
endpoint on them (its own too: DNS and load balancing need local tasks; its
data plane skips its own VTEP) and the services attached to them (peers.py):
the complete peer set when a network first appears in a session, then deltas
(a task becoming ready or unhealthy is one peer to each node on the network),
coalesced over `network_flush_interval`. A service change that alters a
network's records (created, removed, renamed, attached, a VIP allocated)
resends that network's records to the nodes that have it.

Drain before stop (drain.py): each network entry carries its peer-set
version; agents confirm the versions they have in force in an extra
heartbeat, and once every confirming node that has a stopping task's
networks has confirmed the version without it, the task's node is told
(Assignments.drained) that its stop signal need wait no longer.

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

from .drain import Drain, NodeView, holds, is_stopping, starts_draining
from .heartbeat import DEFAULT_HEARTBEAT_PERIOD, heartbeat_period
from .ids import new_id
from .leadership import Leadership
from .logbroker import LogBroker, PublishRefused
from .mesh import affects_mesh, complete_ingress, ingress_records, mesh_fingerprint
from .payloads import PayloadServer, serve_task_payloads
from .peers import OverlayIndex, PeerTable, ServiceIndex, network_assignment, vtep
from .pullauth import PullCredentials, for_tasks
from .store import (
    Change,
    Conflict,
    Create,
    Guard,
    NetworkChange,
    NodeChange,
    Op,
    Planned,
    ServiceChange,
    Store,
    StoreError,
    StoreUnavailable,
    TaskChange,
    Update,
)

log = logging.getLogger(__name__)

HEARTBEAT_MISSES = 3
_CAS_ATTEMPTS = 10


@dataclass(frozen=True)
class DispatcherSettings:
    heartbeat_period: float = DEFAULT_HEARTBEAT_PERIOD  # unless the cluster object sets one
    status_flush_interval: float = 0.02  # coalescing window for status writes
    # Coalescing window for peer updates: a burst of task placements becomes one
    # message per node, not one per transaction.
    network_flush_interval: float = 0.1


@dataclass
class _Session:
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
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    def close(self) -> None:
        self.closed = True
        self.wake.set()


@dataclass
class _LeaderState:
    guard: Guard
    sessions: dict[str, _Session] = field(default_factory=dict)
    heartbeats: dict[str, float] = field(default_factory=dict)  # node -> last seen (clock)
    pending_status: dict[str, tuple[str, pb.TaskStatus]] = field(default_factory=dict)
    status_ready: asyncio.Event = field(default_factory=asyncio.Event)
    overlay: OverlayIndex = field(default_factory=OverlayIndex)
    services: ServiceIndex = field(default_factory=ServiceIndex)
    peers: PeerTable = field(default_factory=PeerTable)
    drains: dict[str, Drain] = field(default_factory=dict)  # by task id
    draining_for: dict[str, set[str]] = field(default_factory=dict)  # node -> its pending drains


def _assigned(task: pb.Task | None, node_id: str) -> bool:
    """Whether the agent of node_id is to know this task."""
    return task is not None and task.node_id == node_id and task.status.state >= pb.ASSIGNED


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

    async def serve_as_leader(self, guard: Guard) -> None:
        """Run the leader's side (node monitor, status writer) until cancelled."""
        cache = self._store.cache
        state = _LeaderState(guard=guard, overlay=OverlayIndex(cache.tasks.values()),
                             services=ServiceIndex(cache.services.values()))
        for node in cache.nodes.values():
            state.overlay.apply_node(None, node)  # its own (ingress) endpoint
        now = self._clock()
        # Every node gets a full grace period to find the new leader.
        for node in self._store.cache.nodes.values():
            if node.status.state == pb.NodeStatus.READY:
                state.heartbeats[node.id] = now
        self._state = state
        loops = [
            start_supervised("dispatcher-node-monitor", lambda: self._monitor_nodes(state)),
            start_supervised("dispatcher-status-writer", lambda: self._write_statuses(state)),
        ]
        try:
            await asyncio.Future()  # until cancelled
        finally:
            self._state = None
            for session in state.sessions.values():
                session.close()
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
        node_id = request.node_id
        await self._check_caller(node_id, context)
        if node_id not in self._store.cache.nodes:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"node {node_id} is not known; register again")
        session = _Session(node_id=node_id, session_id=new_id())
        previous = state.sessions.get(node_id)
        if previous is not None:
            previous.close()
        state.sessions[node_id] = session
        state.heartbeats[node_id] = self._clock()
        try:
            description = request.description if request.HasField("description") else None
            await self._mark_node(state, node_id, pb.NodeStatus.READY, "", description=description)
        except (Conflict, StoreError) as error:
            del state.sessions[node_id]
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"could not open session: {error}")
        log.info("session %s opened for node %s", session.session_id, node_id)
        try:
            tasks = [t for t in self._store.cache.tasks_by_node.get(node_id, {}).values()
                     if _assigned(t, node_id)]
            session.dirty_networks.clear()
            networks, _ = self._network_updates(state, session,
                                                state.overlay.networks_of(node_id))
            yield dpb.SessionMessage(
                session_id=session.session_id,
                heartbeat_period=_duration(self.heartbeat_period()),
                assignments=dpb.Assignments(type=dpb.Assignments.COMPLETE, tasks=tasks,
                                            networks=networks,
                                            pull_credentials=for_tasks(self.pull_auth, tasks)),
                controllers=self._controller_set(),
            )
            while True:
                await session.wake.wait()
                if session.dirty_networks and not session.closed and not session.urgent:
                    await asyncio.sleep(self.settings.network_flush_interval)
                session.wake.clear()
                session.urgent = False
                if session.closed:
                    return
                changed, session.dirty = session.dirty, {}
                dirty_networks, session.dirty_networks = session.dirty_networks, set()
                drained, session.drained = session.drained, set()
                networks, removed_networks = self._network_updates(state, session, dirty_networks)
                controllers, session.controllers_dirty = session.controllers_dirty, False
                if not (changed or networks or removed_networks or drained or controllers):
                    continue
                yield dpb.SessionMessage(
                    session_id=session.session_id,
                    assignments=dpb.Assignments(
                        type=dpb.Assignments.INCREMENTAL,
                        tasks=[t for t in changed.values() if t is not None],
                        removed=[tid for tid, t in changed.items() if t is None],
                        networks=networks,
                        removed_networks=removed_networks,
                        drained=sorted(drained),
                        pull_credentials=for_tasks(
                            self.pull_auth, (t for t in changed.values() if t is not None)),
                    ),
                    controllers=self._controller_set() if controllers else (),
                )
        finally:
            if state.sessions.get(node_id) is session:
                del state.sessions[node_id]
            log.info("session %s of node %s ended", session.session_id, node_id)
            if node_id not in state.sessions:  # not replaced: nothing to wait for there
                self._release_node(state, node_id)

    async def Heartbeat(self, request: dpb.HeartbeatRequest,
                        context: grpc.aio.ServicerContext[object, object]) -> dpb.HeartbeatResponse:
        state = await self._leader_state(context)
        await self._check_caller(request.node_id, context)
        await self._check_session(state, request.node_id, request.session_id, context)
        state.heartbeats[request.node_id] = self._clock()
        if request.applied:
            session = state.sessions[request.node_id]
            session.confirms = True
            for applied in request.applied:
                if applied.version > session.acked.get(applied.network_id, 0):
                    session.acked[applied.network_id] = applied.version
            self._confirmed(state, session)
        node = self._store.cache.nodes.get(request.node_id)
        if node is not None and list(node.status.conditions) != list(request.conditions):
            # Rare (a disk filling up or freed): written at once, beside the beat.
            with contextlib.suppress(Conflict, StoreError):
                await self._set_conditions(state, request.node_id, list(request.conditions))
        return dpb.HeartbeatResponse(period=_duration(self.heartbeat_period()))

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
            state.pending_status[update.task_id] = (request.node_id, update.status)
        state.status_ready.set()
        return dpb.UpdateTaskStatusResponse()

    async def _check_session(self, state: _LeaderState, node_id: str, session_id: str,
                             context: grpc.aio.ServicerContext[object, object]) -> None:
        session = state.sessions.get(node_id)
        if session is None or session.session_id != session_id:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"session {session_id} of node {node_id} is not current; open a new one")

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

    # ------------------------------------------------------------ assignments

    def _network_updates(self, state: _LeaderState, session: _Session,
                         network_ids: set[str]) -> tuple[list[dpb.NetworkAssignment], list[str]]:
        """The assignments of those networks that changed for this node, and the
        networks it had but no longer needs (or that were removed)."""
        cache = self._store.cache
        uses = state.overlay.networks_of(session.node_id)
        updates: list[dpb.NetworkAssignment] = []
        removed: list[str] = []
        for network_id in sorted(network_ids):
            network = cache.networks.get(network_id)
            if network is not None and network_id in uses:
                table = state.peers.refresh(network_id, state.overlay, state.services,
                                            cache.nodes)
                assignment = network_assignment(network, table,
                                                session.sent_networks.get(network_id))
                session.sent_networks[network_id] = table.version
                if network.spec.ingress:
                    assignment = self._with_mesh(session, network, assignment)
                if assignment is not None:
                    assignment.version = table.version
                    updates.append(assignment)
            elif session.sent_networks.pop(network_id, None) is not None:
                session.acked.pop(network_id, None)
                removed.append(network_id)
                if network is None or network.spec.ingress:
                    session.sent_mesh = None
        if removed:  # a drain waiting for this node on those networks waits no more
            self._confirmed(state, session)
        return updates, removed

    def _with_mesh(self, session: _Session, network: pb.Network,
                   assignment: dpb.NetworkAssignment | None) -> dpb.NetworkAssignment | None:
        """The ingress entry with the node's address and the published services."""
        cache = self._store.cache
        node = cache.nodes.get(session.node_id)
        records = ingress_records(cache.services.values())
        fingerprint = mesh_fingerprint(node, network, records)
        changed = fingerprint != session.sent_mesh
        session.sent_mesh = fingerprint
        return complete_ingress(assignment, network, node, records, changed)

    def _mark_networks(self, state: _LeaderState, network_ids: set[str]) -> None:
        """Tell the sessions that have (or need) these networks to look again."""
        if not network_ids:
            return
        overlay = state.overlay
        for session in state.sessions.values():
            hit = {n for n in network_ids
                   if n in session.sent_networks or overlay.uses(session.node_id, n)}
            if hit:
                session.dirty_networks |= hit
                session.wake.set()

    def _on_change(self, change: Change) -> None:
        state = self._state
        if state is None:
            return
        match change:
            case ServiceChange(old=old_service, new=new_service):
                changed = state.services.apply(old_service, new_service)
                if affects_mesh(old_service, new_service):  # the ingress entries' records
                    changed |= {n.id for n in self._store.cache.networks.values()
                                if n.spec.ingress}
                self._mark_networks(state, changed)
            case NetworkChange(object_id=network_id, new=network):
                if network is None:
                    state.peers.forget(network_id)
                self._mark_networks(state, {network_id})
            case NodeChange(object_id=node_id, old=old_node, new=new_node):
                # Its own (ingress) endpoint: the network is assigned to it, and
                # every node on it learns where the endpoint is.
                self._mark_networks(state, state.overlay.apply_node(old_node, new_node))
                # Its endpoints appear in (or leave) every peer list when it goes
                # down, comes back, moves or is removed.
                if old_node is None or new_node is None \
                        or old_node.status.state != new_node.status.state \
                        or vtep(old_node) != vtep(new_node):
                    state.peers.nodes_generation += 1
                    self._mark_networks(state, state.overlay.networks_of(node_id))
                if new_node is None:
                    session = state.sessions.pop(node_id, None)
                    state.heartbeats.pop(node_id, None)
                    if session is not None:
                        session.close()
                    self._release_node(state, node_id)
            case TaskChange():
                self._on_task_change(state, change)

    def _on_task_change(self, state: _LeaderState, change: TaskChange) -> None:
        old, new = change.old, change.new
        self._mark_networks(state, state.overlay.apply(old, new))
        if starts_draining(old, new):
            assert new is not None
            self._start_drain(state, new)
        elif not is_stopping(new) and change.object_id in state.drains:
            self._forget_drain(state, state.drains.pop(change.object_id))
        for node_id in {t.node_id for t in (old, new) if t is not None and t.node_id}:
            session = state.sessions.get(node_id)
            if session is None:
                continue
            was, now = _assigned(old, node_id), _assigned(new, node_id)
            if now and new is not None:
                # The agent's own status echoes carry nothing it does not know.
                if was and old is not None and old.desired_state == new.desired_state:
                    continue
                session.dirty[new.id] = new
            elif was:
                session.dirty[change.object_id] = None
            else:
                continue
            session.wake.set()

    # ------------------------------------------------------------ drain before stop

    @staticmethod
    def _view(session: _Session) -> NodeView:
        return NodeView(session.sent_networks, session.acked, session.confirms)

    def _start_drain(self, state: _LeaderState, task: pb.Task) -> None:
        """The task was told to stop: the versions of its networks' peer
        sets without it as a backend (brought up to date now) are what every
        node must confirm before it is drained (drain.py)."""
        cache = self._store.cache
        required = {}
        for attachment in task.networks:
            if attachment.network_id in cache.networks:
                table = state.peers.refresh(attachment.network_id, state.overlay,
                                            state.services, cache.nodes)
                required[attachment.network_id] = table.version
        drain = Drain(task.id, task.node_id, required)
        for session in state.sessions.values():
            if holds(required, self._view(session)):
                drain.pending.add(session.node_id)
                state.draining_for.setdefault(session.node_id, set()).add(task.id)
            # A stop waits for these messages: no coalescing pause for them
            # (a burst of stops from one orchestrator pass still goes as one).
            if any(network_id in session.dirty_networks for network_id in required):
                session.urgent = True
        previous = state.drains.pop(task.id, None)
        if previous is not None:
            self._forget_drain(state, previous)
        if drain.pending:
            state.drains[task.id] = drain
        else:
            self._drained(state, drain)

    def _confirmed(self, state: _LeaderState, session: _Session) -> None:
        """The node confirmed versions: the drains waiting for it that it
        now satisfies no longer do."""
        waiting = state.draining_for.get(session.node_id)
        if not waiting:
            return
        view = self._view(session)
        for task_id in list(waiting):
            drain = state.drains.get(task_id)
            if drain is not None and holds(drain.required, view):
                continue
            waiting.discard(task_id)
            if drain is not None:
                self._node_done(state, drain, session.node_id)
        if not waiting:
            del state.draining_for[session.node_id]

    def _release_node(self, state: _LeaderState, node_id: str) -> None:
        """The node has no session any more: no drain waits for it."""
        for task_id in state.draining_for.pop(node_id, set()):
            drain = state.drains.get(task_id)
            if drain is not None:
                self._node_done(state, drain, node_id)

    def _node_done(self, state: _LeaderState, drain: Drain, node_id: str) -> None:
        drain.pending.discard(node_id)
        if not drain.pending:
            state.drains.pop(drain.task_id, None)
            self._drained(state, drain)

    @staticmethod
    def _forget_drain(state: _LeaderState, drain: Drain) -> None:
        for node_id in drain.pending:
            waiting = state.draining_for.get(node_id)
            if waiting is not None:
                waiting.discard(drain.task_id)
                if not waiting:
                    del state.draining_for[node_id]

    @staticmethod
    def _drained(state: _LeaderState, drain: Drain) -> None:
        """Tell the task's node its stop signal need wait no longer."""
        session = state.sessions.get(drain.node_id)
        if session is not None:
            session.drained.add(drain.task_id)
            session.urgent = True
            session.wake.set()

    # ------------------------------------------------------------ nodes

    async def _mark_node(self, state: _LeaderState, node_id: str, status: int, message: str,
                         description: pb.NodeDescription | None = None) -> None:
        def mark(node: pb.Node) -> bool:
            node.status.state = status  # type: ignore[assignment]
            node.status.message = message
            node.status.last_heartbeat.GetCurrentTime()
            if description is not None:
                node.description.CopyFrom(description)
                node.status.addr = description.advertise_addr
            return True

        await self._update_node(state, node_id, mark)

    async def _set_conditions(self, state: _LeaderState, node_id: str,
                              conditions: list[str]) -> None:
        def set_conditions(node: pb.Node) -> bool:
            if list(node.status.conditions) == conditions:
                return False
            del node.status.conditions[:]
            node.status.conditions.extend(conditions)
            return True

        if await self._update_node(state, node_id, set_conditions):
            log.warning("node %s reports %s", node_id, ", ".join(conditions) or "no condition")

    async def _update_node(self, state: _LeaderState, node_id: str,
                           change: Callable[[pb.Node], bool]) -> bool:
        """The store's read-modify-write of a node's record, fenced by the
        leader's guard: `change` edits a copy (False: nothing to write).
        Whether it wrote; a node gone is not written."""

        def step() -> Planned[bool]:
            current = self._store.cache.nodes.get(node_id)
            if current is None:
                return Planned([], False)
            node = pb.Node()
            node.CopyFrom(current)
            return Planned([Update(node)], True) if change(node) else Planned([], False)

        return await self._store.read_modify_write(step, attempts=_CAS_ATTEMPTS,
                                                   guard=state.guard)

    async def _monitor_nodes(self, state: _LeaderState) -> None:
        while True:
            period = self.heartbeat_period()
            await asyncio.sleep(period / 2)
            deadline = self._clock() - period * HEARTBEAT_MISSES
            for node_id, seen in list(state.heartbeats.items()):
                if seen >= deadline:
                    continue
                node = self._store.cache.nodes.get(node_id)
                del state.heartbeats[node_id]
                session = state.sessions.pop(node_id, None)
                if session is not None:
                    session.close()
                if node is not None and node.status.state != pb.NodeStatus.DOWN:
                    log.warning("node %s missed %d heartbeats: marking it down",
                                node_id, HEARTBEAT_MISSES)
                    self.telemetry.inc("swarm_dispatcher_missed_heartbeats_total")
                    try:
                        await self._mark_node(state, node_id, pb.NodeStatus.DOWN,
                                              "heartbeat failure")
                    except (Conflict, StoreError) as error:
                        # Try again next round (unless it has come back meanwhile).
                        log.warning("cannot mark node %s down: %s", node_id, error)
                        state.heartbeats.setdefault(node_id, seen)

    # ------------------------------------------------------------ status

    async def _write_statuses(self, state: _LeaderState) -> None:
        outage = 0.0
        while True:
            await state.status_ready.wait()
            state.status_ready.clear()
            await asyncio.sleep(self.settings.status_flush_interval)
            pending, state.pending_status = state.pending_status, {}
            ops: list[Update] = []
            tasks = self._store.cache.tasks
            for task_id, (node_id, status) in pending.items():
                current = tasks.get(task_id)
                # Deleted, moved, or a report older than what is stored: drop it.
                if current is None or current.node_id != node_id \
                        or status.state < current.status.state:
                    continue
                task = pb.Task()
                task.CopyFrom(current)
                task.status.CopyFrom(status)
                ops.append(Update(task))
            if not ops:
                continue
            rejected: list[Op] = []
            try:
                failed = await self._store.commit_chunked(ops, guard=state.guard,
                                                          rejected=rejected)
                outage = 0.0
            except StoreUnavailable as error:
                # etcd down or full (NOSPACE): keep every report the agents were
                # told was taken, and write them once etcd takes writes again.
                outage = min(5.0, max(0.5, outage * 2))
                log.warning("cannot write %d task statuses (kept; retrying in %.1fs): %s",
                            len(ops), outage, error)
                failed = list(ops)
                await asyncio.sleep(outage)
            for op in rejected:  # etcd refuses this task as such: no retry can help
                if isinstance(op, Update):
                    log.error("task %s: etcd refused its status write; dropped", op.obj.id)
            for op in failed:
                assert isinstance(op, Update)
                # Retry against the refreshed cache unless a newer report arrived.
                retry = op.obj
                assert isinstance(retry, pb.Task)
                state.pending_status.setdefault(retry.id, (retry.node_id, retry.status))
            if failed:
                state.status_ready.set()

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
