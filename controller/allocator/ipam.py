"""Pure IPAM decisions: given what is in use, what comes next. No I/O.

Addresses are handled as ints (IPv4 only), which keeps the used sets small and
the scans cheap. The store keeps the truth as create-only keys (see claims);
these functions only choose candidates, and a lost race is a failed
transaction, retried with fresher knowledge.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

DEFAULT_POOLS: tuple[str, ...] = ("10.0.0.0/8",)
DEFAULT_SUBNET_SIZE = 24
DEFAULT_INGRESS_SUBNET_SIZE = 16  # the routing mesh: one address per node, thousands of nodes
# Below 4096 are VNIs other tools (and docker's defaults) commonly take.
VNI_FIRST = 4096
VNI_LAST = (1 << 24) - 1
# A /29 has 8 addresses: network, broadcast and gateway leave 5 for tasks and VIPs.
MAX_PREFIX = 29
MIN_PREFIX = 8


@dataclass(frozen=True, slots=True)
class Subnet:
    """A network's allocated address range, as the allocator needs it."""

    network: IPv4Network
    gateway: int

    @property
    def first_host(self) -> int:
        return int(self.network.network_address) + 1

    @property
    def last_host(self) -> int:
        return int(self.network.broadcast_address) - 1

    def capacity(self) -> int:
        """Addresses tasks and VIPs can get: hosts minus the gateway."""
        hosts = self.last_host - self.first_host + 1
        return hosts - (1 if self.first_host <= self.gateway <= self.last_host else 0)

    def cidr(self, address: int) -> str:
        """An address in CIDR form with the subnet's prefix, e.g. 10.0.0.5/24."""
        return f"{IPv4Address(address)}/{self.network.prefixlen}"


def parse_subnet(subnet: str, gateway: str) -> Subnet:
    return Subnet(IPv4Network(subnet), int(IPv4Address(gateway)))


def default_gateway(subnet: IPv4Network) -> IPv4Address:
    """The first host address, as docker picks it."""
    return subnet.network_address + 1


@functools.lru_cache(maxsize=1 << 16)
def address_of(cidr: str) -> int:
    """The address of an 'a.b.c.d/len' (or plain 'a.b.c.d') as an int.
    Cached: the address index parses every attachment of every task change
    (old and new version), and the parse was most of that cost."""
    return int(ipaddress.IPv4Interface(cidr).ip)


# ---------------------------------------------------------------- addresses


def next_address(subnet: Subnet, used: AbstractSet[int], cursor: int | None) -> int | None:
    """The first free host address after `cursor`, wrapping around to the start
    of the subnet; None when every host address is taken.

    Free means: not the network or broadcast address, not the gateway, not in
    `used`. Starting after the cursor (not at the lowest free address) is what
    keeps a just-released address from being handed out again at once: it is
    reused only after the cursor has gone round the whole subnet.
    """
    first, last = subnet.first_host, subnet.last_host
    start = cursor + 1 if cursor is not None and first <= cursor < last else first
    for low, high in ((start, last), (first, start - 1)):
        for address in range(low, high + 1):
            if address != subnet.gateway and address not in used:
                return address
    return None


def allocate(subnet: Subnet, used: AbstractSet[int], cursor: int | None,
             count: int) -> tuple[list[int], int | None]:
    """Up to `count` distinct free addresses in cursor order, and the cursor after
    them. Fewer than `count` when the subnet runs out. `used` is not modified."""
    taken = set(used)
    found: list[int] = []
    for _ in range(count):
        address = next_address(subnet, taken, cursor)
        if address is None:
            break
        found.append(address)
        taken.add(address)
        cursor = address
    return found, cursor


def free_count(subnet: Subnet, used: AbstractSet[int]) -> int:
    in_range = sum(1 for a in used
                   if subnet.first_host <= a <= subnet.last_host and a != subnet.gateway)
    return subnet.capacity() - in_range


# ---------------------------------------------------------------- subnets and VNIs


def overlapping(subnet: IPv4Network,
                existing: Iterable[tuple[str, IPv4Network]]) -> tuple[str, IPv4Network] | None:
    """The first (name, subnet) of `existing` that overlaps `subnet`, or None."""
    for name, other in existing:
        if subnet.overlaps(other):
            return name, other
    return None


def next_subnet(pools: Sequence[IPv4Network], size: int,
                taken: Iterable[IPv4Network]) -> IPv4Network | None:
    """The lowest /size block of the pools (in pool order) that overlaps nothing
    taken; None when the pools are full. Jumps over taken ranges instead of
    trying every block, so a /8 pool of /24s costs O(taken), not 65,536 tries."""
    spans = sorted((int(t.network_address), int(t.broadcast_address)) for t in taken)
    block = 1 << (32 - size)
    for pool in pools:
        if size < pool.prefixlen:
            continue  # blocks larger than the pool cannot come from it
        end = int(pool.broadcast_address)
        candidate = int(pool.network_address)
        for low, high in spans:
            if high < candidate:
                continue
            if low > candidate + block - 1:
                break  # sorted by start: nothing later can overlap the candidate
            candidate = -(-(high + 1) // block) * block  # next aligned block after it
            if candidate > end:
                break
        if candidate + block - 1 <= end:
            return IPv4Network((candidate, size))
    return None


def next_vni(used: AbstractSet[int], first: int = VNI_FIRST, last: int = VNI_LAST) -> int | None:
    """The lowest free VNI (networks are few; reusing a removed one is harmless,
    as every host drops its devices with the network)."""
    for vni in range(first, last + 1):
        if vni not in used:
            return vni
    return None


def subnet_bits(subnet: IPv4Network) -> str:
    """The subnet's prefix as a string of bits, e.g. 10.0.0.0/8 -> '00001010'.

    Claim keys are named by it because overlap becomes a key-prefix relation:
    a subnet overlaps another exactly when one's bits are a prefix of the
    other's, so "no overlapping claim" is one range check (the subnet's own
    key and everything under it) plus one absent key per shorter prefix.
    """
    return format(int(subnet.network_address), "032b")[: subnet.prefixlen]


def ancestor_bits(subnet: IPv4Network) -> list[str]:
    """The bit strings of every subnet strictly containing this one."""
    bits = subnet_bits(subnet)
    return [bits[:length] for length in range(1, len(bits))]
