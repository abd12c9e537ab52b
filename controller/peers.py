"""What each node must know about overlay networks: the networks its tasks
use, and every endpoint of those networks on other nodes (the peers its
VXLAN device needs as FDB and neighbour entries).

`OverlayIndex` is kept up to date from task changes by the dispatcher. The
peer list of a network is built (`build_peers`, pure) from the index and the
nodes as they are when a message is sent, so a node going DOWN (or changing
its address) only needs the affected networks marked dirty; `PeerTable`
builds it once per change for all the sessions, and `network_assignment`
cuts each node's own endpoints out of it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from swarmapi.overlay import mac_for_ip
from swarmapi.v1 import dispatcher_pb2 as dpb
from swarmapi.v1 import objects_pb2 as pb


@dataclass(frozen=True, slots=True)
class Endpoint:
    task_id: str
    node_id: str
    address: str  # CIDR form


def is_present(task: pb.Task | None) -> bool:
    """Whether a task has (or is about to have) an endpoint on its node:
    assigned there and not yet ended, whatever its desired state (a task being
    stopped still answers until it has stopped)."""
    return task is not None and bool(task.node_id) and pb.ASSIGNED <= task.status.state <= pb.RUNNING


def endpoints(task: pb.Task | None) -> dict[str, Endpoint]:
    """The task's endpoints by network id; none when it is not present."""
    if task is None or not is_present(task):
        return {}
    return {a.network_id: Endpoint(task.id, task.node_id, a.addresses[0])
            for a in task.networks if a.addresses}


def vtep(node: pb.Node) -> str:
    """The node's underlay address: its advertise address without a port."""
    addr = node.status.addr or node.description.advertise_addr
    if addr.startswith("["):
        return addr[1:].partition("]")[0]
    return addr.rsplit(":", 1)[0] if addr.count(":") == 1 else addr


class OverlayIndex:
    def __init__(self, tasks: Iterable[pb.Task] = ()) -> None:
        self.endpoints: dict[str, dict[str, Endpoint]] = {}  # network -> task -> endpoint
        self._node_networks: dict[str, Counter[str]] = {}  # node -> network -> present tasks
        # Bumped whenever a network's endpoints change: what PeerTable keys on.
        self.generation: Counter[str] = Counter()
        for task in tasks:
            self.apply(None, task)

    def apply(self, old: pb.Task | None, new: pb.Task | None) -> set[str]:
        """Account a task change; returns the networks whose endpoints changed."""
        before, after = endpoints(old), endpoints(new)
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
        self.generation.update(changed)
        return changed

    def _remove(self, network_id: str, endpoint: Endpoint) -> None:
        members = self.endpoints.get(network_id, {})
        members.pop(endpoint.task_id, None)
        if not members:
            self.endpoints.pop(network_id, None)
        counts = self._node_networks.get(endpoint.node_id)
        if counts is not None:
            counts[network_id] -= 1
            if counts[network_id] <= 0:
                del counts[network_id]
            if not counts:
                del self._node_networks[endpoint.node_id]

    def networks_of(self, node_id: str) -> set[str]:
        """The networks the node's present tasks use."""
        return set(self._node_networks.get(node_id, ()))


Peers = list[tuple[str, dpb.OverlayPeer]]  # (node id, peer), sorted by task id


def build_peers(members: Mapping[str, Endpoint], nodes: Mapping[str, pb.Node]) -> Peers:
    """Every endpoint of a network on a node that exists, is not DOWN and has
    an address, sorted by task id."""
    peers: Peers = []
    for task_id in sorted(members):
        endpoint = members[task_id]
        node = nodes.get(endpoint.node_id)
        if node is None or node.status.state == pb.NodeStatus.DOWN:
            continue
        address = vtep(node)
        if not address:
            continue  # a node that never said where it is cannot be reached
        peers.append((endpoint.node_id, dpb.OverlayPeer(
            task_id=task_id, node_id=endpoint.node_id, address=endpoint.address,
            mac=mac_for_ip(endpoint.address), vtep=address)))
    return peers


def network_assignment(network: pb.Network, peers: Peers, node_id: str) -> dpb.NetworkAssignment:
    """The network and its peers as node_id must see them: all but its own
    endpoints. The network goes without its store bookkeeping (meta,
    allocation cursor), so that an unchanged assignment serialises the same
    and is not sent again."""
    result = dpb.NetworkAssignment(network=network)
    result.network.ClearField("meta")
    result.network.address_cursor = ""
    result.peers.extend(peer for owner, peer in peers if owner != node_id)
    return result


class PeerTable:
    """Peer lists built once per change and shared by every session: with the
    full set resent on each change, building it per session made placing 2,000
    tasks over 50 nodes several times slower."""

    def __init__(self) -> None:
        self.nodes_generation = 0  # bumped by the caller when a node's state or address changes
        self._memo: dict[str, tuple[tuple[int, int], Peers]] = {}

    def peers(self, network_id: str, index: OverlayIndex, nodes: Mapping[str, pb.Node]) -> Peers:
        key = (index.generation[network_id], self.nodes_generation)
        cached = self._memo.get(network_id)
        if cached is not None and cached[0] == key:
            return cached[1]
        peers = build_peers(index.endpoints.get(network_id, {}), nodes)
        self._memo[network_id] = (key, peers)
        return peers

    def forget(self, network_id: str) -> None:
        self._memo.pop(network_id, None)
