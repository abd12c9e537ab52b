"""Assignments: what each node's session is to be sent, from cache changes.

Each message carries the node's tasks (the complete set when a session
opens, later only what changed) and the overlay networks its tasks use, with
every endpoint on them (its own too: DNS and load balancing need local
tasks; its data plane skips its own VTEP) and the services attached to them
(peers.py): the complete peer set when a network first appears in a
session, then deltas (a task becoming ready or unhealthy is one peer to each
node on the network), coalesced by the session. A service change that alters
a network's records (created, removed, renamed, attached, a VIP allocated)
resends that network's records to the nodes that have it.

Drain before stop (drain.py): each network entry carries its peer-set
version; agents confirm the versions they have in force in an extra
heartbeat, and once every confirming node that has a stopping task's
networks has confirmed the version without it, the task's node is told
(Assignments.drained) that its stop signal need wait no longer. Each
controller judges only the nodes it serves; the controllers tell each other
which tasks are drained on their side (drain.py, drainreports.py).

The ingress network (the routing mesh) is sent only while some service
publishes a port in ingress mode (mesh.mesh_needed): every node is on it, so
each node's join or status change is one peer change for every other node;
with nothing published that was N messages per join, N squared in all (at
1,000 nodes joining, most of the controller's time and half the agents'),
for a network no node uses. The first published port sends it to every node
(the routing mesh's own cost); the last one withdrawn takes it away.

Every change is handled in time proportional to what it touches: a task
change wakes the sessions of its old and new node; a network change the
nodes on it (OverlayIndex.nodes_on) and those that were sent it, never a
scan of every session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import objects_pb2 as pb

from ..drain import (
    Drain,
    awaited_controllers,
    holds,
    is_complete,
    is_stopping,
    keeps_early_report,
    starts_draining,
    still_awaited,
)
from ..mesh import affects_mesh, complete_ingress, ingress_records, mesh_fingerprint, mesh_needed
from ..peers import (
    OverlayIndex,
    PeerTable,
    ServiceIndex,
    encoded_assignment,
    network_assignment,
    network_news,
    peers_named,
    vtep,
)
from ..pullauth import PullCredentials, for_tasks
from ..store import Change, NetworkChange, NodeChange, ServiceChange, TaskChange
from ..store.cache import WatchCache
from ..wire import Encoded, entry_field
from ..wire import assignments as encode
from .sessions import Session, Sessions


def assigned(task: pb.Task | None, node_id: str) -> bool:
    """Whether the agent of node_id is to know this task."""
    return task is not None and task.node_id == node_id and task.status.state >= pb.ASSIGNED


def task_news(old: pb.Task | None, new: pb.Task | None, node_id: str
              ) -> tuple[bool, pb.Task | None]:
    """Whether the node's agent is to hear of this task change, and what:
    the new version, or None (removed from the node). The agent's own status
    echoes carry nothing it does not know."""
    was, now = assigned(old, node_id), assigned(new, node_id)
    if now and new is not None:
        if was and old is not None and old.desired_state == new.desired_state:
            return False, None
        return True, new
    return was, None


class Assignments:
    def __init__(self, cache: WatchCache, sessions: Sessions,
                 pull_auth: PullCredentials | None = None, identity: str = "",
                 announce: Callable[[str], None] | None = None) -> None:
        self._cache = cache
        self._pull_auth = pull_auth  # registry credentials for the tasks sent (pullauth.py)
        self._sessions = sessions
        self.overlay = OverlayIndex(cache.tasks.values())
        for node in cache.nodes.values():
            self.overlay.apply_node(None, node)  # its own (ingress) endpoint
        self.services = ServiceIndex(cache.services.values())
        self._mesh = mesh_needed(cache.services.values())  # the ingress network is sent
        self.peers = PeerTable()
        self.drains: dict[str, Drain] = {}  # by task id
        self.draining_for: dict[str, set[str]] = {}  # node -> its pending drains
        # Cross-controller drains (drain.py): this controller's address in the
        # registry, who hears of a task drained on this side (the reports to
        # the other controllers), and reports that came before this
        # controller's watch saw the stop (task -> controllers).
        self._identity = identity
        self._announce = announce or (lambda task_id: None)
        self.early_reports: dict[str, set[str]] = {}
        # network -> nodes whose session was sent it (the reverse of sent_networks).
        self._holders: dict[str, set[str]] = {}
        # network -> the holders with nothing pending for it: a task change
        # wakes these (and the task's node), not every node on the network
        # again; the others were woken already and will read the table as it
        # is when they send. 10,000 task starts on a 500-node network are
        # then one wake per node per message, not per change.
        self._clean: dict[str, set[str]] = {}
        # Tasks that were stopping before this controller served: its side
        # (no session yet) is drained at once, and the other controllers,
        # which may wait for it (a restart under the same address), hear so.
        for task in cache.tasks.values():
            if starts_draining(None, task):
                self._start_drain(task)

    # ------------------------------------------------------------ messages

    def complete(self, session: Session) -> Encoded:
        """The first message of a session: every task of the node, every network."""
        tasks = [t for t in self._cache.tasks_by_node.get(session.node_id, {}).values()
                 if assigned(t, session.node_id)]
        session.dirty.clear()
        session.dirty_networks.clear()
        networks, peers, _ = self._network_updates(session, self._uses(session.node_id))
        return encode(dpb.Assignments(type=dpb.Assignments.COMPLETE, tasks=tasks,
                                      pull_credentials=for_tasks(self._pull_auth, tasks)),
                      networks, peers)

    def incremental(self, session: Session) -> Encoded | None:
        """What changed for the node since its last message; None when nothing."""
        changed, session.dirty = session.dirty, {}
        dirty_networks, session.dirty_networks = session.dirty_networks, set()
        drained, session.drained = session.drained, set()
        networks, peers, removed_networks = self._network_updates(session, dirty_networks)
        if networks or removed_networks:
            session.sent_networks_now()
        if not (changed or networks or removed_networks or drained):
            return None
        tasks = [t for t in changed.values() if t is not None]
        return encode(dpb.Assignments(
            type=dpb.Assignments.INCREMENTAL,
            tasks=tasks,
            removed=[tid for tid, t in changed.items() if t is None],
            removed_networks=removed_networks,
            drained=sorted(drained),
            pull_credentials=for_tasks(self._pull_auth, tasks),
        ), networks, peers)

    def _sent(self, session: Session, network_id: str, version: int) -> None:
        session.sent_networks[network_id] = version
        self._holders.setdefault(network_id, set()).add(session.node_id)
        self._clean.setdefault(network_id, set()).add(session.node_id)

    def _unsent(self, session: Session, network_id: str) -> bool:
        for index in (self._holders, self._clean):
            nodes = index.get(network_id)
            if nodes is not None:
                nodes.discard(session.node_id)
                if not nodes:
                    del index[network_id]
        return session.sent_networks.pop(network_id, None) is not None

    def ended(self, session: Session) -> None:
        """The session is gone: it holds no network any more (its node's
        next session, if one is open already, holds what it was sent)."""
        current = self._sessions.get(session.node_id)
        for network_id in list(session.sent_networks):
            if current is None or network_id not in current.sent_networks:
                self._unsent(session, network_id)

    def _network_updates(self, session: Session, network_ids: set[str]
                         ) -> tuple[list[bytes], int, list[str]]:
        """The entries (encoded, wire.entry_field) of those networks that
        changed for this node, how many peers they name, and the networks it
        had but no longer needs (or that were removed)."""
        cache = self._cache
        uses = self._uses(session.node_id)
        updates: list[bytes] = []
        peers = 0
        removed: list[str] = []
        for network_id in sorted(network_ids):
            network = cache.networks.get(network_id)
            if network is not None and network_id in uses:
                table = self.peers.refresh(network_id, self.overlay, self.services, cache.nodes)
                since = session.sent_networks.get(network_id)
                self._sent(session, network_id, table.version)
                if network.spec.ingress:  # the node's own entry: not shared
                    assignment = self._with_mesh(
                        session, network,
                        network_assignment(network, table, since, session.compact_deltas,
                                           session.peer_groups),
                        table.version)
                    if assignment is not None:
                        updates.append(entry_field(assignment))
                        peers += peers_named(assignment)
                    continue
                shared = encoded_assignment(network, table, since, session.compact_deltas,
                                            session.peer_groups)
                if shared is not None:
                    updates.append(shared[0])
                    peers += shared[1]
            elif self._unsent(session, network_id):
                session.acked.pop(network_id, None)
                removed.append(network_id)
                if network is None or network.spec.ingress:
                    session.sent_mesh = None
        if removed:  # a drain waiting for this node on those networks waits no more
            self.confirmed(session)
        return updates, peers, removed

    def _uses(self, node_id: str) -> set[str]:
        """The networks the node is to have: those of its tasks, and the
        ingress network while the routing mesh is in use."""
        uses = self.overlay.networks_of(node_id)
        if self._mesh:
            return uses
        return {n for n in uses if not self._is_ingress(n)}

    def _is_ingress(self, network_id: str) -> bool:
        network = self._cache.networks.get(network_id)
        return network is not None and network.spec.ingress

    def _with_mesh(self, session: Session, network: pb.Network,
                   shared: dpb.NetworkAssignment | None, version: int
                   ) -> dpb.NetworkAssignment | None:
        """The ingress entry with the node's address and the published services."""
        cache = self._cache
        node = cache.nodes.get(session.node_id)
        records = ingress_records(cache.services.values())
        fingerprint = mesh_fingerprint(node, network, records)
        changed = fingerprint != session.sent_mesh
        session.sent_mesh = fingerprint
        assignment = None
        if shared is not None:  # shared by the sessions (peers.network_assignment): a copy
            assignment = dpb.NetworkAssignment()
            assignment.CopyFrom(shared)
        assignment = complete_ingress(assignment, network, node, records, changed)
        if assignment is not None:
            assignment.version = version
        return assignment

    def _mark_networks(self, network_ids: set[str], nodes: tuple[str, ...] | None = None,
                       only_nodes: bool = False) -> None:
        """Tell the sessions that have (or need) these networks to look again:
        with `nodes` (a task change: its nodes), the clean holders and those
        nodes; without, every node on the networks and every holder (rarer
        changes: a network, a node, its own endpoint)."""
        sessions = self._sessions
        for network_id in network_ids:
            if not self._mesh and network_id not in self._holders and \
                    self._is_ingress(network_id):
                continue  # the mesh is not in use and no node has it: no news for anyone
            # only_nodes: the holders have nothing new to hear (they stay clean).
            clean = set() if only_nodes else self._clean.pop(network_id, set())
            if nodes is None:
                targets = {*clean, *self.overlay.nodes_on(network_id),
                           *self._holders.get(network_id, ())}
            else:
                targets = clean.union(nodes)
            for node_id in targets:
                session = sessions.get(node_id)
                if session is not None:
                    session.dirty_networks.add(network_id)
                    session.wake.set()

    # ------------------------------------------------------------ changes

    def on_change(self, change: Change) -> None:
        match change:
            case ServiceChange(old=old_service, new=new_service):
                changed = self.services.apply(old_service, new_service)
                if affects_mesh(old_service, new_service):  # the ingress entries' records
                    self._mesh = mesh_needed(self._cache.services.values())
                    changed |= {n.id for n in self._cache.networks.values() if n.spec.ingress}
                self._mark_networks(changed)
            case NetworkChange(object_id=network_id, old=old_network, new=network):
                # Every address given out moves the network's cursor: that
                # is no news to the nodes (and was a wake of every one).
                if not network_news(old_network, network):
                    return
                if network is None:
                    self.peers.forget(network_id)
                else:
                    self.peers.network_changed(network_id)
                self._mark_networks({network_id})
            case NodeChange(object_id=node_id, old=old_node, new=new_node):
                self._on_node(node_id, old_node, new_node)
            case TaskChange(object_id=task_id, old=old_task, new=new_task):
                self._on_task(task_id, old_task, new_task)

    def _on_node(self, node_id: str, old: pb.Node | None, new: pb.Node | None) -> None:
        # Its own (ingress) endpoint: the network is assigned to it, and
        # every node on it learns where the endpoint is.
        self._mark_networks(self.overlay.apply_node(old, new))
        # Its endpoints appear in (or leave) every peer list when it goes
        # down, comes back, moves or is removed.
        if old is None or new is None or old.status.state != new.status.state \
                or vtep(old) != vtep(new):
            # Only its endpoints are looked at again (not every endpoint of
            # every network it is on).
            self._mark_networks(self.overlay.node_changed(node_id))
        if new is None:
            session = self._sessions.pop(node_id, None)
            if session is not None:
                session.close()
                self.ended(session)
            self.release_node(node_id)

    def _on_task(self, task_id: str, old: pb.Task | None, new: pb.Task | None) -> None:
        changed, peers_changed = self.overlay.apply_split(old, new)
        nodes = tuple({t.node_id for t in (old, new) if t is not None and t.node_id})
        self._mark_networks(peers_changed, nodes)
        if changed - peers_changed:
            # Only the task's node uses the network differently (a task
            # assigned, not started yet): the others have nothing to hear.
            self._mark_networks(changed - peers_changed, nodes, only_nodes=True)
        if starts_draining(old, new):
            assert new is not None
            self._start_drain(new)
        elif not is_stopping(new):
            if task_id in self.drains:
                self._forget_drain(self.drains.pop(task_id))
            if task_id in self.early_reports and not keeps_early_report(new):
                del self.early_reports[task_id]
        for node_id in {t.node_id for t in (old, new) if t is not None and t.node_id}:
            session = self._sessions.get(node_id)
            if session is None:
                continue
            news, version = task_news(old, new, node_id)
            if news:
                session.dirty[task_id] = version
                if version is None or version.desired_state > pb.RUNNING:
                    # A stop or a removal goes at once (a stopping task may
                    # hold a rolling update); placements are batched.
                    session.urgent = True
                session.wake.set()

    # ------------------------------------------------------------ drain before stop

    def heard(self, session: Session, applied: list[dpb.AppliedNetwork]) -> None:
        """The agent confirmed the versions it has in force."""
        session.confirms = True
        for entry in applied:
            if entry.version > session.acked.get(entry.network_id, 0):
                session.acked[entry.network_id] = entry.version
        self.confirmed(session)

    def _start_drain(self, task: pb.Task) -> None:
        """The task was told to stop: the versions of its networks' peer
        sets without it as a backend (brought up to date now) are what every
        node must confirm before it is drained (drain.py)."""
        cache = self._cache
        required = {}
        for attachment in task.networks:
            if attachment.network_id in cache.networks:
                table = self.peers.refresh(attachment.network_id, self.overlay,
                                           self.services, cache.nodes)
                required[attachment.network_id] = table.version
        drain = Drain(task.id, task.node_id, required)
        drain.controllers = awaited_controllers(
            self._cache.controllers, self._identity, self.early_reports.pop(task.id, ()))
        # Only nodes that were sent a network can hold it (drain.holds), and
        # only nodes on it can have it waiting: no look at every session.
        nearby = {n for network_id in required
                  for n in (*self._holders.get(network_id, ()), *self.overlay.nodes_on(network_id))}
        for node_id in nearby:
            session = self._sessions.get(node_id)
            if session is None:
                continue
            if holds(required, session.view()):
                drain.pending.add(session.node_id)
                self.draining_for.setdefault(session.node_id, set()).add(task.id)
            # A stop waits for these messages: no coalescing pause for them
            # (a burst of stops from one orchestrator pass still goes as one).
            if any(network_id in session.dirty_networks for network_id in required):
                session.urgent = True
        previous = self.drains.pop(task.id, None)
        if previous is not None:
            self._forget_drain(previous)
        self.drains[task.id] = drain
        if not drain.pending:
            self._announce(task.id)  # drained on this side at once
            self._check(drain)

    def confirmed(self, session: Session) -> None:
        """The node confirmed versions: the drains waiting for it that it
        now satisfies no longer do."""
        waiting = self.draining_for.get(session.node_id)
        if not waiting:
            return
        view = session.view()
        for task_id in list(waiting):
            drain = self.drains.get(task_id)
            if drain is not None and holds(drain.required, view):
                continue
            waiting.discard(task_id)
            if drain is not None:
                self._node_done(drain, session.node_id)
        if not waiting:
            del self.draining_for[session.node_id]

    def release_node(self, node_id: str) -> None:
        """The node has no session any more: no drain waits for it."""
        for task_id in self.draining_for.pop(node_id, set()):
            drain = self.drains.get(task_id)
            if drain is not None:
                self._node_done(drain, node_id)

    def _node_done(self, drain: Drain, node_id: str) -> None:
        drain.pending.discard(node_id)
        if not drain.pending:
            self._announce(drain.task_id)
            self._check(drain)

    def _check(self, drain: Drain) -> None:
        if is_complete(drain) and self.drains.get(drain.task_id) is drain:
            del self.drains[drain.task_id]
            self._drained(drain)

    def reported(self, controller: str, task_ids: Iterable[str]) -> None:
        """Another controller reports these tasks drained on its side."""
        for task_id in task_ids:
            drain = self.drains.get(task_id)
            if drain is not None:
                drain.controllers.discard(controller)
                self._check(drain)
            elif keeps_early_report(self._cache.tasks.get(task_id)):
                self.early_reports.setdefault(task_id, set()).add(controller)

    def controllers_changed(self) -> None:
        """The registry changed: a controller that left is not waited for."""
        live = set(self._cache.controllers)
        for drain in list(self.drains.values()):
            if drain.controllers:
                drain.controllers = still_awaited(drain.controllers, live)
                self._check(drain)

    def _forget_drain(self, drain: Drain) -> None:
        for node_id in drain.pending:
            waiting = self.draining_for.get(node_id)
            if waiting is not None:
                waiting.discard(drain.task_id)
                if not waiting:
                    del self.draining_for[node_id]

    def _drained(self, drain: Drain) -> None:
        """Tell the task's node its stop signal need wait no longer."""
        session = self._sessions.get(drain.node_id)
        if session is not None:
            session.drained.add(drain.task_id)
            session.urgent = True
            session.wake.set()
