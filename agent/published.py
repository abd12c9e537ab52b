"""Published ports on this node: the routing mesh (ingress mode) and
host-mode ports, forwarded in the kernel (agent.network.mesh: nftables DNAT)
where it can, by the userspace proxy (agent.network.proxy) where it cannot.

Ingress mode, on every node the ingress network is assigned to (all of them):
the agent keeps a sandbox namespace (`<overlay prefix>ingress+sbox`, purged
with the overlay namespaces) attached to the ingress overlay with the node's
own ingress address (NetworkAssignment.node_address) and linked to the
node's namespace (mesh.py's mesh link). The node's nft table sends each
published port to the sandbox, whose table sends each connection to a
random READY task of the service over the overlay, masqueraded to this
node's ingress address so the task replies over the overlay. The sandbox's
set of backends is replaced in one transaction whenever readiness changes,
and before set_ingress returns: once the worker confirms a drain, no node
sends a drained task new connections. While the node is not known live
(no heartbeat answered for mesh.LIVE_PERIODS periods: the agent died, or
lost the controllers, who will soon mark the node DOWN and the other hosts
forget its address), the sandbox sends connections only to this node's own
ready tasks where it has some (mesh.py; `beat` and `keep_live`).

Host mode, only where a task of the service runs: the node's table sends
a TCP port to the task's own host link (no source NAT: the task sees the
client's address); a UDP port is proxied (see in_kernel).

The userspace proxy stays where the kernel path cannot serve:
* every kernel-served port also gets a listener on the node's loopback
  (`loopback`), for connections from the node itself to 127.0.0.1 (a DNAT
  away from loopback would need route_localnet; see mesh.py); it carries
  them through the sandbox (ingress) or into the task's namespace (host);
* an ingress TCP port with proxy-protocol v2 is served by the proxy alone,
  on all addresses (`host`): it starts each connection with a PROXY header;
* host-mode UDP ports (in_kernel says why), on all addresses;
* without nft (kernel=False), every port, on all addresses.
Those listeners cap their connections and close idle ones (proxy.py).

TCP and UDP are published; an SCTP port is reported as not served
(failures), not silently ignored. A listener that cannot be had (something
else listens there) or a table that cannot be applied is logged, kept in
`failures` with the reason, and retried every `retry_interval`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from typing import Protocol

from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.host.netns import ensure_netns_blocking, netns_path, remove_netns_blocking

from .network import lb, mesh
from .network.model import OverlayNetwork
from .network.proxy import Backend, PortProxy, UdpPortProxy

log = logging.getLogger(__name__)

PortKey = tuple[int, int]  # (PortConfig.Protocol, published port)
_PROXIES: dict[int, type[PortProxy] | type[UdpPortProxy]] = {
    pb.PortConfig.TCP: PortProxy, pb.PortConfig.UDP: UdpPortProxy}
SANDBOX = "ingress"


def port_text(key: PortKey) -> str:
    return f"{key[1]}/{pb.PortConfig.Protocol.Name(key[0]).lower()}"  # type: ignore[arg-type]


@dataclass(frozen=True)
class Route:
    """What a published port leads to: a service's ready tasks on the ingress
    network (ingress mode), or fixed backends (host mode: this node's tasks)."""

    service_id: str = ""
    target_port: int = 0
    backends: tuple[Backend, ...] = ()
    proxy_protocol: bool = False  # PROXY v2 header first: the userspace proxy only


def ingress_routes(records: Iterable[dpb.ServiceRecord]) -> dict[PortKey, Route]:
    routes: dict[PortKey, Route] = {}
    for record in records:
        for port in record.ports:
            if port.publish_mode == pb.PortConfig.INGRESS and port.published_port:
                routes[(port.protocol, port.published_port)] = Route(
                    record.id, port.target_port,
                    proxy_protocol=port.proxy_protocol == pb.PortConfig.PROXY_V2)
    return routes


def ready_addresses(peers: Iterable[dpb.OverlayPeer]) -> dict[str, list[str]]:
    """Service id -> the overlay addresses of its ready tasks (computed once
    per assignment, not per connection)."""
    found: dict[str, list[str]] = {}
    for peer in peers:
        if peer.service_id and peer.ready:
            found.setdefault(peer.service_id, []).append(str(IPv4Interface(peer.address).ip))
    return found


def local_addresses(peers: Iterable[dpb.OverlayPeer], vtep: str) -> frozenset[str]:
    """The overlay addresses of the ready tasks on the node whose VTEP is `vtep`."""
    if not vtep:
        return frozenset()
    return frozenset(str(IPv4Interface(peer.address).ip) for peer in peers
                     if peer.ready and peer.vtep == vtep)


def ingress_backends(ready: dict[str, list[str]], service_id: str, target_port: int,
                     sandbox: str) -> list[Backend]:
    """The service's ready tasks, as reached from the ingress sandbox."""
    return [Backend(sandbox, address, target_port) for address in ready.get(service_id, ())]


def host_routes(tasks: Iterable[tuple[pb.Task, int]],
                netns_of: Callable[[str], str]) -> dict[PortKey, Route]:
    """Host-mode ports of this node's RUNNING tasks (task, observed state)
    that are not told to stop (drain before stop: no new connections while
    they wait for their stop signal): each reached inside the task's
    namespace."""
    found: dict[PortKey, list[Backend]] = {}
    for task, state in tasks:
        if state != pb.RUNNING or task.desired_state > pb.RUNNING:
            continue
        address = "127.0.0.1"
        for attachment in task.networks:
            if attachment.addresses:
                address = str(IPv4Interface(attachment.addresses[0]).ip)
                break
        for port in task.endpoint.ports:
            if port.publish_mode == pb.PortConfig.HOST and port.published_port:
                found.setdefault((port.protocol, port.published_port), []).append(
                    Backend(netns_of(task.id), address, port.target_port))
    return {key: Route(target_port=backends[0].port, backends=tuple(backends))
            for key, backends in found.items()}


class Attacher(Protocol):
    """What this needs of agent.network.OverlayManager."""

    async def attach(self, task_netns: str | os.PathLike[str], network: OverlayNetwork,
                     address: IPv4Interface, *, ifname: str = "eth0", mac: str | None = None,
                     default_route: bool = False) -> None: ...


class PublishedPorts:
    """This node's published ports, reconciled by `run` (a supervised loop)
    with what the worker last said: the ingress entry (set_ingress) and the
    host-mode ports of its running tasks (set_host_routes).

    `netns` is the node's namespace (None: this process's), where the
    node's table, the links and the listeners are; `kernel` says whether
    nft forwards (False: the userspace proxy serves every port on `host`)."""

    def __init__(self, overlay: Attacher | None, sandbox_name: str, *, host: str = "0.0.0.0",
                 loopback: str = "127.0.0.1", netns: str | None = None, kernel: bool = True,
                 retry_interval: float = 5.0, local_vtep: str = "") -> None:
        self._overlay = overlay
        self.sandbox = sandbox_name
        self.netns = netns
        self.kernel = kernel
        self.table = mesh.node_table(sandbox_name)
        self.mesh_link = mesh.link_name(sandbox_name, mesh.MESH_PREFIX)
        self._host = host
        self._loopback = loopback
        self._retry_interval = retry_interval
        self._ingress_id = ""
        self._attached: tuple[str, str] | None = None  # (network id, address) of the sandbox
        self._sandbox_address: IPv4Interface | None = None  # its end of the mesh link
        self._ready: dict[str, list[str]] = {}  # service -> ready task addresses
        # This node's underlay address, and its ready tasks' ingress addresses:
        # the backends the sandbox keeps while the node is not known live.
        self._local_vtep = local_vtep
        self._local: frozenset[str] = frozenset()
        # Until when (monotonic) the sandbox's remote backends last: mesh.
        # LIVE_PERIODS periods after the answered heartbeat was sent (the
        # agent's default period until told).
        self._live_until = time.monotonic() + mesh.LIVE_PERIODS * 5.0
        self._beaten = asyncio.Event()
        # Set once the worker has told what it was assigned: until then the
        # tables a previous agent left stay as they are (a restarted agent
        # that reconciled at once would take every port away until its first
        # assignment came, refusing connections meanwhile).
        self._assigned = asyncio.Event()
        self._ingress_routes: dict[PortKey, Route] = {}
        self._host_routes: dict[PortKey, Route] = {}
        self._host_links: dict[str, IPv4Interface] = {}  # task netns -> its host link address
        self._proxies: dict[PortKey, PortProxy | UdpPortProxy] = {}
        self._proxy_kinds: dict[PortKey, tuple[str, bool]] = {}  # (address, proxy protocol)
        self._node_script = ""  # what the node's table was last made of
        self._sandbox_script = ""
        self._sandbox_backends: dict[PortKey, mesh.IngressTarget] = {}
        self.failures: dict[PortKey, str] = {}
        self._table_failure = ""
        self._wake = asyncio.Event()
        self._reconciling = asyncio.Lock()
        self._sandbox_lock = asyncio.Lock()

    # ------------------------------------------------------------ from the worker

    async def set_ingress(self, entry: dpb.NetworkAssignment, peers: Sequence[dpb.OverlayPeer]
                          ) -> None:
        """The ingress network's entry (node address, published services) and
        its whole peer set. Attaches and links the sandbox first: a port sent
        to a sandbox that cannot reach the tasks would only refuse
        connections. Returns once the sandbox's backends are in force."""
        network = OverlayNetwork.from_proto(entry.network)
        self._ingress_id = network.network_id
        if self._overlay is not None and entry.node_address:
            wanted = (network.network_id, entry.node_address)
            # Again on each complete set: cheap, and it heals a sandbox whose
            # veth went with a re-created network.
            if self._attached != wanted or not entry.delta:
                await asyncio.to_thread(ensure_netns_blocking, self.sandbox)
                await self._overlay.attach(self.sandbox, network,
                                           IPv4Interface(entry.node_address), ifname="eth0")
                if self.kernel:
                    before = self._sandbox_address
                    await asyncio.to_thread(self._link_sandbox_blocking)
                    if self._sandbox_address != before:
                        self._wake.set()  # the node's table points at it
                self._attached = wanted
                log.info("ingress sandbox %s attached as %s", self.sandbox, entry.node_address)
        self._ready = ready_addresses(peers)
        self._local = local_addresses(peers, self._local_vtep)
        routes = ingress_routes(entry.services) if self._attached else {}
        if routes != self._ingress_routes:
            self._ingress_routes = routes
            self._wake.set()
        if self.kernel and self._attached:
            await self._apply_sandbox()

    def _link_sandbox_blocking(self) -> None:
        sandbox = str(netns_path(self.sandbox))
        mesh.enable_forwarding_blocking(self.netns)
        mesh.enable_forwarding_blocking(sandbox)
        self._sandbox_address = mesh.ensure_link_blocking(
            self.netns, sandbox, self.mesh_link, mesh.SANDBOX_IFNAME,
            mesh.link_pair(self.sandbox, mesh.MESH_POOL), policy=False)

    async def ingress_removed(self, network_id: str) -> None:
        """The ingress network is gone from this node: no more routing mesh."""
        if network_id != self._ingress_id:
            return
        self._ingress_id = ""
        self._ready = {}
        self._local = frozenset()
        self._ingress_routes = {}
        self._attached = None
        self._sandbox_address = None
        async with self._sandbox_lock:
            self._sandbox_script = ""
            self._sandbox_backends = {}
        await asyncio.to_thread(remove_netns_blocking, self.sandbox)  # the link goes with it
        self._wake.set()

    def set_host_routes(self, routes: dict[PortKey, Route]) -> None:
        """This node's host-mode ports (the worker calls it after applying
        each message, the first included: from then on `run` reconciles)."""
        self._assigned.set()
        if routes != self._host_routes:
            self._host_routes = routes
            self._wake.set()

    # ------------------------------------------------------------ what is wanted

    def wanted(self) -> dict[PortKey, Route]:
        return {**self._host_routes, **self._ingress_routes}

    def in_kernel(self, key: PortKey) -> bool:
        """Whether the kernel forwards the port (from anywhere but loopback):
        ingress TCP and UDP without a PROXY header, host-mode TCP. Not
        host-mode UDP: a task's UDP server bound to 0.0.0.0 answers from the
        address its routes choose (its overlay, or none), not the host
        link's, so the reply would miss the DNAT's conntrack entry."""
        route = self.wanted().get(key)
        if not self.kernel or route is None or route.proxy_protocol or key[0] not in _PROXIES:
            return False
        return not route.backends or key[0] == pb.PortConfig.TCP

    def listening(self) -> list[PortKey]:
        return sorted(self._proxies)

    def open_connections(self) -> int:
        """TCP connections the routing mesh carries now (metrics)."""
        return sum(p.connections for p in self._proxies.values() if isinstance(p, PortProxy))

    def _backends(self, key: PortKey) -> list[Backend]:
        route = self.wanted().get(key)
        if route is None:
            return []
        if route.backends:
            return list(route.backends)
        return ingress_backends(self._ready, route.service_id, route.target_port,
                                str(netns_path(self.sandbox)))

    def _sandbox_targets(self) -> dict[PortKey, mesh.IngressTarget]:
        targets = {}
        for key, route in self._ingress_routes.items():
            if self.in_kernel(key):
                backends = tuple(sorted(IPv4Address(a)
                                        for a in self._ready.get(route.service_id, ())))
                targets[key] = mesh.IngressTarget(route.target_port, backends, tuple(
                    b for b in backends if str(b) in self._local))
        return targets

    # ------------------------------------------------------------ liveness

    def beat(self, period: float, sent: float | None = None) -> None:
        """A heartbeat the controllers answered (the session's on_beat), sent
        at `sent` (monotonic; default now): the sandbox's remote backends are
        renewed until mesh.LIVE_PERIODS periods after it was sent (by
        keep_live; the heartbeat loop never waits for nft). From the send,
        not the answer: the controllers count a beat from when it reached
        them, however late a busy one answers, and the renewal must still
        run out before they mark the node DOWN (3 periods)."""
        self._live_until = (time.monotonic() if sent is None else sent) + \
            mesh.LIVE_PERIODS * period
        self._beaten.set()

    async def keep_live(self) -> None:
        """Renew the sandbox's liveness after each heartbeat (a supervised
        loop beside run): while this runs and the controllers answer, the
        sandbox picks any ready backend; else, within LIVE_PERIODS heartbeat
        periods, only this node's (mesh.py's notes)."""
        while True:
            await self._beaten.wait()
            self._beaten.clear()
            async with self._sandbox_lock:
                if not self._sandbox_script or not mesh.guarded(self._sandbox_backends):
                    continue
                left = self._live_until - time.monotonic()
                if left <= 0:
                    continue  # answered too late to count: it runs out as it is
                try:
                    await mesh.apply(str(netns_path(self.sandbox)), mesh.renew_live(left))
                except mesh.MeshError as error:
                    log.warning("routing mesh: renewing the sandbox's liveness: %s", error)

    # ------------------------------------------------------------ the kernel's tables

    async def _apply_sandbox(self) -> None:
        """The sandbox's table from the ingress ports and ready tasks, in one
        transaction; the UDP flows of backends that left are forgotten."""
        async with self._sandbox_lock:
            if self._sandbox_address is None:
                return
            targets = self._sandbox_targets()
            if self._sandbox_script and targets == self._sandbox_backends:
                return  # (a new liveness timeout alone waits for the next renewal)
            script = mesh.sandbox_ruleset(targets, max(0.0, self._live_until - time.monotonic()))
            sandbox = str(netns_path(self.sandbox))
            try:
                await mesh.apply(sandbox, script)
            except mesh.MeshError as error:
                log.error("routing mesh: the sandbox's table: %s", error)
                self._table_failure = str(error)
                self._wake.set()  # the loop retries
                return
            gone: set[IPv4Address] = set()
            for key, before in self._sandbox_backends.items():
                if key[0] == pb.PortConfig.UDP:
                    after = targets.get(key)
                    gone |= set(before.backends) - set(after.backends if after else ())
            self._sandbox_script, self._sandbox_backends = script, targets
            if gone:
                with contextlib.suppress(OSError):
                    await lb.flush_udp(sandbox, {self._sandbox_address.ip: gone})

    async def _host_targets(self) -> dict[PortKey, mesh.HostTarget]:
        """Each kernel-served host-mode port's tasks, by their host links
        (made when missing)."""
        wanted = {b.netns for key, route in self._host_routes.items() if self.in_kernel(key)
                  for b in route.backends}
        for netns in [n for n in self._host_links if n not in wanted]:
            del self._host_links[netns]  # the pair goes with the task's namespace
        for netns in sorted(wanted - set(self._host_links)):
            taken = {link.ip for link in self._host_links.values()}
            probe = 0
            while mesh.link_pair(netns, mesh.HOST_LINK_POOL, probe)[1].ip in taken:
                probe += 1
            try:
                self._host_links[netns] = await asyncio.to_thread(
                    mesh.ensure_link_blocking, self.netns, netns,
                    mesh.link_name(netns, mesh.HOST_PREFIX), mesh.TASK_IFNAME,
                    mesh.link_pair(netns, mesh.HOST_LINK_POOL, probe), policy=True)
            except OSError as error:  # MeshError too
                # The task's namespace went meanwhile: its route goes next.
                log.warning("host-mode port: linking task namespace %s: %s", netns, error)
        targets = {}
        for key, route in self._host_routes.items():
            if self.in_kernel(key):
                addresses = tuple(self._host_links[b.netns].ip for b in route.backends
                                  if b.netns in self._host_links)
                targets[key] = mesh.HostTarget(addresses, route.target_port)
        return targets

    async def _apply_node(self) -> None:
        if not self.kernel:
            return
        if self._host_routes:
            await asyncio.to_thread(mesh.enable_forwarding_blocking, self.netns)
        ingress = [key for key in self._ingress_routes if self.in_kernel(key)]
        sandbox = self._sandbox_address.ip if self._sandbox_address is not None else None
        targets = await self._host_targets()
        script = mesh.node_ruleset(self.table, ingress, sandbox, targets,
                                   host_links=bool(self._host_links))
        if script != self._node_script:
            await mesh.apply(self.netns, script)
            self._node_script = script

    # ------------------------------------------------------------ reconciling

    async def reconcile(self) -> None:
        """Apply the tables, open the listeners wanted, close the others
        (their connections too). One at a time: a second caller waits,
        then sees what the first did."""
        async with self._reconciling:
            self._table_failure = ""
            try:
                await self._apply_node()
            except mesh.MeshError as error:
                log.error("routing mesh: the node's table: %s", error)
                self._table_failure = str(error)
            if self.kernel and self._attached:
                await self._apply_sandbox()
            await self._reconcile()

    def _listener_of(self, key: PortKey) -> tuple[str, bool]:
        """(address, PROXY header) of the port's userspace listener."""
        route = self.wanted()[key]
        return (self._loopback if self.in_kernel(key) else self._host), route.proxy_protocol

    async def _reconcile(self) -> None:
        wanted = self.wanted()
        for key in [k for k in self._proxies
                    if k not in wanted or self._proxy_kinds[k] != self._listener_of(k)]:
            proxy = self._proxies.pop(key)
            del self._proxy_kinds[key]
            await proxy.close()
            log.info("published port %s: closed", port_text(key))
        for key in [k for k in self.failures if k not in wanted]:
            del self.failures[key]
        for key in sorted(wanted):
            if key in self._proxies:
                continue
            kind = _PROXIES.get(key[0])
            if kind is None:
                if key not in self.failures:
                    self.failures[key] = "only TCP and UDP ports are published by this agent"
                    log.error("published port %s: not served: %s", port_text(key),
                              self.failures[key])
                continue
            address, proxy_protocol = self._listener_of(key)
            name = f"published port {port_text(key)}"
            proxy = (PortProxy(key[1], functools.partial(self._backends, key), host=address,
                               name=name, netns=self.netns, proxy_protocol=proxy_protocol)
                     if kind is PortProxy else
                     UdpPortProxy(key[1], functools.partial(self._backends, key), host=address,
                                  name=name, netns=self.netns))
            try:
                await proxy.start()
            except OSError as error:
                reason = f"cannot listen on {address}:{key[1]}: {error.strerror or error}"
                if self.failures.get(key) != reason:
                    log.error("published port %s: %s (retrying every %gs)", port_text(key),
                              reason, self._retry_interval)
                self.failures[key] = reason
                continue
            self.failures.pop(key, None)
            self._proxies[key] = proxy
            self._proxy_kinds[key] = (address, proxy_protocol)
            log.info("published port %s: listening on %s%s", port_text(key), address,
                     " (and in the kernel)" if self.in_kernel(key) else "")

    async def run(self) -> None:
        """Reconcile whenever told (once the first assignment is known), and
        retry failed ports now and then."""
        await self._assigned.wait()
        while True:
            # Cleared before, not after: a change told while reconcile awaits
            # (a task stopping as a port closes) is then not lost.
            self._wake.clear()
            await self.reconcile()
            retry = self._retry_interval if self._table_failure or any(
                k[0] in _PROXIES for k in self.failures) else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), retry)

    async def close(self, *, keep_kernel: bool = False) -> None:
        """Close every listener and connection, and remove the node's table
        and the mesh link (the sandbox stays: the next agent reuses it; purge
        removes it) unless `keep_kernel`: an agent that stops (an upgrade, a
        restart) leaves the kernel forwarding, as its containers keep
        running; the next agent takes the tables over, and until it does the
        sandbox's liveness lapses as after a crash (mesh.py). Host links go
        with their tasks' namespaces."""
        async with self._reconciling:
            proxies, self._proxies = list(self._proxies.values()), {}
            self._proxy_kinds = {}
            for proxy in proxies:
                await proxy.close()
            if self.kernel and not keep_kernel:
                await remove_kernel_state(self.netns, self.sandbox)
                self._node_script = ""
                self._attached = None
                self._sandbox_address = None
                async with self._sandbox_lock:
                    self._sandbox_script = ""
                    self._sandbox_backends = {}


async def remove_kernel_state(netns: str | None, sandbox: str) -> None:
    """The node's table and mesh link of the agent with this sandbox (agent
    stop and purge); what is gone already is fine."""
    table = mesh.node_table(sandbox)
    try:
        await mesh.apply(netns, f"table ip {table}\ndelete table ip {table}\n")
    except mesh.MeshError as error:
        log.warning("routing mesh: removing table %s: %s", table, error)
    with contextlib.suppress(OSError):
        await asyncio.to_thread(mesh.remove_link_blocking, netns,
                                mesh.link_name(sandbox, mesh.MESH_PREFIX))
