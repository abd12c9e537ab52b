"""The routing mesh's network: the `ingress` overlay and every node's own
address on it.

As `docker swarm init` does, the leader creates the ingress network when
the cluster has none (on gaining leadership; a removed one is not brought
back until then, so `network rm ingress` sticks). Every node gets an address
on it, kept in `Node.attachments`: the source address of the connections
its routing-mesh proxy opens to the tasks, so their replies come back over
the overlay. Tasks of services publishing ports in ingress mode get an
address there too (allocator.tasks).

Node addresses are allocated as task addresses are (create-only key owned
by "node/ID", the network's cursor moved with a compare-and-swap), and
released when the node is removed (control API, in the same transaction).
Node objects are also written by the dispatcher (status): every write here
compares the node's version, and a conflict is a new pass from the
refreshed cache, never an overwrite.

At thousands of nodes the keeper must not look at every node on every node
change (a join is a change): it keeps the set of nodes that need work
(`needs_work`), and a pass plans only those. A full subnet is remembered:
once it ran out, nodes arriving are not planned (nor the error logged again)
until an address may have come free (a node removed, the network changed)
or `_EXHAUSTED_RETRY` has passed (a task's address released).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from swarm.api.v1 import objects_pb2 as pb

from ..ids import new_id
from ..store import (
    Change,
    Conflict,
    Guard,
    NetworkChange,
    NodeChange,
    Op,
    Store,
    StoreError,
    Update,
)
from ..store.etcd import MAX_TXN_OPS
from .claims import claim_address, network_ops, node_owner, release_address
from .networks import AllocationError, Pool, allocate_network, pool_settings

log = logging.getLogger(__name__)

INGRESS_NAME = "ingress"
NO_INGRESS_MESSAGE = ("the service publishes ports in ingress mode, but the cluster has no "
                      "ingress network")
_NODES_PER_TXN = 50  # two operations each, and the network's cursor
_CONFLICTS_PER_PASS = 20
_EXHAUSTED_RETRY = 10.0  # seconds: a full subnet is tried again this often


def find_ingress(networks: Iterable[pb.Network]) -> pb.Network | None:
    """The cluster's ingress network (there is at most one)."""
    return next((n for n in networks if n.spec.ingress and n.subnet), None)


def ingress_spec() -> pb.NetworkSpec:
    return pb.NetworkSpec(name=INGRESS_NAME, driver="overlay", ingress=True)


def node_address(node: pb.Node, network_id: str) -> str:
    """The node's own address (CIDR) on the network; empty when it has none."""
    for attachment in node.attachments:
        if attachment.network_id == network_id and attachment.addresses:
            return attachment.addresses[0]
    return ""


def needs_work(node: pb.Node, ingress_id: str | None) -> bool:
    """Whether the keeper has something to write on this node: an address on
    the ingress network to give, or an attachment to another network to drop."""
    has_address = False
    for attachment in node.attachments:
        if attachment.network_id != ingress_id or not attachment.addresses:
            return True
        has_address = True
    return ingress_id is not None and not has_address


@dataclass
class NodePlan:
    nodes: list[pb.Node] = field(default_factory=list)  # new versions to write
    claimed: dict[str, int] = field(default_factory=dict)  # node id -> address
    released: list[tuple[str, str]] = field(default_factory=list)  # (network id, cidr)
    pool: Pool | None = None
    problem: str = ""  # why some nodes got nothing (subnet full)


def plan_node_attachments(nodes: Iterable[pb.Node], ingress: pb.Network | None,
                          used: Mapping[str, AbstractSet[int]], limit: int) -> NodePlan:
    """Up to `limit` nodes to write: those without an address on the ingress
    network get one; attachments on any other network (a removed ingress)
    are dropped. Inputs are not modified."""
    plan = NodePlan()
    if ingress is not None:
        plan.pool = Pool(ingress, used.get(ingress.id, ()))
    for node in sorted(nodes, key=lambda n: n.id):
        if len(plan.nodes) >= limit:
            break
        keep = [a for a in node.attachments if ingress is not None and a.network_id == ingress.id
                and a.addresses]
        stale = [a for a in node.attachments if a not in keep]
        wanted = ingress is not None and not keep
        if wanted and plan.problem:
            wanted = False  # the subnet ran out for an earlier node: no search again
        if not stale and not wanted:
            continue
        updated = pb.Node()
        updated.CopyFrom(node)
        del updated.attachments[:]
        updated.attachments.extend(keep)
        plan.released.extend((a.network_id, cidr) for a in stale for cidr in a.addresses)
        if wanted:
            assert plan.pool is not None
            assert ingress is not None
            address = plan.pool.take()
            if address is None:
                plan.problem = plan.pool.exhausted_message()
            else:
                updated.attachments.add(network_id=ingress.id,
                                        addresses=[plan.pool.subnet.cidr(address)])
                plan.claimed[node.id] = address
        if list(updated.attachments) != list(node.attachments):
            plan.nodes.append(updated)
    return plan


class IngressKeeper:
    """The leader's loop: the ingress network exists (made once per
    leadership when absent), every node has its address on it."""

    def __init__(self, store: Store, addresses: Mapping[str, AbstractSet[int]], *,
                 create: bool = True) -> None:
        self._store = store
        self._addresses = addresses
        self._create = create  # make the network when absent (else only node addresses)
        self._wake = asyncio.Event()
        # Nodes that need work (needs_work); recomputed from the cache when the
        # networks change, kept up to date from node changes otherwise.
        self._needs: set[str] = set()
        self._ingress_id: str | None = None
        # The subnet ran out: nodes that arrive wait for an address to come free.
        self._exhausted = False
        self._retry: asyncio.TimerHandle | None = None

    def _rescan(self) -> None:
        cache = self._store.cache
        ingress = find_ingress(cache.networks.values())
        self._ingress_id = ingress.id if ingress is not None else None
        self._needs = {n.id for n in cache.nodes.values() if needs_work(n, self._ingress_id)}
        self._exhausted = False

    def _on_change(self, change: Change) -> None:
        match change:
            case NetworkChange(old=old, new=new) if any(
                    n is not None and n.spec.ingress for n in (old, new)):
                # Only the ingress network matters here; other networks are
                # written with every address given out (their cursor), and a
                # rescan looks at every node. So does the ingress network
                # itself, with each batch of node addresses: which nodes need
                # work depends only on its ID, so a rescan (5-6 % of the
                # controller's CPU while 2,000 nodes joined) only when that
                # changes.
                ingress = find_ingress(self._store.cache.networks.values())
                if (ingress.id if ingress is not None else None) != self._ingress_id:
                    self._rescan()
                self._exhausted = False  # as a rescan does: its pool may have changed
                self._wake.set()
            case NodeChange(object_id=node_id, new=None):
                self._needs.discard(node_id)
                self._exhausted = False  # its address is free again
                self._wake.set()
            case NodeChange(new=new) if new is not None:
                if needs_work(new, self._ingress_id):
                    self._needs.add(new.id)
                    if not self._exhausted:
                        self._wake.set()
                else:
                    self._needs.discard(new.id)

    def _retry_later(self) -> None:
        def retry() -> None:
            self._retry = None
            self._exhausted = False
            self._wake.set()

        if self._retry is None:
            self._retry = asyncio.get_running_loop().call_later(_EXHAUSTED_RETRY, retry)

    async def run(self, guard: Guard) -> None:
        unsubscribe = self._store.cache.subscribe(self._on_change)
        self._rescan()
        try:
            delay = 0.5
            while self._create:
                try:
                    await self.ensure_network(guard)
                    break
                except StoreError as error:  # etcd down or full: keep trying, no crash
                    log.warning("ingress: cannot create the network (retrying in %.0fs): %s",
                                delay, error)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
            self._wake.set()
            while True:
                await self._wake.wait()
                self._wake.clear()
                await self._pass(guard)
        finally:
            unsubscribe()
            if self._retry is not None:
                self._retry.cancel()
                self._retry = None

    async def ensure_network(self, guard: Guard | None) -> None:
        """Create the ingress network unless there is one (or a network of
        that name that is not one: left alone, with a warning)."""
        for attempt in range(10):
            cache = self._store.cache
            if find_ingress(cache.networks.values()) is not None:
                return
            if any(n.spec.name == INGRESS_NAME for n in cache.networks.values()):
                log.warning("a network named %r exists but is not an ingress network: the "
                            "routing mesh has none", INGRESS_NAME)
                return
            try:
                allocation = allocate_network(ingress_spec(), cache.networks.values(),
                                              pool_settings(cache.clusters.values()))
            except AllocationError as error:
                log.error("cannot create the ingress network: %s", error)
                return
            network = pb.Network(id=new_id(), spec=ingress_spec(), vni=allocation.vni,
                                 subnet=allocation.subnet, gateway=allocation.gateway)
            try:
                await self._store.commit(network_ops(self._store.keys, network), guard=guard)
            except Conflict:
                # A concurrent creation (the watch shows it) or a lost subnet race.
                await asyncio.sleep(0.05 * (attempt + 1))
                continue
            log.info("created the ingress network %s: subnet %s, VNI %d", network.id,
                     network.subnet, network.vni)
            return

    async def _pass(self, guard: Guard | None) -> None:
        for _ in range(_CONFLICTS_PER_PASS):
            cache = self._store.cache
            ingress = find_ingress(cache.networks.values())
            if (ingress.id if ingress is not None else None) != self._ingress_id:
                self._rescan()
            nodes = [cache.nodes[n] for n in self._needs if n in cache.nodes]
            plan = plan_node_attachments(nodes, ingress, self._addresses, _NODES_PER_TXN)
            if plan.problem and not self._exhausted:
                log.error("ingress: %s", plan.problem)
            if plan.problem:
                self._exhausted = True
                self._retry_later()
            if not plan.nodes:
                return
            keys = self._store.keys
            ops: list[Op] = [Update(node) for node in plan.nodes]
            if plan.pool is not None and plan.claimed:
                ops.append(Update(plan.pool.network))
            ops.extend(claim_address(keys, plan.pool.network.id, address, node_owner(node_id))
                       for node_id, address in plan.claimed.items() if plan.pool is not None)
            ops.extend(release_address(keys, network_id, cidr)
                       for network_id, cidr in plan.released)
            assert len(ops) < MAX_TXN_OPS
            try:
                await self._store.commit(ops, guard=guard)
            except Conflict:
                # A node or the network changed meanwhile (the dispatcher's
                # status write, say): plan again from the refreshed cache.
                await asyncio.sleep(0.02)
                continue
            except StoreError as error:
                log.warning("ingress: cannot write node addresses: %s", error)
                await asyncio.sleep(0.5)
                self._wake.set()
                return
            log.info("ingress: %d node address(es) allocated, %d released", len(plan.claimed),
                     len(plan.released))
            # The written nodes left the set through the write-through;
            # whoever is left (and can be served) is another transaction.
            if self._needs and not self._exhausted:
                self._wake.set()
            return
        self._wake.set()  # still conflicting: another pass after the others have written
