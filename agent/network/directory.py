"""Service discovery's answers: which addresses a name stands for, as seen by
a task on a given set of overlay networks. Pure (no I/O), so every rule is
unit-tested; agent/discovery.py feeds it from the dispatcher's assignments,
the DNS responder (dns.py) asks it names and the load balancer (lb.py) asks
it for every VIP's backends.

Per network (from its NetworkAssignment: services and peers), as docker's
embedded DNS answers on swarm overlays:

    SERVICE        its VIP (endpoint mode vip) or the addresses of its READY
                   tasks (dnsrr)
    tasks.SERVICE  the addresses of its READY tasks, in both modes
    TASK NAME      SERVICE.SLOT.TASKID: the task's address (ready or not: a
                   task is addressed by name to reach that one task, e.g. to
                   debug it while its health check still fails)
    reverse        a task's address -> its task name, a VIP -> its service's
                   name (PTR), as docker answers reverse lookups

Service names are answered as they are, so a stack's services as
STACK_SERVICE, and so are their aliases on the network (ServiceRecord.aliases:
a stack service's short name on the stack's networks, compose `aliases`),
also as tasks.ALIAS; a full name wins over an alias. Service IDs are not
names (docker does not answer them either).

A task asks with its networks in attachment order (eth0 first); the first
of them that knows the name answers, with addresses on that network only
(docker's resolver also takes the first endpoint that knows the name;
mixing networks would hand out addresses of one subnet for a question about
another's service). A name known only on networks the asker is not on is
"hidden": answered NXDOMAIN, not forwarded (internal names do not leak to
upstream resolvers, and isolation does not depend on what they say).

The ingress network (the routing mesh's) has no names and no VIPs here, as
under docker.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface

from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import objects_pb2 as pb

TASKS_PREFIX = "tasks."


def normalize(name: str) -> str:
    """A DNS name as the directory keys it: case-insensitive (RFC 4343),
    absolute or not ("web" and "web." are the same question: containers get
    ndots:0 and no search list, so a bare name is asked as it is)."""
    return name.rstrip(".").lower()


@dataclass(frozen=True)
class Endpoint:
    """A task on a network, as service discovery sees it."""

    task_id: str
    service_id: str
    task_name: str
    ip: IPv4Address
    ready: bool


@dataclass(frozen=True)
class ServiceEntry:
    id: str
    name: str
    vip: IPv4Address | None  # None: dnsrr mode (or no VIP allocated yet)
    dnsrr: bool = False
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class NetworkRecords:
    """One network's services and endpoints, indexed by name once, when an
    assignment changes it (lookups are per query, changes per task event)."""

    network_id: str
    services: tuple[ServiceEntry, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    names: Mapping[str, tuple[IPv4Address, ...]] = field(init=False, repr=False,
                                                            compare=False)
    vips: Mapping[IPv4Address, tuple[IPv4Address, ...]] = field(init=False, repr=False,
                                                            compare=False)
    reverse: Mapping[IPv4Address, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ready: dict[str, list[IPv4Address]] = {}
        for endpoint in self.endpoints:
            if endpoint.ready and endpoint.service_id:
                ready.setdefault(endpoint.service_id, []).append(endpoint.ip)
        names: dict[str, tuple[IPv4Address, ...]] = {}
        aliases: dict[str, tuple[IPv4Address, ...]] = {}
        vips: dict[IPv4Address, tuple[IPv4Address, ...]] = {}
        for service in self.services:
            backends = tuple(sorted(ready.get(service.id, ())))
            own = (backends if service.dnsrr
                   else (service.vip,) if service.vip is not None else ())
            for table, name in ((names, service.name),
                                *((aliases, alias) for alias in service.aliases)):
                if name:
                    table.setdefault(normalize(name), own)
                    table.setdefault(TASKS_PREFIX + normalize(name), backends)
            if service.vip is not None and not service.dnsrr:
                vips[service.vip] = backends
        for endpoint in self.endpoints:
            if endpoint.task_name:
                names.setdefault(normalize(endpoint.task_name), (endpoint.ip,))
        for name, addresses in aliases.items():  # full names win over aliases
            names.setdefault(name, addresses)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "vips", vips)
        reverse = {endpoint.ip: endpoint.task_name for endpoint in self.endpoints
                   if endpoint.task_name}
        for service in self.services:
            if service.vip is not None and not service.dnsrr:
                reverse.setdefault(service.vip, service.name)
        object.__setattr__(self, "reverse", reverse)


def records_from_assignment(network: pb.Network, services: Iterable[dpb.ServiceRecord],
                            peers: Iterable[dpb.OverlayPeer]) -> NetworkRecords:
    """A network's records from what the dispatcher sent. The ingress network
    gets none; a record or peer whose address does not parse is left out (one
    bad entry must not take a network's names down)."""
    if network.spec.ingress:
        return NetworkRecords(network.id)
    entries = []
    for record in services:
        vip = _ip(record.vip)
        dnsrr = record.mode == pb.EndpointSpec.DNSRR
        entries.append(ServiceEntry(record.id, record.name, None if dnsrr else vip, dnsrr,
                                    tuple(record.aliases)))
    endpoints = []
    for peer in peers:
        ip = _ip(peer.address)
        if ip is not None:
            endpoints.append(Endpoint(peer.task_id, peer.service_id, peer.task_name, ip,
                                      peer.ready))
    return NetworkRecords(network.id, tuple(entries), tuple(endpoints))


@functools.lru_cache(maxsize=65536)
def _ip(value: str) -> IPv4Address | None:
    """An address in CIDR form parsed once: every delta of a network rebuilds
    its records from all its peers, and parsing was most of that cost."""
    if not value:
        return None
    try:
        return IPv4Interface(value).ip
    except ValueError:
        return None


class Outcome(enum.Enum):
    FOUND = "found"  # the name is ours: these addresses (maybe none right now)
    HIDDEN = "hidden"  # ours, but only on networks the asker is not on: NXDOMAIN
    UNKNOWN = "unknown"  # not ours: forward it


@dataclass(frozen=True)
class Resolution:
    outcome: Outcome
    addresses: tuple[IPv4Address, ...] = ()
    network_id: str = ""


class ServiceDirectory:
    """Every network's records on this node, answering per asker."""

    def __init__(self) -> None:
        self._networks: dict[str, NetworkRecords] = {}
        self.version = 0  # bumped on every change (load balancers compare it)

    def set(self, records: NetworkRecords) -> bool:
        """Replace a network's records; True when that changed anything."""
        if self._networks.get(records.network_id) == records:
            return False
        self._networks[records.network_id] = records
        self.version += 1
        return True

    def remove(self, network_id: str) -> bool:
        if self._networks.pop(network_id, None) is None:
            return False
        self.version += 1
        return True

    def networks(self) -> list[str]:
        return sorted(self._networks)

    def resolve(self, name: str, networks: Sequence[str]) -> Resolution:
        """What `name` is for a task on `networks` (attachment order)."""
        key = normalize(name)
        for network_id in networks:
            records = self._networks.get(network_id)
            if records is not None and key in records.names:
                return Resolution(Outcome.FOUND, records.names[key], network_id)
        if any(key in records.names for records in self._networks.values()):
            return Resolution(Outcome.HIDDEN)
        return Resolution(Outcome.UNKNOWN)

    def name_of(self, address: IPv4Address, networks: Sequence[str]) -> tuple[Outcome, str]:
        """The reverse of resolve: the name an address of the asker's
        networks has (FOUND), or HIDDEN / UNKNOWN as for names."""
        for network_id in networks:
            records = self._networks.get(network_id)
            if records is not None and address in records.reverse:
                return Outcome.FOUND, records.reverse[address]
        if any(address in records.reverse for records in self._networks.values()):
            return Outcome.HIDDEN, ""
        return Outcome.UNKNOWN, ""

    def backends(self, networks: Iterable[str]) -> dict[IPv4Address, tuple[IPv4Address, ...]]:
        """Every VIP on these networks and its ready backends (on the VIP's
        network), for the load balancer of a task on them."""
        result: dict[IPv4Address, tuple[IPv4Address, ...]] = {}
        for network_id in networks:
            records = self._networks.get(network_id)
            if records is not None:
                for vip, addresses in records.vips.items():
                    result.setdefault(vip, addresses)
        return result
