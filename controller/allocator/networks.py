"""Pure allocation decisions for networks (subnet, gateway, VNI) and service
virtual IPs, from the objects the caller read (the watch cache). No I/O: the
caller writes the result together with its claims (see claims), and a race
lost to another controller is a failed transaction, not a duplicate."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from swarm.api.v1 import objects_pb2 as pb

from . import ipam


class AllocationError(ValueError):
    """An allocation that cannot be made: the field it is about and why.
    `exhausted` tells "nothing left" (retry later) from bad input."""

    def __init__(self, field: str, problem: str, exhausted: bool = False) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem
        self.exhausted = exhausted

    def __str__(self) -> str:
        return f"{self.field}: {self.problem}"


@dataclass(frozen=True)
class PoolSettings:
    pools: tuple[IPv4Network, ...] = tuple(IPv4Network(p) for p in ipam.DEFAULT_POOLS)
    subnet_size: int = ipam.DEFAULT_SUBNET_SIZE
    # The ingress network's block: every node takes an address there, so a
    # /24 would leave nodes past the 253rd out of the routing mesh.
    ingress_subnet_size: int = ipam.DEFAULT_INGRESS_SUBNET_SIZE

    def size_for(self, spec: pb.NetworkSpec) -> int:
        """The prefix length of a network made from the pools: the ingress
        size for the ingress network, capped at the largest pool (a pool
        smaller than a /16 still holds an ingress network, a smaller one)."""
        if not spec.ingress:
            return self.subnet_size
        largest = min((p.prefixlen for p in self.pools), default=self.ingress_subnet_size)
        return max(self.ingress_subnet_size, largest)


def pool_settings(clusters: Iterable[pb.Cluster]) -> PoolSettings:
    """The cluster's default address pools, or 10.0.0.0/8 in /24s (the
    ingress network in a /16). Entries that do not parse (only a damaged
    store has them) are skipped."""
    for cluster in clusters:
        config = cluster.spec.ipam
        pools: list[IPv4Network] = []
        for text in config.address_pools:
            try:
                pools.append(IPv4Network(text))
            except ValueError:
                continue
        size = config.subnet_size or ipam.DEFAULT_SUBNET_SIZE
        ingress_size = config.ingress_subnet_size or ipam.DEFAULT_INGRESS_SUBNET_SIZE
        if pools or config.subnet_size or config.ingress_subnet_size:
            return PoolSettings(tuple(pools) or PoolSettings().pools, size, ingress_size)
    return PoolSettings()


def network_subnets(networks: Iterable[pb.Network]) -> list[tuple[str, IPv4Network]]:
    return [(n.spec.name, IPv4Network(n.subnet)) for n in networks if n.subnet]


@dataclass(frozen=True)
class NetworkAllocation:
    subnet: str
    gateway: str
    vni: int


def allocate_network(spec: pb.NetworkSpec, existing: Iterable[pb.Network],
                     pools: PoolSettings) -> NetworkAllocation:
    """Subnet, gateway and VNI for a new network (spec already validated):
    the given subnet if it overlaps no other network, else the lowest free
    block of the pools; the given gateway, else the subnet's first address;
    the lowest free VNI from 4096."""
    existing = list(existing)
    taken = network_subnets(existing)
    if spec.ipam.subnet:
        subnet = IPv4Network(spec.ipam.subnet)
        clash = ipam.overlapping(subnet, taken)
        if clash is not None:
            raise AllocationError("spec.ipam.subnet", f"{subnet} overlaps network {clash[0]!r} "
                                  f"({clash[1]})")
    else:
        size = pools.size_for(spec)
        found = ipam.next_subnet(pools.pools, size, [s for _, s in taken])
        if found is None:
            where = ", ".join(str(p) for p in pools.pools)
            raise AllocationError("spec.ipam.subnet", f"no free /{size} left in the "
                                  f"default address pools ({where}); give --subnet or remove "
                                  "unused networks", exhausted=True)
        subnet = found
    gateway = IPv4Address(spec.ipam.gateway) if spec.ipam.gateway else ipam.default_gateway(subnet)
    vni = ipam.next_vni({n.vni for n in existing})
    if vni is None:
        raise AllocationError("spec", "no free VXLAN network identifier left", exhausted=True)
    return NetworkAllocation(str(subnet), str(gateway), vni)


# ---------------------------------------------------------------- addresses in use


def used_by_network(tasks: Iterable[pb.Task], services: Iterable[pb.Service],
                    nodes: Iterable[pb.Node] = ()) -> dict[str, set[int]]:
    """Every address held, per network: tasks' attachments, services' VIPs and
    nodes' own attachments (ingress).
    The same set as the address keys in etcd, since both are always written
    (and released) in one transaction."""
    used: dict[str, set[int]] = {}
    for task in tasks:
        for attachment in task.networks:
            bucket = used.setdefault(attachment.network_id, set())
            bucket.update(ipam.address_of(cidr) for cidr in attachment.addresses)
    for service in services:
        for vip in service.endpoint.virtual_ips:
            used.setdefault(vip.network_id, set()).add(ipam.address_of(vip.addr))
    for node in nodes:
        for attachment in node.attachments:
            bucket = used.setdefault(attachment.network_id, set())
            bucket.update(ipam.address_of(cidr) for cidr in attachment.addresses)
    return used


def stopping_holders(network_id: str, tasks: Iterable[pb.Task],
                     nodes: Mapping[str, pb.Node]) -> list[pb.Task]:
    """The tasks that hold an address on the network and have not ended yet
    (a removed service's tasks while they stop): removing the network under
    them would tear their nodes' devices down while they still answer.
    Ended tasks (history) do not count, nor tasks on nodes that are DOWN or
    gone: they would never report, and their nodes drop the network when the
    assignments no longer name it."""
    result = []
    for task in tasks:
        if task.status.state >= pb.COMPLETE:
            continue
        if task.node_id:
            node = nodes.get(task.node_id)
            if node is None or node.status.state == pb.NodeStatus.DOWN:
                continue
        if any(a.network_id == network_id and a.addresses for a in task.networks):
            result.append(task)
    return result


class Pool:
    """A network's allocation state during one planning pass: a copy of the
    network whose cursor moves as addresses are handed out, and the used set
    grown by them, so that several allocations in one transaction never
    collide with each other."""

    def __init__(self, network: pb.Network, used: Iterable[int]) -> None:
        self.network = pb.Network()
        self.network.CopyFrom(network)
        self.subnet = ipam.parse_subnet(network.subnet, network.gateway)
        self.used = set(used)

    @property
    def cursor(self) -> int | None:
        text = self.network.address_cursor
        return int(IPv4Address(text)) if text else None

    def take(self) -> int | None:
        address = ipam.next_address(self.subnet, self.used, self.cursor)
        if address is not None:
            self.used.add(address)
            self.network.address_cursor = str(IPv4Address(address))
        return address

    def give_back(self, address: int, cursor: int | None) -> None:
        """Undo a take (when a task's other network ran out): the address was
        never written, so it is free again, and the cursor goes back."""
        self.used.discard(address)
        self.network.address_cursor = "" if cursor is None else str(IPv4Address(cursor))

    def exhausted_message(self) -> str:
        return (f"no free address on network {self.network.spec.name!r} (subnet "
                f"{self.network.subnet}: all {self.subnet.capacity()} addresses are in use or "
                "held by task history)")


# ---------------------------------------------------------------- service VIPs


@dataclass
class VipPlan:
    virtual_ips: list[pb.VirtualIP]  # the service's endpoint.virtual_ips from now on
    claimed: list[tuple[str, int]] = field(default_factory=list)  # (network id, address)
    released: list[pb.VirtualIP] = field(default_factory=list)
    # Every attached network, as a copy to write back (its cursor moved, or
    # unchanged): the write makes a concurrent `network rm` conflict.
    networks: list[pb.Network] = field(default_factory=list)


def wants_vips(spec: pb.ServiceSpec) -> bool:
    # A host-network service has no namespace of its own to reach through a VIP.
    return spec.endpoint.mode == pb.EndpointSpec.VIP and not spec.task.host_network


def plan_vips(spec: pb.ServiceSpec, current: Sequence[pb.VirtualIP],
              networks: Mapping[str, pb.Network], used: Mapping[str, AbstractSet[int]]) -> VipPlan:
    """One VIP per attached network for a vip-mode service (none in dnsrr mode):
    keep the ones it has, allocate the missing ones, release the rest. The spec
    is normalised (network targets are IDs). Raises AllocationError naming the
    attachment when a network is gone or full."""
    want = wants_vips(spec)
    have = {vip.network_id: vip for vip in current}
    plan = VipPlan(virtual_ips=[])
    attached: set[str] = set()
    for index, attachment in enumerate(spec.task.networks):
        where = f"spec.task.networks[{index}].target"
        network = networks.get(attachment.target)
        if network is None:
            raise AllocationError(where, f"network {attachment.target!r} not found")
        if not network.subnet:
            raise AllocationError(where, f"network {network.spec.name!r} has no subnet allocated")
        attached.add(network.id)
        pool = Pool(network, used.get(network.id, ()))
        if want:
            vip = have.get(network.id)
            if vip is None:
                address = pool.take()
                if address is None:
                    raise AllocationError(where, pool.exhausted_message() + " for the virtual IP",
                                          exhausted=True)
                vip = pb.VirtualIP(network_id=network.id, addr=pool.subnet.cidr(address))
                plan.claimed.append((network.id, address))
            plan.virtual_ips.append(vip)
        plan.networks.append(pool.network)
    plan.released = [vip for vip in current
                     if not want or vip.network_id not in attached]
    return plan
