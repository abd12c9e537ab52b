"""VIP load balancing without IPVS (this kernel has none): kube-proxy's idea
with nftables, inside each task's own network namespace.

A task on overlay networks gets one table, `ip swarm-lb`, in its namespace:

    chain vip-dnat   (nat, output hook)     the embedded DNS (dns.py): 127.0.0.11
        :53 to the ports the agent's sockets have; each VIP with ready backends:
        ip daddr VIP dnat to numgen random mod N map { 0 : B0, 1 : B1, ... }
    chain vip-reject (filter, output hook)  each VIP without any:
        tcp: reset; anything else: ICMP port unreachable

The choice is made per connection (conntrack remembers it, and reverses it
on the replies), at the source, so a backend sees the client's own address
and answers it directly: no SNAT, no hairpin, no state anywhere but the
client's namespace. Only locally generated traffic is balanced, which is all
a task sends; published ports (the routing mesh) are another component's.
A VIP with no ready backend fails fast (reset / unreachable) instead of
sending SYNs to an address nobody owns until the client's timeout.

A connection keeps its backend while conntrack remembers it. For TCP that
is right (an established connection finishes where it started), but a UDP
"connection" lives as long as the client keeps sending: one whose backend
left would never move. So when a backend leaves a VIP, the UDP entries from
this namespace to that VIP which it answered are deleted (as kube-proxy
does), through conntrack netlink (pyroute2) inside the namespace, and the
next datagram is balanced again.

Every change replaces the whole table in one `nft -f -` transaction (add
the table, delete it, define it again: the kernel applies the batch
atomically, so no connection ever sees a half-made table; the leading add
makes the delete valid when the table does not exist yet). The table lives
and dies with the namespace; nothing needs removing when a task goes.

nft runs inside the namespace through `nsenter --net=PATH`: pyroute2 0.9's
nftables support builds only a few expressions (no numgen, no maps with
data, no NAT statements) and no batch transaction, so its messages would be
hand-assembled bytecode; the nft tool (Debian's nftables, installed by
deploy/setup.sh) is the well-kept way to write them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from swarm.host.netlinklib import Conntrack, NFCTAttrTuple
from swarm.host.netns import run_in_netns_blocking

TABLE = "swarm-lb"
NFT = "nft"
NSENTER = "nsenter"
APPLY_TIMEOUT = 10.0  # seconds: nft answers in milliseconds; this catches a wedged one

# Below the filter hook (0) and at the usual destination-NAT priority, so
# the DNAT happens before any filtering of the output path.
_NAT_PRIORITY = -100
_FILTER_PRIORITY = 0


class LoadBalancerError(Exception):
    pass


Backends = Mapping[IPv4Address, Sequence[IPv4Address]]


@dataclass(frozen=True)
class DnsRedirect:
    """Queries to address:port (what resolv.conf names) go to the ports the
    DNS sockets really have."""

    address: str
    port: int
    udp_port: int
    tcp_port: int


def ruleset(backends: Backends, dns: DnsRedirect | None = None) -> str:
    """The nft script that makes the table exactly `backends` (VIP -> its
    ready backend addresses), with the DNS redirect. Deterministic: the same
    input gives the same text, so callers compare texts to skip needless
    applies."""
    lines = [f"table ip {TABLE}", f"delete table ip {TABLE}"]
    if not backends and dns is None:
        return "\n".join(lines) + "\n"  # nothing to do: no table
    dnat: list[str] = []
    reject: list[str] = []
    if dns is not None:
        dnat.append(f"    ip daddr {dns.address} udp dport {dns.port} "
                    f"dnat to {dns.address}:{dns.udp_port}")
        dnat.append(f"    ip daddr {dns.address} tcp dport {dns.port} "
                    f"dnat to {dns.address}:{dns.tcp_port}")
    for vip in sorted(backends):
        targets = sorted(set(backends[vip]))
        if not targets:
            reject.append(f"    ip daddr {vip} meta l4proto tcp reject with tcp reset")
            reject.append(f"    ip daddr {vip} reject with icmp type port-unreachable")
        elif len(targets) == 1:
            dnat.append(f"    ip daddr {vip} dnat to {targets[0]}")
        else:
            choices = ", ".join(f"{index} : {target}" for index, target in enumerate(targets))
            dnat.append(f"    ip daddr {vip} dnat to numgen random mod {len(targets)} "
                        f"map {{ {choices} }}")
    lines += [
        f"table ip {TABLE} {{",
        "  chain vip-dnat {",
        f"    type nat hook output priority {_NAT_PRIORITY}; policy accept;",
        *dnat,
        "  }",
        "  chain vip-reject {",
        f"    type filter hook output priority {_FILTER_PRIORITY}; policy accept;",
        *reject,
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


async def apply(netns: str | os.PathLike[str], script: str,
                timeout: float = APPLY_TIMEOUT) -> None:
    """Load an nft script in the namespace at `netns` (a path), as one
    transaction. Raises LoadBalancerError with nft's message."""
    try:
        process = await asyncio.create_subprocess_exec(
            NSENTER, f"--net={os.fspath(netns)}", NFT, "-f", "-",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError as error:
        raise LoadBalancerError(f"{error.filename or NSENTER} not found: the agent needs "
                                "nsenter (util-linux) and nft (nftables; deploy/setup.sh)") from None
    try:
        _, err = await asyncio.wait_for(process.communicate(script.encode()), timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        message = " ".join(err.decode(errors="replace").split())[:500]
        raise LoadBalancerError(f"nft in {os.fspath(netns)} failed "
                                f"(exit {process.returncode}): {message}")


async def listing(netns: str | os.PathLike[str]) -> str:
    """The table as nft lists it ('' when there is none): for inspection
    and tests."""
    process = await asyncio.create_subprocess_exec(
        NSENTER, f"--net={os.fspath(netns)}", NFT, "list", "table", "ip", TABLE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    out, _ = await asyncio.wait_for(process.communicate(), APPLY_TIMEOUT)
    return out.decode() if process.returncode == 0 else ""


def gone_backends(before: Backends, after: Backends) -> dict[IPv4Address, set[IPv4Address]]:
    """Per VIP, the backends that left it (a VIP that went altogether: all)."""
    gone: dict[IPv4Address, set[IPv4Address]] = {}
    for vip, old in before.items():
        left = set(old) - set(after.get(vip, ()))
        if left:
            gone[vip] = left
    return gone


def _flush_udp(gone: Mapping[IPv4Address, Collection[IPv4Address]]) -> int:
    """In the namespace's thread: delete the UDP conntrack entries to a VIP
    that one of its gone backends answered. Returns how many."""
    wanted = {str(vip): {str(backend) for backend in backends} for vip, backends in gone.items()}
    conntrack = Conntrack()
    try:
        stale = [entry for entry in conntrack.dump_entries(
                     tuple_orig=NFCTAttrTuple(proto=socket.IPPROTO_UDP))
                 if entry.tuple_reply.saddr in wanted.get(str(entry.tuple_orig.daddr), ())]
        for entry in stale:
            conntrack.delete(entry)
        return len(stale)
    finally:
        conntrack.close()


async def flush_udp(netns: str | os.PathLike[str],
                    gone: Mapping[IPv4Address, Collection[IPv4Address]]) -> int:
    """Forget the UDP flows of the namespace to backends that left their VIP
    (see the module doc). Raises OSError when the namespace is gone."""
    if not gone:
        return 0
    return await asyncio.to_thread(run_in_netns_blocking, os.fspath(netns),
                                   functools.partial(_flush_udp, gone))
