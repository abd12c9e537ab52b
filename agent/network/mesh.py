"""The kernel routing mesh: published ports forwarded by nftables, as
Docker's ingress does with IPVS (which this kernel lacks), with no byte
crossing the agent.

    client ──▶ node namespace (the agent's)          ingress sandbox             task (any node)
               table ip swarm-mesh-<8 hex>           table ip swarm-mesh
               dport P: dnat to SBX (port kept) ──▶  mesh0 (SBX)
                                                     dport P: dnat to numgen
                                                       map {ready tasks}:TARGET
                                                     eth0 (ingress overlay):
                                                       masquerade (node's
                                                       ingress address) ──VXLAN──▶ eth0

* The node's table DNATs each ingress port to the sandbox's end of a veth
  pair between the node's namespace and the sandbox (`mesh link`, a /30 of
  169.254.64.0/18 derived from the sandbox's name, as Docker's
  docker_gwbridge); the sandbox's default route points back through it.
* The sandbox's table picks a ready task per connection (numgen random, as
  kube-proxy's statistic rules) and masquerades on the overlay, so the task
  replies to this node's ingress address, and conntrack takes the reply back
  the way it came. Connections stay with their backend while conntrack
  remembers them: a task drained out of the set (drain before stop) keeps
  the connections it has and gets no new ones.
* A host whose agent is dead (or cut off from the controllers) keeps its
  tables, but the other hosts forget it once the controllers mark it DOWN
  (three missed heartbeats): its ingress address leaves their neighbour
  tables, so a task there can no longer answer a connection this sandbox
  masqueraded. So a port with backends both here and elsewhere has two
  rules: all its backends while the set `live` holds an element, then this
  node's own (whose containers outlive the agent, and which answer over the
  local bridge). Each heartbeat the controllers answer renews the element
  (`renew_live`), which expires LIVE_PERIODS heartbeat periods after the
  last one -- before the controllers give up on the node, so the kernel
  stops choosing remote backends before they stop being reachable, with no
  agent alive to say so. A port whose backends all run elsewhere keeps them
  (nothing better is left); one whose backends all run here needs no guard.
* Every change of a table is one `nft -f -` transaction (add the table,
  delete it, define it again: see lb.py), so no packet meets a half-made set.
  When a UDP backend leaves, its conntrack entries in the sandbox go (as lb
  does for VIPs), so those flows are balanced again.
* Host mode (mode=host, only where a task runs): the node's table DNATs the
  port straight to the task's end of a veth pair of its own (a /30 of
  169.254.128.0/17), no source NAT, so the task sees the client's address;
  its replies leave by a policy route (`from` that address, table
  HOST_LINK_TABLE) back through the pair, whatever the task's default route.
  The pair goes with the task's namespace.
* Only packets to a local address of the node are taken (prerouting for
  remote clients, output for the node's own connections to its non-loopback
  addresses): traffic routed through the node is left alone.

Where the kernel path cannot serve, the userspace proxy (proxy.py) stays
(agent.published decides): connections from the node itself to 127.0.0.0/8
(a DNAT away from loopback needs route_localnet, which exposes loopback
services to the network, CVE-2020-8558: not set), ports asking for a PROXY
protocol header (bytes added to the stream), and nodes without nft.

Forwarding is switched on (net.ipv4.ip_forward) in the node's namespace and
the sandbox, as Docker does. A firewall of the node whose forward hook drops
(Docker's iptables FORWARD policy DROP) drops the mesh's traffic too: in
nftables an accept in our table cannot overrule a drop in another.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from socket import AF_INET
from typing import Any

from swarm.host.netlinklib import IPRoute, NetlinkError
from swarm.host.netns import netlink_socket_in, run_in_netns_blocking

from . import lb

log = logging.getLogger(__name__)

SANDBOX_TABLE = "swarm-mesh"
NODE_TABLE_PREFIX = "swarm-mesh-"
MESH_POOL = IPv4Network("169.254.64.0/18")
HOST_LINK_POOL = IPv4Network("169.254.128.0/17")
MESH_PREFIX = "smesh"  # the node's end of the mesh link: smesh<8 hex>
HOST_PREFIX = "shl"  # the node's end of a task's host link: shl<8 hex>
SANDBOX_IFNAME = "mesh0"
TASK_IFNAME = "hostlink0"
HOST_LINK_TABLE = 0x5357  # the task's routing table for replies over its host link
HOST_LINK_PRIORITY = 100  # of the rule choosing that table (before main's 32766)
OVERLAY_IFNAME = "eth0"  # the sandbox's end on the ingress overlay
_NAT_PRIORITY = -100
_PROTOCOLS = {0: "tcp", 1: "udp"}  # PortConfig.Protocol -> nft's word

PortKey = tuple[int, int]  # (PortConfig.Protocol, published port)


class MeshError(OSError):
    """A table or link of the mesh could not be made (nft's or netlink's
    message); an OSError, as the callers' other network failures."""


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def node_table(sandbox: str) -> str:
    """The node's table, named after the agent's sandbox (several agents may
    share a namespace in tests; each has its own table)."""
    return f"{NODE_TABLE_PREFIX}{_digest(sandbox) % 16**8:08x}"


def link_name(key: str, prefix: str) -> str:
    """A host-side interface name (at most 15 characters) for `key`."""
    return f"{prefix}{_digest(key) % 16**8:08x}"[:15]


def link_pair(key: str, pool: IPv4Network, probe: int = 0) -> tuple[IPv4Interface, IPv4Interface]:
    """(host end, inner end) of a /30 of `pool` for `key`: the same key gets
    the same pair (a restarted agent finds its links again); `probe` moves
    to the next /30 when that one is taken."""
    blocks = pool.num_addresses // 4
    base = int(pool.network_address) + 4 * ((_digest(key) + probe) % blocks)
    return (IPv4Interface(f"{IPv4Address(base + 1)}/30"),
            IPv4Interface(f"{IPv4Address(base + 2)}/30"))


@dataclass(frozen=True)
class HostTarget:
    """A host-mode port's backends: the inner addresses of this node's tasks'
    host links, and the port in the task."""

    addresses: tuple[IPv4Address, ...]
    target_port: int


LIVE_SET = "live"
# The sandbox's remote backends expire this many heartbeat periods after the
# last heartbeat the controllers answered: before they mark the node DOWN
# (after 3) and the other hosts forget its address, yet past two missed beats
# (the agent beats every 0.8 period).
LIVE_PERIODS = 2.5


@dataclass(frozen=True)
class IngressTarget:
    """An ingress port's backends as the sandbox reaches them; `local`: those
    running on this node (they outlive the agent: see the module's notes)."""

    target_port: int
    backends: tuple[IPv4Address, ...]
    local: tuple[IPv4Address, ...] = ()

    def fallback(self) -> tuple[IPv4Address, ...]:
        """The backends kept once the node's liveness lapses: its own, when
        it has some and others too; () when no guard is needed."""
        local = set(self.local) & set(self.backends)
        return tuple(sorted(local)) if local and len(local) < len(set(self.backends)) else ()


def _choice(addresses: Iterable[IPv4Address], port: int) -> str:
    targets = sorted(set(addresses))
    if len(targets) == 1:
        return f"{targets[0]}:{port}"
    choices = ", ".join(f"{index} : {address}" for index, address in enumerate(targets))
    return f"numgen random mod {len(targets)} map {{ {choices} }}:{port}"


def _replace(table: str, chains: list[str]) -> str:
    lines = [f"table ip {table}", f"delete table ip {table}"]
    if chains:
        lines += [f"table ip {table} {{", *chains, "}"]
    return "\n".join(lines) + "\n"


def node_ruleset(table: str, ingress: Iterable[PortKey], sandbox: IPv4Address | None,
                 host: Mapping[PortKey, HostTarget], *, host_links: bool = False) -> str:
    """The node's table: each ingress port to the sandbox (when it is linked),
    each host-mode port to this node's tasks. Deterministic text (callers
    compare it to skip needless applies); no port and no host link: no table.

    With `host_links` (tasks have one), what comes in from a task's host
    link is only replies of connections made to it: a task cannot use its
    link to reach the node's own services, nor the node (which forwards) as
    a router."""
    rules: list[str] = []
    if sandbox is not None:
        for protocol, port in sorted(ingress):
            word = _PROTOCOLS.get(protocol)
            if word is not None:
                rules.append(f"    {word} dport {port} dnat to {sandbox}")
    for (protocol, port), target in sorted(host.items()):
        word = _PROTOCOLS.get(protocol)
        if word is not None and target.addresses:
            rules.append(f"    {word} dport {port} dnat to "
                         f"{_choice(target.addresses, target.target_port)}")
    chains: list[str] = []
    if rules:
        chains += [
            "  chain ports {", *rules, "  }",
            "  chain prerouting {",
            f"    type nat hook prerouting priority {_NAT_PRIORITY}; policy accept;",
            "    fib daddr type local jump ports",
            "  }",
            "  chain output {",
            f"    type nat hook output priority {_NAT_PRIORITY}; policy accept;",
            "    ip daddr != 127.0.0.0/8 fib daddr type local jump ports",
            "  }",
        ]
    if host_links:
        for name, hook in (("from-tasks-in", "input"), ("from-tasks-forward", "forward")):
            chains += [
                f"  chain {name} {{",
                f"    type filter hook {hook} priority 0; policy accept;",
                f'    iifname "{HOST_PREFIX}*" ct state established,related accept',
                f'    iifname "{HOST_PREFIX}*" drop',
                "  }",
            ]
    return _replace(table, chains)


def _live_elements(timeout: float) -> str:
    ms = max(1, round(timeout * 1000))
    return f"tcp timeout {ms}ms, udp timeout {ms}ms"


def guarded(ports: Mapping[PortKey, IngressTarget]) -> bool:
    """Whether any port's rules depend on the node's liveness (renew_live)."""
    return any(target.fallback() for target in ports.values())


def sandbox_ruleset(ports: Mapping[PortKey, IngressTarget], live_timeout: float) -> str:
    """The sandbox's table: each ingress port coming in from the node to a
    ready task (none ready: no rule, and the sandbox itself refuses, a
    reset or port unreachable) -- to any while the node is live, to its own
    after that (IngressTarget.fallback) --, masquerade on the overlay, and
    the TCP MSS clamped to the overlay's MTU (a client's 1460 would not fit
    VXLAN). The liveness element starts with `live_timeout` seconds."""
    rules: list[str] = []
    for (protocol, port), target in sorted(ports.items()):
        word = _PROTOCOLS.get(protocol)
        if word is None or not target.backends:
            continue
        head = f"    iifname {SANDBOX_IFNAME} {word} dport {port}"
        every = _choice(target.backends, target.target_port)
        fallback = target.fallback()
        if fallback:
            rules.append(f"{head} meta l4proto @{LIVE_SET} dnat to {every}")
            rules.append(f"{head} dnat to {_choice(fallback, target.target_port)}")
        else:
            rules.append(f"{head} dnat to {every}")
    return _replace(SANDBOX_TABLE, [
        f"  set {LIVE_SET} {{",
        "    type inet_proto; flags timeout;",
        f"    elements = {{ {_live_elements(live_timeout)} }}",
        "  }",
        "  chain prerouting {",
        f"    type nat hook prerouting priority {_NAT_PRIORITY}; policy accept;",
        *rules,
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority 100; policy accept;",
        f"    oifname {OVERLAY_IFNAME} masquerade",
        "  }",
        "  chain clamp {",
        "    type filter hook forward priority -150; policy accept;",
        "    tcp flags syn / syn,rst tcp option maxseg size set rt mtu",
        "  }",
    ])


def renew_live(timeout: float) -> str:
    """The transaction that renews the sandbox's liveness for `timeout` seconds."""
    return (f"flush set ip {SANDBOX_TABLE} {LIVE_SET}\n"
            f"add element ip {SANDBOX_TABLE} {LIVE_SET} {{ {_live_elements(timeout)} }}\n")


# ---------------------------------------------------------------- I/O


def namespace_path(netns: str | None) -> str:
    """A path nsenter takes: None is this process's namespace."""
    if netns is None:
        return f"/proc/{os.getpid()}/ns/net"
    return netns if "/" in netns else f"/run/netns/{netns}"


async def apply(netns: str | None, script: str) -> None:
    """One nft transaction in the namespace (MeshError with nft's message)."""
    try:
        await lb.apply(namespace_path(netns), script)
    except lb.LoadBalancerError as error:
        raise MeshError(str(error)) from None


async def listing(netns: str | None, table: str) -> str:
    """The table as nft lists it ('' when there is none)."""
    process = await asyncio.create_subprocess_exec(
        lb.NSENTER, f"--net={namespace_path(netns)}", lb.NFT, "list", "table", "ip", table,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    out, _ = await asyncio.wait_for(process.communicate(), lb.APPLY_TIMEOUT)
    return out.decode() if process.returncode == 0 else ""


def _ipr(netns: str | None) -> Any:
    return IPRoute() if netns is None else IPRoute(use_socket=netlink_socket_in(netns))


def _forwarding() -> None:
    with open("/proc/sys/net/ipv4/ip_forward", "w") as file:
        file.write("1")


def enable_forwarding_blocking(netns: str | None) -> None:
    if netns is None:
        _forwarding()
    else:
        run_in_netns_blocking(netns, _forwarding)


def _lookup(ipr: Any, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def _inner_address(ipr: Any, index: int) -> IPv4Interface | None:
    for msg in ipr.addr("dump", family=AF_INET, index=index):
        return IPv4Interface(f"{msg.get('address')}/{msg['prefixlen']}")
    return None


def ensure_link_blocking(node_netns: str | None, inner_netns: str, host_ifname: str,
                         inner_ifname: str, pair: tuple[IPv4Interface, IPv4Interface],
                         *, policy: bool) -> IPv4Interface:
    """A veth pair between the node's namespace and `inner_netns` (a path or
    name): `pair` addresses (an existing pair keeps its own), up, and the
    inner namespace's way back through it: its default route (the sandbox),
    or only for replies from its address (`policy`: a task, whose default
    route stays on its overlay). Returns the inner address."""
    try:
        return _ensure_link(node_netns, inner_netns, host_ifname, inner_ifname, pair, policy)
    except NetlinkError as error:
        raise MeshError(f"linking {inner_netns} ({host_ifname}): {error}") from None


def _ensure_link(node_netns: str | None, inner_netns: str, host_ifname: str,
                 inner_ifname: str, pair: tuple[IPv4Interface, IPv4Interface],
                 policy: bool) -> IPv4Interface:
    host_addr, inner_addr = pair
    with _ipr(node_netns) as node, _ipr(inner_netns) as inner:
        outer = _lookup(node, host_ifname)
        index = _lookup(inner, inner_ifname)
        if outer is None or index is None:
            if outer is not None:
                node.link("del", index=outer)
            if index is not None:
                inner.link("del", index=index)
            node.link("add", ifname=host_ifname, kind="veth",
                      peer={"ifname": inner_ifname, "net_ns_fd": inner_netns})
            outer = _lookup(node, host_ifname)
            index = _lookup(inner, inner_ifname)
            if outer is None or index is None:
                raise MeshError(f"veth {host_ifname}/{inner_ifname} vanished while linking")
        else:
            existing = _inner_address(inner, index)
            if existing is not None and existing.network.prefixlen == 30:
                inner_addr = existing
                host_addr = IPv4Interface(f"{existing.ip - 1}/30")
        node.addr("replace", index=outer, address=str(host_addr.ip), prefixlen=30)
        node.link("set", index=outer, state="up")
        inner.addr("replace", index=index, address=str(inner_addr.ip), prefixlen=30)
        inner.link("set", index=index, state="up")
        if policy:
            inner.route("replace", dst="0.0.0.0/0", gateway=str(host_addr.ip), oif=index,
                        table=HOST_LINK_TABLE)
            rules = [r for r in inner.get_rules(family=AF_INET)
                     if r.get("priority") == HOST_LINK_PRIORITY]
            if not any(r.get("src") == str(inner_addr.ip) for r in rules):
                inner.rule("add", src=str(inner_addr.ip), src_len=32, table=HOST_LINK_TABLE,
                           priority=HOST_LINK_PRIORITY)
        else:
            inner.route("replace", dst="0.0.0.0/0", gateway=str(host_addr.ip), oif=index)
    return inner_addr


def remove_link_blocking(node_netns: str | None, host_ifname: str) -> None:
    """Delete the pair (its other end goes with it); gone already is fine."""
    with _ipr(node_netns) as node:
        index = _lookup(node, host_ifname)
        if index is not None:
            with contextlib.suppress(NetlinkError):  # went meanwhile
                node.link("del", index=index)
