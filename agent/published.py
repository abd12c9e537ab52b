"""Published ports on this node: the routing mesh (ingress mode) and
host-mode ports, served by the userspace proxy (agent.network.proxy).

Ingress mode, on every node the ingress network is assigned to (all of them):
the agent keeps a sandbox namespace (`<overlay prefix>ingress+sbox`, purged
with the overlay namespaces) attached to the ingress overlay with the node's
own ingress address (NetworkAssignment.node_address), listens on each
published port in its own namespace on all addresses, and carries each
connection to a random READY task of the service: the upstream socket is made
in the sandbox and connects to the task's ingress address and target port, so
the task replies over the overlay to this node's ingress address.

Host mode, only where a task of the service runs: the same listener, the
upstream socket made in the TASK's namespace, connecting to the task's
address there (127.0.0.1 when it has no network) on the target port.

TCP and UDP are proxied (UDP as flows per client address, see
agent.network.proxy); an SCTP port is reported as not served (failures), not
silently ignored. A port that cannot be had (something else listens there)
is logged, kept in `failures` with the reason, and retried every
`retry_interval`; the agent goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Interface
from typing import Protocol

from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.host.netns import ensure_netns_blocking, netns_path, remove_netns_blocking

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


def ingress_routes(records: Iterable[dpb.ServiceRecord]) -> dict[PortKey, Route]:
    routes: dict[PortKey, Route] = {}
    for record in records:
        for port in record.ports:
            if port.publish_mode == pb.PortConfig.INGRESS and port.published_port:
                routes[(port.protocol, port.published_port)] = Route(record.id, port.target_port)
    return routes


def ready_addresses(peers: Iterable[dpb.OverlayPeer]) -> dict[str, list[str]]:
    """Service id -> the overlay addresses of its ready tasks (computed once
    per assignment, not per connection)."""
    found: dict[str, list[str]] = {}
    for peer in peers:
        if peer.service_id and peer.ready:
            found.setdefault(peer.service_id, []).append(str(IPv4Interface(peer.address).ip))
    return found


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
    return {key: Route(backends=tuple(backends)) for key, backends in found.items()}


class Attacher(Protocol):
    """What this needs of agent.network.OverlayManager."""

    async def attach(self, task_netns: str | os.PathLike[str], network: OverlayNetwork,
                     address: IPv4Interface, *, ifname: str = "eth0", mac: str | None = None,
                     default_route: bool = False) -> None: ...


class PublishedPorts:
    """This node's published-port listeners, reconciled by `run` (a
    supervised loop) with what the worker last said: the ingress entry
    (set_ingress) and the host-mode ports of its running tasks
    (set_host_routes)."""

    def __init__(self, overlay: Attacher | None, sandbox_name: str, *, host: str = "0.0.0.0",
                 retry_interval: float = 5.0) -> None:
        self._overlay = overlay
        self.sandbox = sandbox_name
        self._host = host
        self._retry_interval = retry_interval
        self._ingress_id = ""
        self._attached: tuple[str, str] | None = None  # (network id, address) of the sandbox
        self._ready: dict[str, list[str]] = {}  # service -> ready task addresses
        self._ingress_routes: dict[PortKey, Route] = {}
        self._host_routes: dict[PortKey, Route] = {}
        self._proxies: dict[PortKey, PortProxy | UdpPortProxy] = {}
        self.failures: dict[PortKey, str] = {}
        self._wake = asyncio.Event()
        self._reconciling = asyncio.Lock()

    # ------------------------------------------------------------ from the worker

    async def set_ingress(self, entry: dpb.NetworkAssignment, peers: Sequence[dpb.OverlayPeer]
                          ) -> None:
        """The ingress network's entry (node address, published services) and
        its whole peer set. Attaches the sandbox first: a listener whose
        upstream cannot leave the sandbox would only refuse connections."""
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
                self._attached = wanted
                log.info("ingress sandbox %s attached as %s", self.sandbox, entry.node_address)
        self._ready = ready_addresses(peers)
        routes = ingress_routes(entry.services) if self._attached else {}
        if routes != self._ingress_routes:
            self._ingress_routes = routes
            self._wake.set()

    async def ingress_removed(self, network_id: str) -> None:
        """The ingress network is gone from this node: no more routing mesh."""
        if network_id != self._ingress_id:
            return
        self._ingress_id = ""
        self._ready = {}
        self._ingress_routes = {}
        self._attached = None
        await asyncio.to_thread(remove_netns_blocking, self.sandbox)
        self._wake.set()

    def set_host_routes(self, routes: dict[PortKey, Route]) -> None:
        if routes != self._host_routes:
            self._host_routes = routes
            self._wake.set()

    # ------------------------------------------------------------ listeners

    def wanted(self) -> dict[PortKey, Route]:
        return {**self._host_routes, **self._ingress_routes}

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

    async def reconcile(self) -> None:
        """Open the listeners wanted, close the others (their connections too).
        One at a time: a second caller waits, then sees what the first did."""
        async with self._reconciling:
            await self._reconcile()

    async def _reconcile(self) -> None:
        wanted = self.wanted()
        for key in [k for k in self._proxies if k not in wanted]:
            proxy = self._proxies.pop(key)
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
            proxy = kind(key[1], functools.partial(self._backends, key), host=self._host,
                         name=f"published port {port_text(key)}")
            try:
                await proxy.start()
            except OSError as error:
                reason = f"cannot listen on {self._host}:{key[1]}: {error.strerror or error}"
                if self.failures.get(key) != reason:
                    log.error("published port %s: %s (retrying every %gs)", port_text(key),
                              reason, self._retry_interval)
                self.failures[key] = reason
                continue
            self.failures.pop(key, None)
            self._proxies[key] = proxy
            log.info("published port %s: listening", port_text(key))

    async def run(self) -> None:
        """Reconcile whenever told, and retry failed ports now and then."""
        while True:
            await self.reconcile()
            self._wake.clear()
            retry = self._retry_interval if any(
                k[0] in _PROXIES for k in self.failures) else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), retry)

    async def close(self) -> None:
        """Close every listener and connection (the sandbox stays: the next
        agent reuses it; purge removes it)."""
        async with self._reconciling:
            proxies, self._proxies = list(self._proxies.values()), {}
            for proxy in proxies:
                await proxy.close()
