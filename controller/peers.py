"""What each node must know about overlay networks: the networks its tasks
use, every endpoint of those networks (its own included: DNS and load
balancing need the local tasks too; the agent's data plane skips those on its
own VTEP), and the services attached to them (their names and VIPs).

`OverlayIndex` is kept up to date from task changes by the dispatcher, and
`ServiceIndex` from service changes. The peers of a network are derived from
the index and the nodes as they are when a message is sent, so a node going
DOWN (or changing its address) only needs the affected networks marked dirty.
`PeerTable` keeps each network's peers and service records, shared by all
sessions and updated by what changed, with a versioned change log;
`network_assignment` gives each node the complete set the first time and only
the changes after that (a large network would otherwise cost every node the
whole set on every change, and a readiness change is one peer to every node
on the network). A delta to an agent that takes compact ones carries the
network object and the service records only when they changed since what it
was sent (their versions are kept beside the peers'), and peers without
what the agent derives or does not use (MAC, node, the name's task-id
suffix): a task start is then its one or two short peers, not the network
and every service again. The entries are built once per (version,
since) and shared by every session at the same point, so a change on a
network of N nodes is built a handful of times, not N.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from swarm.api.healthcheck import is_up
from swarm.api.naming import task_name
from swarm.api.overlay import PeerRow, group_rows, mac_for_ip, peer_row
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import objects_pb2 as pb

from .wire import entry_field

_CHANGES_LIMIT = 100_000


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A task's endpoint on one network. Equality is what decides whether the
    nodes on the network are told: a readiness change is a change."""

    task_id: str
    node_id: str
    address: str  # CIDR form
    service_id: str = ""
    task_name: str = ""
    ready: bool = False
    # Whether it is a peer yet (is_started): before, its node is assigned the
    # network but no other node is told of it.
    started: bool = True


def is_started(task: pb.Task) -> bool:
    """Whether a present task's endpoint is a peer: from STARTING on, when its
    container joins the network (as docker publishes an endpoint when its
    sandbox joins), not from ASSIGNED. Until then nothing can reach it nor
    come from it, and its node alone needs to know (to set the network up
    before the task starts); the other nodes hear of it once, when it starts,
    and not once more for every task still waiting for its image or its
    turn. Nodes that start a task straight to RUNNING (a burst of simulated
    ones, an agent whose status window holds STARTING and RUNNING together)
    cost each other node one peer per task instead of two."""
    return task.status.state >= pb.STARTING


def is_present(task: pb.Task | None) -> bool:
    """Whether a task has (or is about to have) an endpoint on its node:
    assigned there and not yet ended, whatever its desired state (a task being
    stopped still answers until it has stopped)."""
    return task is not None and bool(task.node_id) and pb.ASSIGNED <= task.status.state <= pb.RUNNING


def is_ready(task: pb.Task) -> bool:
    """Whether DNS answers the task and load balancing sends it connections:
    RUNNING, not unhealthy nor still waiting for its first health check, and
    not being stopped (a task told to shut down stops getting new
    connections at once, before its container has stopped, as in docker)."""
    return is_up(task.status) and task.desired_state <= pb.RUNNING


def endpoints(task: pb.Task | None) -> dict[str, Endpoint]:
    """The task's endpoints by network id; none when it is not present."""
    if task is None or not is_present(task):
        return {}
    name, ready, started = task_name(task), is_ready(task), is_started(task)
    return {a.network_id: Endpoint(task.id, task.node_id, a.addresses[0], task.service_id,
                                   name, ready, started)
            for a in task.networks if a.addresses}


def _visible(endpoint: Endpoint | None) -> Endpoint | None:
    """The endpoint as the other nodes see it: nothing until it started."""
    return endpoint if endpoint is not None and endpoint.started else None


def vtep(node: pb.Node) -> str:
    """The node's underlay address: its advertise address without a port."""
    addr = node.status.addr or node.description.advertise_addr
    if addr.startswith("["):
        return addr[1:].partition("]")[0]
    return addr.rsplit(":", 1)[0] if addr.count(":") == 1 else addr


NODE_ENDPOINT_PREFIX = "node:"


def node_endpoints(node: pb.Node | None) -> dict[str, Endpoint]:
    """The node's own endpoints by network id (its ingress address: the
    routing mesh's source address), named "node:" + its id as peers."""
    if node is None:
        return {}
    return {a.network_id: Endpoint(NODE_ENDPOINT_PREFIX + node.id, node.id, a.addresses[0])
            for a in node.attachments if a.addresses}


class OverlayIndex:
    def __init__(self, tasks: Iterable[pb.Task] = ()) -> None:
        self.endpoints: dict[str, dict[str, Endpoint]] = {}  # network -> task -> endpoint
        self._node_networks: dict[str, Counter[str]] = {}  # node -> network -> present tasks
        # The reverse: network -> node -> present tasks, so that a change on a
        # network finds its nodes without a look at every session.
        self._network_nodes: dict[str, Counter[str]] = {}
        # Per network, the tasks whose endpoint changed since PeerTable last
        # looked (it takes them with take_changes), so that it updates its
        # tables by what changed instead of rebuilding them per message.
        self._changes: dict[str, set[str]] = {}
        self._overflowed: set[str] = set()
        # node -> network -> the endpoints it holds there, so that a node
        # going DOWN (or coming back, or moving) marks only its own endpoints
        # changed: with 10,000 endpoints on a network, rebuilding every peer
        # per node change made a wave of DOWN marks quadratic.
        self._node_endpoints: dict[str, dict[str, set[str]]] = {}
        for task in tasks:
            self.apply(None, task)

    def apply(self, old: pb.Task | None, new: pb.Task | None) -> set[str]:
        """Account a task change; returns the networks whose endpoints changed."""
        return self.apply_split(old, new)[0]

    def apply_split(self, old: pb.Task | None, new: pb.Task | None
                    ) -> tuple[set[str], set[str]]:
        """Account a task change; returns the networks whose endpoints changed
        (their use by the task's node included), and of those the networks
        whose peers changed (what the other nodes are told)."""
        task_id = (new or old).id if (new or old) is not None else ""  # type: ignore[union-attr]
        before, after = endpoints(old), endpoints(new)
        changed = self._account(before, after, task_id)
        return changed, {n for n in changed
                         if _visible(before.get(n)) != _visible(after.get(n))}

    def apply_node(self, old: pb.Node | None, new: pb.Node | None) -> set[str]:
        """Account a node change (its own endpoints); returns the networks
        whose endpoints changed. A node with an endpoint on a network is
        assigned that network, tasks or not (networks_of)."""
        node_id = (new or old).id if (new or old) is not None else ""  # type: ignore[union-attr]
        return self._account(node_endpoints(old), node_endpoints(new),
                             NODE_ENDPOINT_PREFIX + node_id)

    def _account(self, before: dict[str, Endpoint], after: dict[str, Endpoint],
                 task_id: str) -> set[str]:
        changed: set[str] = set()
        for network_id, endpoint in before.items():
            if after.get(network_id) != endpoint:
                changed.add(network_id)
                self._remove(network_id, endpoint)
        for network_id, endpoint in after.items():
            if before.get(network_id) != endpoint:
                changed.add(network_id)
                self.endpoints.setdefault(network_id, {})[endpoint.task_id] = endpoint
                self._node_networks.setdefault(endpoint.node_id, Counter())[network_id] += 1
                self._network_nodes.setdefault(network_id, Counter())[endpoint.node_id] += 1
                self._node_endpoints.setdefault(endpoint.node_id, {}).setdefault(
                    network_id, set()).add(endpoint.task_id)
        for network_id in changed:
            if _visible(before.get(network_id)) != _visible(after.get(network_id)):
                self._changed(network_id, task_id)
        return changed

    def _changed(self, network_id: str, task_id: str) -> None:
        pending = self._changes.setdefault(network_id, set())
        pending.add(task_id)
        if len(pending) > _CHANGES_LIMIT:
            # Nobody has looked for a long time: "everything changed" is
            # cheaper to keep than the list.
            self._changes[network_id] = set()
            self._overflowed.add(network_id)

    def node_changed(self, node_id: str) -> set[str]:
        """The node went DOWN, came back, moved or went away: each of its
        endpoints (and only those) is to be looked at again, since whether
        and where it can be reached derives from the node. Returns the
        networks concerned."""
        held = self._node_endpoints.get(node_id, {})
        for network_id, task_ids in held.items():
            for task_id in task_ids:
                self._changed(network_id, task_id)
        return set(held)

    def take_changes(self, network_id: str) -> set[str] | None:
        """The tasks whose endpoint on the network changed since the last call;
        None when too many did to keep track (treat every endpoint as changed)."""
        if network_id in self._overflowed:
            self._overflowed.discard(network_id)
            self._changes.pop(network_id, None)
            return None
        return self._changes.pop(network_id, set())

    def _remove(self, network_id: str, endpoint: Endpoint) -> None:
        members = self.endpoints.get(network_id, {})
        members.pop(endpoint.task_id, None)
        if not members:
            self.endpoints.pop(network_id, None)
        held = self._node_endpoints.get(endpoint.node_id)
        if held is not None:
            task_ids = held.get(network_id)
            if task_ids is not None:
                task_ids.discard(endpoint.task_id)
                if not task_ids:
                    del held[network_id]
            if not held:
                del self._node_endpoints[endpoint.node_id]
        counts = self._node_networks.get(endpoint.node_id)
        if counts is not None:
            counts[network_id] -= 1
            if counts[network_id] <= 0:
                del counts[network_id]
            if not counts:
                del self._node_networks[endpoint.node_id]
        nodes = self._network_nodes.get(network_id)
        if nodes is not None:
            nodes[endpoint.node_id] -= 1
            if nodes[endpoint.node_id] <= 0:
                del nodes[endpoint.node_id]
            if not nodes:
                del self._network_nodes[network_id]

    def networks_of(self, node_id: str) -> set[str]:
        """The networks the node's present tasks use."""
        return set(self._node_networks.get(node_id, ()))

    def nodes_on(self, network_id: str) -> Iterable[str]:
        """The nodes whose present tasks (or own endpoint) use the network."""
        return self._network_nodes.get(network_id, {}).keys()

    def uses(self, node_id: str, network_id: str) -> bool:
        """Whether the node's present tasks use the network (networks_of
        without building the set: asked per session on every change)."""
        return network_id in self._node_networks.get(node_id, ())


def service_records(service: pb.Service | None) -> dict[str, dpb.ServiceRecord]:
    """The service's record on each network it attaches to (spec.task.networks
    targets, IDs once validated): its VIP there (empty in dnsrr mode and until
    allocated, which is in the same write as the service), and its aliases
    there (a stack service's short name, compose `aliases`)."""
    if service is None:
        return {}
    vips = {vip.network_id: vip.addr for vip in service.endpoint.virtual_ips}
    mode = service.spec.endpoint.mode
    return {attachment.target: dpb.ServiceRecord(
                id=service.id, name=service.spec.name, mode=mode,
                vip=vips.get(attachment.target, "") if mode == pb.EndpointSpec.VIP else "",
                aliases=[a for a in dict.fromkeys(attachment.aliases) if a != service.spec.name])
            for attachment in service.spec.task.networks}


class ServiceIndex:
    """The services attached to each network, as records, kept up to date
    from service changes; remembers which networks' records changed until
    PeerTable takes them (take_changed)."""

    def __init__(self, services: Iterable[pb.Service] = ()) -> None:
        self._records: dict[str, dict[str, dpb.ServiceRecord]] = {}  # network -> service -> record
        self._changed: set[str] = set()
        for service in services:
            self.apply(None, service)

    def apply(self, old: pb.Service | None, new: pb.Service | None) -> set[str]:
        """Account a service change; returns the networks whose records changed."""
        before, after = service_records(old), service_records(new)
        service_id = (new or old).id if (new or old) is not None else ""  # type: ignore[union-attr]
        changed = {network_id for network_id in before.keys() | after.keys()
                   if before.get(network_id) != after.get(network_id)}
        for network_id in changed:
            members = self._records.setdefault(network_id, {})
            record = after.get(network_id)
            if record is None:
                members.pop(service_id, None)
                if not members:
                    del self._records[network_id]
            else:
                members[service_id] = record
        self._changed |= changed
        return changed

    def records(self, network_id: str) -> list[dpb.ServiceRecord]:
        """The network's service records, by name."""
        members = self._records.get(network_id, {})
        return sorted(members.values(), key=lambda r: (r.name, r.id))

    def take_changed(self, network_id: str) -> bool:
        """Whether the network's records changed since the last call."""
        if network_id in self._changed:
            self._changed.discard(network_id)
            return True
        return False


@dataclass
class NetworkPeers:
    """One network's peer set and service records, versioned, with the log of
    what changed.

    `version` grows by one per refresh that changed anything; `log` holds
    (version, task id) for every peer change after `floor` (a version without
    entries changed only the service records). A session that last received
    version v >= floor can be sent the changes after v; one below the floor
    (or new) gets the complete set.
    """

    nodes_generation: int  # of the nodes it was built against
    peers: dict[str, dpb.OverlayPeer]  # by task id
    services: list[dpb.ServiceRecord]
    version: int = 1
    floor: int = 1
    log: deque[tuple[int, str]] = field(default_factory=deque)
    # The versions at which the network object and the service records last
    # changed: a compact delta after them leaves them out.
    network_at: int = 1
    services_at: int = 1
    network_dirty: bool = False  # the network object changed since the last refresh
    # Entries built for the current version, by (since, compact): shared.
    built: dict[tuple[int | None, bool, bool], dpb.NetworkAssignment | None] = field(
        default_factory=dict)
    # The same entries as sent (wire.entry_field) with the peers they name:
    # serialized once, not once per session.
    encoded: dict[tuple[int | None, bool, bool], tuple[bytes, int]] = field(
        default_factory=dict)
    # The compact form of each peer (compact_peer), made when first sent and
    # kept until the peer changes: every session's delta reuses it.
    compact: dict[str, dpb.OverlayPeer] = field(default_factory=dict)

    # ... and as a row for grouping (swarm.api.overlay.peer_row), the same way.
    rows: dict[str, PeerRow] = field(default_factory=dict)

    def compact_peer(self, task_id: str) -> dpb.OverlayPeer:
        made = self.compact.get(task_id)
        if made is None:
            made = self.compact[task_id] = compact_peer(self.peers[task_id])
        return made

    def row(self, task_id: str) -> PeerRow:
        made = self.rows.get(task_id)
        if made is None:
            made = self.rows[task_id] = peer_row(self.compact_peer(task_id))
        return made


def _peer(endpoint: Endpoint | None, nodes: Mapping[str, pb.Node]) -> dpb.OverlayPeer | None:
    """The peer an endpoint is, or None when its node is gone, DOWN or has no
    address (a node that never said where it is cannot be reached)."""
    if endpoint is None or not endpoint.started:
        return None
    node = nodes.get(endpoint.node_id)
    if node is None or node.status.state == pb.NodeStatus.DOWN:
        return None
    address = vtep(node)
    if not address:
        return None
    return dpb.OverlayPeer(
        task_id=endpoint.task_id, node_id=endpoint.node_id, address=endpoint.address,
        mac=mac_for_ip(endpoint.address), vtep=address, service_id=endpoint.service_id,
        task_name=endpoint.task_name, ready=endpoint.ready)


class PeerTable:
    """Peer sets shared by every session, updated by what changed (the
    index's changed tasks; every endpoint when a node changed), with a
    bounded change log so each session is sent only what changed."""

    def __init__(self, log_limit: int = 50_000) -> None:
        # Bumped by a caller when any node's state or address may have
        # changed: every endpoint is looked at again. The dispatcher marks
        # the node's own endpoints instead (OverlayIndex.node_changed).
        self.nodes_generation = 0
        self._log_limit = log_limit
        self._tables: dict[str, NetworkPeers] = {}

    def refresh(self, network_id: str, index: OverlayIndex, services: ServiceIndex,
                nodes: Mapping[str, pb.Node]) -> NetworkPeers:
        """The network's current table, brought up to date."""
        members = index.endpoints.get(network_id, {})
        taken = index.take_changes(network_id)
        services_changed = services.take_changed(network_id)
        table = self._tables.get(network_id)
        if table is None:
            peers = {}
            for task_id, endpoint in members.items():
                peer = _peer(endpoint, nodes)
                if peer is not None:
                    peers[task_id] = peer
            table = self._tables[network_id] = NetworkPeers(self.nodes_generation, peers,
                                                            services.records(network_id))
            return table
        if taken is None or table.nodes_generation != self.nodes_generation:
            # A node went down, came back or moved: any endpoint may differ.
            changed_tasks = set(table.peers.keys() | members.keys())
            table.nodes_generation = self.nodes_generation
        else:
            changed_tasks = taken
        changed: list[str] = []
        for task_id in sorted(changed_tasks):
            peer = _peer(members.get(task_id), nodes)
            if peer == table.peers.get(task_id):
                continue
            table.compact.pop(task_id, None)
            table.rows.pop(task_id, None)
            if peer is None:
                del table.peers[task_id]
            else:
                table.peers[task_id] = peer
            changed.append(task_id)
        records_moved = False
        if services_changed:
            records = services.records(network_id)
            records_moved = records != table.services
            table.services = records
        network_moved, table.network_dirty = table.network_dirty, False
        if changed or records_moved or network_moved:
            table.version += 1
            table.built.clear()
            table.encoded.clear()
            table.log.extend((table.version, task_id) for task_id in changed)
            if records_moved:
                table.services_at = table.version
            if network_moved:
                table.network_at = table.version
            while len(table.log) > self._log_limit:
                table.floor = table.log.popleft()[0]
        return table

    def network_changed(self, network_id: str) -> None:
        """The network object changed (not its peers): its next version
        carries it to the nodes that have it."""
        table = self._tables.get(network_id)
        if table is not None:
            table.network_dirty = True

    def forget(self, network_id: str) -> None:
        self._tables.pop(network_id, None)


def _changed_since(table: NetworkPeers, version: int) -> set[str]:
    changed: set[str] = set()
    for logged, task_id in reversed(table.log):
        if logged <= version:
            break
        changed.add(task_id)
    return changed


def network_assignment(network: pb.Network, table: NetworkPeers, since: int | None,
                       compact: bool = False, grouped: bool = False
                       ) -> dpb.NetworkAssignment | None:
    """What a node must be sent about the network, having last been sent
    version `since` of its table (None: never): the complete peer set, or the
    peer changes after `since`; None when nothing changed. The same for every
    node (its own endpoints are peers too), so it is built once per (version,
    since, form) and SHARED: copy it before changing it. The network goes
    without its store bookkeeping (meta, allocation cursor); a `compact`
    delta without what did not change since `since`, its peers compact, and
    `grouped` (with compact) in peer_groups instead of peers (dispatcher.proto)."""
    if since is not None and since >= table.version:
        return None
    key = _built_key(table, since, compact, grouped)
    if key in table.built:
        return table.built[key]
    result = table.built[key] = _build_assignment(network, table, key[0], compact, grouped)
    return result


def _built_key(table: NetworkPeers, since: int | None, compact: bool, grouped: bool
               ) -> tuple[int | None, bool, bool]:
    return (since if since is not None and since >= table.floor else None, compact,
            compact and grouped)


def encoded_assignment(network: pb.Network, table: NetworkPeers, since: int | None,
                       compact: bool = False, grouped: bool = False
                       ) -> tuple[bytes, int] | None:
    """network_assignment as sent (wire.entry_field: one element of
    Assignments.networks, field key included), with how many peers it names
    (added, changed or removed); serialized once per (version, since,
    form) and shared like the entry itself."""
    entry = network_assignment(network, table, since, compact, grouped)
    if entry is None:
        return None
    key = _built_key(table, since, compact, grouped)
    made = table.encoded.get(key)
    if made is None:
        made = table.encoded[key] = (entry_field(entry), peers_named(entry))
    return made


def peers_named(entry: dpb.NetworkAssignment) -> int:
    """The peers an entry names: added, changed (in either form) or removed."""
    return len(entry.peers) + len(entry.removed_peers) + sum(
        len(group.task_ids) for group in entry.peer_groups)


def as_sent(network: pb.Network) -> pb.Network:
    """The network as nodes are told it: without its store bookkeeping (meta,
    the allocation cursor, which moves with every address given out)."""
    result = pb.Network()
    result.CopyFrom(network)
    result.ClearField("meta")
    result.address_cursor = ""
    return result


def network_news(old: pb.Network | None, new: pb.Network | None) -> bool:
    """Whether a network change is anything nodes are told: not a moved
    allocation cursor (every task start moves it)."""
    if old is None or new is None:
        return True
    return as_sent(old) != as_sent(new)


def compact_peer(peer: dpb.OverlayPeer) -> dpb.OverlayPeer:
    """The peer without what the agent derives or does not use: its MAC
    (from the address), its node, and its name's ".TASKID" suffix."""
    result = dpb.OverlayPeer(task_id=peer.task_id, address=peer.address, vtep=peer.vtep,
                             service_id=peer.service_id, task_name=peer.task_name,
                             ready=peer.ready)
    suffix = "." + peer.task_id
    if peer.task_name.endswith(suffix):
        result.task_name = peer.task_name[:-len(suffix)]
    return result


def _build_assignment(network: pb.Network, table: NetworkPeers, since: int | None,
                      compact: bool, grouped: bool) -> dpb.NetworkAssignment:
    result = dpb.NetworkAssignment(version=table.version, peers_compact=compact)
    if since is None:
        result.network.CopyFrom(as_sent(network))
        result.services.extend(table.services)
        _add_peers(result, table, sorted(table.peers), compact, grouped)
        return result
    result.delta = True
    if compact and since >= table.network_at:
        result.network.id = network.id
        result.network_unchanged = True
    else:
        result.network.CopyFrom(as_sent(network))
    if compact and since >= table.services_at:
        result.services_unchanged = True
    else:
        result.services.extend(table.services)
    present: list[str] = []
    for task_id in sorted(_changed_since(table, since)):
        if task_id in table.peers:
            present.append(task_id)
        else:
            result.removed_peers.append(task_id)
    _add_peers(result, table, present, compact, grouped)
    return result


def _add_peers(result: dpb.NetworkAssignment, table: NetworkPeers, task_ids: list[str],
               compact: bool, grouped: bool) -> None:
    if not compact:
        result.peers.extend([table.peers[t] for t in task_ids])
    elif grouped:
        result.peer_groups.extend(group_rows([table.row(t) for t in task_ids]))
    else:
        result.peers.extend([table.compact_peer(t) for t in task_ids])
