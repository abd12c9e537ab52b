"""The node side of overlay networks: per network, a bridge and a VXLAN device
in a network namespace of their own; per task, a veth pair from that bridge
into the task's namespace; per remote endpoint, a static FDB entry and a
permanent neighbour entry.

Isolation design (as libnetwork's overlay driver):

    host (agent's) netns           overlay netns <prefix><network id>     task netns
    underlay dev (advertise addr)  br0 (gateway addr, MAC from gateway)   eth0 (addr, MAC
      ^ UDP 4789 socket lives      |- vxlan0 (VNI, learning off, proxy)     from addr)
      |  here (vxlan's src net)    |- ve-xxxxxxxxxxxx  <== veth pair ==>
      +----------------------------+

* Each overlay's layer 2 lives in its own namespace, so two networks share no
  bridge, no neighbour table and no netfilter state: a task on network A has
  no device through which it could reach network B, whatever its routes say.
  On the wire the networks are separated by their VNI.
* The overlay namespace has no route anywhere: the gateway address on br0
  only answers ARP; an overlay gives its tasks no path to the outside (that
  would be a separate bridge network, as Docker's docker_gwbridge).
* The host's namespace holds no overlay device at all, so its firewall (e.g.
  Docker's FORWARD policy DROP) never sees overlay traffic, only the UDP.
* The VXLAN device is created through a netlink socket in the host namespace
  (which owns its UDP socket, bound to the underlay device and the advertise
  address) and placed into the overlay namespace in the same request
  (IFLA_NET_NS_FD). libnetwork creates it in the host and then moves it; both
  were verified to carry traffic on this kernel, and the one-step form leaves
  no window in which a crash orphans a device in the host namespace.
* Learning is off and ARP proxying on: the controller tells every host where
  each remote endpoint is (set_peers), the VXLAN device answers the tasks' ARP
  requests from its neighbour table, and no broadcast or unknown unicast is
  flooded to other hosts (there is no default FDB destination).

All state is in the kernel, named deterministically from the network ID and
the task's namespace, so a restarted agent finds everything again, and every
operation converges (is idempotent) rather than assuming where it left off.

pyroute2's synchronous IPRoute runs its own event loop, so every operation runs
in a worker thread (asyncio.to_thread), serialized per network.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from socket import AF_INET
from typing import Any

from swarm.host import neighbours
from swarm.host.netlinklib import IPRoute, NetlinkError
from swarm.host.netns import (
    NETNS_DIR,
    bridge_without_netfilter_blocking,
    ensure_netns_blocking,
    netlink_socket_in,
    netns_path,
    remove_netns_blocking,
)

from .model import (
    VXLAN_OVERHEAD,
    VXLAN_PORT,
    OverlayNetwork,
    Peer,
    check_ifname,
    is_network_id,
    mac_from_ip,
    normalize_mac,
    veth_name,
)
from .peerplan import Entries, plan_delta, plan_full, record

log = logging.getLogger(__name__)

BRIDGE = "br0"
VXLAN = "vxlan0"


class OverlayError(Exception):
    """An overlay operation failed; what it had created is removed again."""


@dataclass(frozen=True)
class OverlaySettings:
    """advertise_addr: this node's underlay address, the local VTEP.
    netns_prefix: overlay namespaces are /run/netns/<prefix><network id>; the
    namespace directory is machine-wide, so simulated hosts on one machine
    need distinct prefixes.
    host_netns: the namespace holding the underlay device, as a name under
    /run/netns or a path; None means the agent's own (production: the agent
    runs in the host's namespace; tests drive simulated hosts from outside).
    min_overlay_mtu: refuse an underlay whose MTU leaves less than this for
    the overlay; 1280 is the smallest link MTU IPv6 allows and what any
    ordinary traffic in a container can be expected to need."""

    advertise_addr: IPv4Address
    netns_prefix: str = "swarm-ov-"
    host_netns: str | None = None
    vxlan_port: int = VXLAN_PORT
    min_overlay_mtu: int = 1280

    def __post_init__(self) -> None:
        if not self.netns_prefix or "/" in self.netns_prefix:
            raise ValueError(f"bad netns_prefix {self.netns_prefix!r}")
        if not 0 < self.vxlan_port < 65536:
            raise ValueError(f"bad vxlan_port {self.vxlan_port}")

    def netns_name(self, network_id: str) -> str:
        return self.netns_prefix + network_id

    def sandbox_name(self, purpose: str) -> str:
        """A namespace of the agent's own under the same prefix (purged with
        the overlay namespaces), never taken for a network's: '+' is in no
        network ID."""
        return f"{self.netns_prefix}{purpose}+sbox"


# ---------------------------------------------------------------- netlink helpers


@contextlib.contextmanager
def _ipr(namespace: str | None) -> Iterator[Any]:
    """An IPRoute in a namespace (name or path; None: the current one); a
    missing namespace is FileNotFoundError, never created."""
    # Never IPRoute(netns=...): it forks a helper, which crashes inside the
    # agent (a process with gRPC's threads); see agent/runtime/netns.py.
    ipr = IPRoute() if namespace is None else IPRoute(use_socket=netlink_socket_in(namespace))
    try:
        yield ipr
    finally:
        ipr.close()


def _lookup(ipr: Any, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def _link(ipr: Any, index: int) -> Any:
    return ipr.link("get", index=index)[0]


def _delete_link(ipr: Any, index: int) -> None:
    try:
        ipr.link("del", index=index)
    except NetlinkError as error:
        if error.code != errno.ENODEV:  # already gone: fine
            raise


def _ns_arg(path: str | os.PathLike[str]) -> str:
    """pyroute2 takes a name (under /var/run/netns) or a path with a '/'."""
    text = os.fspath(path)
    return text if "/" in text else str(netns_path(text))


def _underlay(host: Any, address: IPv4Address) -> tuple[int, int]:
    """(index, MTU) of the device carrying the advertise address."""
    for msg in host.addr("dump", family=AF_INET):
        if msg.get("address") == str(address):
            index = int(msg["index"])
            return index, int(_link(host, index).get("mtu"))
    raise OverlayError(f"advertise address {address} is on no interface of this host")


# ---------------------------------------------------------------- blocking operations


def _ensure_network(settings: OverlaySettings, net: OverlayNetwork) -> None:
    name = settings.netns_name(net.network_id)
    with _ipr(settings.host_netns) as host:
        # Everything that can be refused is checked before anything is made.
        underlay_index, underlay_mtu = _underlay(host, settings.advertise_addr)
        mtu = underlay_mtu - VXLAN_OVERHEAD
        if mtu < settings.min_overlay_mtu:
            raise OverlayError(
                f"network {net.network_id}: the underlay MTU {underlay_mtu} leaves {mtu} for the "
                f"overlay (VXLAN takes {VXLAN_OVERHEAD}); at least {settings.min_overlay_mtu} is "
                f"needed, so the underlay needs {settings.min_overlay_mtu + VXLAN_OVERHEAD}")
        created = ensure_netns_blocking(name)
        try:
            bridge_without_netfilter_blocking(name)
            with _ipr(name) as ov:
                bridge = _ensure_bridge(ov, net, mtu)
                vxlan = _ensure_vxlan(host, ov, settings, net, name, underlay_index, mtu)
                ov.link("set", index=vxlan, master=bridge, state="up")
        except BaseException as error:
            if created:  # a new network leaves nothing; an existing one is converged next time
                log.warning("network %s: set-up failed (%s); removing it", net.network_id, error)
                _remove_network(settings, net.network_id)
            if isinstance(error, NetlinkError):
                raise OverlayError(f"network {net.network_id}: setting up: {error}") from error
            raise
    log.info("network %s: ready (VNI %d, MTU %d, namespace %s)", net.network_id, net.vni, mtu, name)


def _ensure_bridge(ov: Any, net: OverlayNetwork, mtu: int) -> int:
    index = _lookup(ov, BRIDGE)
    if index is None:
        # The MAC is set (so it no longer follows the lowest port's, which
        # would change as tasks come and go) and derived from the gateway.
        ov.link("add", ifname=BRIDGE, kind="bridge", mtu=mtu, address=mac_from_ip(net.gateway))
        index = _lookup(ov, BRIDGE)
        assert index is not None
    elif _link(ov, index).get("mtu") != mtu:
        ov.link("set", index=index, mtu=mtu)
    gateway = net.gateway_interface
    for msg in ov.addr("dump", family=AF_INET, index=index):
        if (msg.get("address"), msg["prefixlen"]) != (str(gateway.ip), gateway.network.prefixlen):
            ov.addr("del", index=index, address=msg.get("address"), prefixlen=msg["prefixlen"])
    ov.addr("replace", index=index, address=str(gateway.ip), prefixlen=gateway.network.prefixlen)
    ov.link("set", index=index, state="up")
    return index


def _ensure_vxlan(host: Any, ov: Any, settings: OverlaySettings, net: OverlayNetwork,
                  name: str, underlay_index: int, mtu: int) -> int:
    wanted = {"vxlan_id": net.vni, "vxlan_local": str(settings.advertise_addr),
              "vxlan_port": settings.vxlan_port, "vxlan_learning": 0, "vxlan_proxy": 1,
              "vxlan_link": underlay_index}
    index = _lookup(ov, VXLAN)
    if index is not None:
        data = _link(ov, index).get(("linkinfo", "data"))
        current = {key: data.get(key) if data is not None else None for key in wanted}
        if current == wanted:
            if _link(ov, index).get("mtu") != mtu:
                ov.link("set", index=index, mtu=mtu)
            return index
        # The advertise address or underlay changed: its peers' FDB entries
        # go with it, and the caller's next set_peers puts them back.
        log.info("network %s: VXLAN device differs (%s); recreating it", net.network_id, current)
        _delete_link(ov, index)
    # Created by the HOST's netlink socket (its UDP socket lives there) and
    # put into the overlay namespace in the same request.
    try:
        host.link("add", ifname=VXLAN, kind="vxlan", mtu=mtu, net_ns_fd=str(netns_path(name)), **wanted)
    except NetlinkError as error:
        if error.code == errno.EEXIST:  # the kernel's VNI check (port + VNI per host namespace)
            raise OverlayError(f"network {net.network_id}: VNI {net.vni} is already used by another "
                               "VXLAN device on this host") from error
        raise
    index = _lookup(ov, VXLAN)
    if index is None:
        raise OverlayError(f"network {net.network_id}: VXLAN device not found after creating it")
    return index


def _remove_network(settings: OverlaySettings, network_id: str) -> None:
    name = settings.netns_name(network_id)
    if not netns_path(name).exists():
        return
    # Devices are deleted explicitly first: a namespace is destroyed
    # asynchronously once its name is gone, and until then its VXLAN device
    # would still hold the VNI (a quick re-create would fail with EEXIST) and
    # the tasks' ends of the veths would linger.
    try:
        with _ipr(name) as ov:
            for msg in ov.link("dump"):
                if msg.get(("linkinfo", "kind")) in ("veth", "vxlan", "bridge"):
                    _delete_link(ov, int(msg["index"]))
    except (OSError, NetlinkError) as error:
        log.warning("network %s: deleting devices failed (%s); the namespace goes anyway",
                    network_id, error)
    remove_netns_blocking(name)
    log.info("network %s: removed", network_id)


def _require_network(settings: OverlaySettings, network_id: str) -> str:
    name = settings.netns_name(network_id)
    if not netns_path(name).exists():
        raise OverlayError(f"network {network_id} is not set up on this host (ensure_network first)")
    return name


def _attach(settings: OverlaySettings, task_netns: str, net: OverlayNetwork,
            address: IPv4Interface, ifname: str, mac: str, default_route: bool) -> None:
    name = _require_network(settings, net.network_id)
    peer_name = veth_name(task_netns, ifname)
    with _ipr(name) as ov, _ipr(task_netns) as task:
        bridge = _lookup(ov, BRIDGE)
        vxlan = _lookup(ov, VXLAN)
        if bridge is None or vxlan is None:
            raise OverlayError(f"network {net.network_id} is half set up (ensure_network again)")
        mtu = int(_link(ov, vxlan).get("mtu"))
        created = False
        try:
            outer = _lookup(ov, peer_name)
            inner = _lookup(task, ifname)
            if not (outer is not None and inner is not None
                    and _link(ov, outer).get("link") == inner
                    and _link(task, inner).get("link") == outer):
                if outer is not None:  # a pair missing its task end (or the reverse): start again
                    _delete_link(ov, outer)
                if _lookup(task, ifname) is not None:
                    # Not ours (ours would have gone with its peer): never
                    # delete what someone else put in the task's namespace.
                    raise OverlayError(f"task namespace {task_netns} already has an {ifname}")
                # Both ends made in one request, the task's end directly in
                # its namespace with its final name, MAC and MTU.
                ov.link("add", ifname=peer_name, kind="veth", mtu=mtu,
                        peer={"ifname": ifname, "net_ns_fd": task_netns, "address": mac, "mtu": mtu})
                created = True
                outer = _lookup(ov, peer_name)
                inner = _lookup(task, ifname)
                if outer is None or inner is None:
                    raise OverlayError(f"veth {peer_name}/{ifname} vanished while attaching")
            # Converge everything, also on an existing pair (MTU, address,
            # route may have changed since it was made).
            ov.link("set", index=outer, master=bridge, mtu=mtu, state="up")
            task.link("set", index=inner, address=mac, mtu=mtu, state="up")
            for msg in task.addr("dump", family=AF_INET, index=inner):
                if (msg.get("address"), msg["prefixlen"]) != (str(address.ip), address.network.prefixlen):
                    task.addr("del", index=inner, address=msg.get("address"), prefixlen=msg["prefixlen"])
            task.addr("replace", index=inner, address=str(address.ip), prefixlen=address.network.prefixlen)
            if default_route:
                task.route("replace", dst="0.0.0.0/0", gateway=str(net.gateway), oif=inner)
        except BaseException as error:
            leftover = _lookup(ov, peer_name) if created else None
            if leftover is not None:
                _delete_link(ov, leftover)
            if isinstance(error, NetlinkError):
                raise OverlayError(f"network {net.network_id}: attaching {task_netns}: {error}") from error
            raise
    log.info("network %s: attached %s as %s (%s, %s)", net.network_id, task_netns, ifname, address, mac)


def _detach(settings: OverlaySettings, task_netns: str, network_id: str, ifname: str) -> None:
    name = settings.netns_name(network_id)
    if not netns_path(name).exists():
        return
    with _ipr(name) as ov:
        index = _lookup(ov, veth_name(task_netns, ifname))
        if index is not None:
            _delete_link(ov, index)  # takes the task's end with it
            log.info("network %s: detached %s (%s)", network_id, task_netns, ifname)


def _vxlan_index(name: str, network_id: str) -> int:
    with _ipr(name) as ov:
        vxlan = _lookup(ov, VXLAN)
    if vxlan is None:
        raise OverlayError(f"network {network_id} is half set up (ensure_network again)")
    return vxlan


def _set_peers(settings: OverlaySettings, net: OverlayNetwork, peers: list[Peer]
               ) -> tuple[int, Entries]:
    """Exactly these peers' entries (a dump, then one batch); returns the
    VXLAN device's index and its entries now."""
    name = _require_network(settings, net.network_id)
    vxlan = _vxlan_index(name, net.network_id)
    with contextlib.closing(netlink_socket_in(name)) as sock:
        try:
            fdb_found, neigh_found = neighbours.dump_blocking(sock, vxlan)
            plan = plan_full(fdb_found, neigh_found, peers, settings.advertise_addr)
            neighbours.apply_blocking(sock, vxlan, plan.requests)
        except (neighbours.BatchError, OSError) as error:
            raise OverlayError(f"network {net.network_id}: updating peers: {error}") from error
    assert plan.after is not None
    log.debug("network %s: %d remote peers (%d changes)", net.network_id, len(plan.after.fdb),
              len(plan.requests))
    return vxlan, plan.after


def _update_peers(settings: OverlaySettings, net: OverlayNetwork, vxlan: int, entries: Entries,
                  removed: list[Peer], upserted: list[Peer]) -> None:
    """Only what a delta changes, from the known entries (updated in place
    once the kernel took them): no dump, one batch."""
    plan = plan_delta(entries, removed, upserted, settings.advertise_addr)
    if not plan.requests:
        return
    name = _require_network(settings, net.network_id)
    with contextlib.closing(netlink_socket_in(name)) as sock:
        try:
            neighbours.apply_blocking(sock, vxlan, plan.requests)
        except (neighbours.BatchError, OSError) as error:
            raise OverlayError(f"network {net.network_id}: updating peers: {error}") from error
    record(entries, plan.requests)
    log.debug("network %s: %d peer changes", net.network_id, len(plan.requests))


def _endpoints(settings: OverlaySettings, network_id: str) -> list[str]:
    name = settings.netns_name(network_id)
    if not netns_path(name).exists():
        return []
    with _ipr(name) as ov:
        return sorted(str(msg.get("ifname")) for msg in ov.link("dump")
                      if msg.get(("linkinfo", "kind")) == "veth")


# ---------------------------------------------------------------- the async facade


class OverlayManager:
    """The overlay data plane of one host, for the agent's worker.

    The worker, on each reconcile of its assignments:
      ensure_network(net) for every network a local task uses, then
      attach(task netns, net, address, ifname=eth0/eth1..., default_route=first)
      and set_peers(net, every REMOTE endpoint of net) (replace semantics);
      detach when a task goes, and remove_network when the host's last task on
      a network is gone (networks() lists what exists, for garbage collection
      after an agent restart).

    Operations on one network are serialized; different networks proceed in
    parallel. Every failure raises OverlayError (ValueError for bad input)
    after removing what that call created.
    """

    def __init__(self, settings: OverlaySettings) -> None:
        self.settings = settings
        self._locks: dict[str, asyncio.Lock] = {}
        # Per network, the VXLAN device's index and static entries as the
        # last set_peers or update_peers left them (deltas start from there);
        # dropped by anything that may change the device behind our back.
        self._entries: dict[str, tuple[int, Entries]] = {}
        self._ensured: set[str] = set()  # networks set up by this manager

    async def _locked(self, network_id: str, call: Callable[[], None]) -> None:
        """Run a blocking operation in a thread, holding the network's lock
        until the THREAD is done: a cancelled caller cannot stop the thread,
        and releasing the lock at once would let the next call run beside it."""
        async with self._locks.setdefault(network_id, asyncio.Lock()):
            work = asyncio.ensure_future(asyncio.to_thread(call))
            try:
                await asyncio.shield(work)
            except asyncio.CancelledError:
                while not work.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait([work])
                if not work.cancelled() and work.exception() is not None:
                    log.warning("network %s: operation of a cancelled call failed: %s",
                                network_id, work.exception())
                raise

    def netns_path(self, network_id: str) -> str:
        """Where the network's namespace is (for inspection and tests)."""
        return str(netns_path(self.settings.netns_name(network_id)))

    async def ensure_network(self, network: OverlayNetwork) -> None:
        """Make the network's namespace, bridge and VXLAN device, or converge
        existing ones (a changed advertise address or underlay recreates the
        VXLAN device: call set_peers after; a changed MTU reaches a task's
        veth when it is attached again). Idempotent; a refused or failed new
        network leaves nothing."""
        self._entries.pop(network.network_id, None)  # the device may be new: entries unknown
        self._ensured.discard(network.network_id)
        await self._locked(network.network_id, functools.partial(_ensure_network, self.settings, network))
        self._ensured.add(network.network_id)

    def ensured(self, network_id: str) -> bool:
        """Whether ensure_network succeeded for it (and it was not removed
        since): an entry whose network did not change need not ensure again."""
        return network_id in self._ensured

    async def remove_network(self, network_id: str) -> None:
        """Remove the network's namespace and every device in it (the tasks'
        ends of its veths included). Idempotent."""
        self._entries.pop(network_id, None)
        self._ensured.discard(network_id)
        await self._locked(network_id, functools.partial(_remove_network, self.settings, network_id))
        # The lock stays: dropping it while another call waits on it would
        # let a third call run beside that one.

    async def attach(self, task_netns: str | os.PathLike[str], network: OverlayNetwork,
                     address: IPv4Interface, *, ifname: str = "eth0", mac: str | None = None,
                     default_route: bool = False) -> None:
        """Connect a task's namespace (a path, or a name under /run/netns) to
        the network as `ifname` with `address` (CIDR form: the subnet's
        prefix). mac defaults to the one derived from the address;
        default_route puts the task's default route via the gateway (the
        first network of a task). Idempotent."""
        network.check_endpoint(address)
        check_ifname(ifname)
        wanted_mac = normalize_mac(mac) if mac else mac_from_ip(address.ip)
        path = _ns_arg(task_netns)
        await self._locked(network.network_id, functools.partial(
            _attach, self.settings, path, network, address, ifname, wanted_mac, default_route))

    async def detach(self, task_netns: str | os.PathLike[str], network_id: str, *,
                     ifname: str = "eth0") -> None:
        """Remove the task's veth pair on the network. Idempotent; a task
        whose namespace is already gone has nothing left to remove."""
        check_ifname(ifname)
        path = _ns_arg(task_netns)
        await self._locked(network_id, functools.partial(_detach, self.settings, path, network_id, ifname))

    async def set_peers(self, network: OverlayNetwork, peers: Iterable[Peer]) -> None:
        """Make the network's FDB and neighbour entries exactly `peers`
        (those on this host's VTEP are skipped): missing ones added, changed
        ones replaced, others removed. An address or MAC may appear once."""
        wanted = list(peers)
        by_ip: dict[IPv4Address, Peer] = {}
        by_mac: dict[str, Peer] = {}
        for peer in wanted:
            if peer.ip not in network.subnet:
                raise ValueError(f"peer {peer.ip} is not in network {network.network_id}'s subnet")
            for seen in (by_ip.setdefault(peer.ip, peer), by_mac.setdefault(peer.mac, peer)):
                if seen != peer:
                    raise ValueError(f"peers clash: {seen} and {peer}")
        network_id = network.network_id
        result: list[tuple[int, Entries]] = []

        def full() -> None:
            self._entries.pop(network_id, None)
            result.append(_set_peers(self.settings, network, wanted))
            self._entries[network_id] = result[0]

        await self._locked(network_id, full)

    async def update_peers(self, network: OverlayNetwork, removed: Iterable[Peer],
                           upserted: Iterable[Peer],
                           everything: Callable[[], Iterable[Peer]]) -> None:
        """Apply a delta: `removed` are the old versions of the peers that
        left or changed, `upserted` the new versions of those that came or
        changed. Only those entries are written, in one batch, when this
        manager knows the device's entries; otherwise (first time, after
        ensure_network or a failure) set_peers(everything())."""
        network_id = network.network_id
        gone, new = list(removed), list(upserted)
        for peer in new:
            if peer.ip not in network.subnet:
                raise ValueError(f"peer {peer.ip} is not in network {network_id}'s subnet")
        applied: list[bool] = []

        def delta() -> None:
            known = self._entries.get(network_id)  # read under the network's lock
            if known is None:
                return
            try:
                _update_peers(self.settings, network, known[0], known[1], gone, new)
            except BaseException:
                self._entries.pop(network_id, None)  # the next call starts from a dump
                raise
            applied.append(True)

        try:
            await self._locked(network_id, delta)
        except OverlayError as error:
            log.warning("%s; setting every peer again", error)
        if not applied:  # entries unknown or the delta failed: from what the kernel has
            await self.set_peers(network, everything())

    async def endpoints(self, network_id: str) -> list[str]:
        """The overlay-side veth names of the tasks attached on this host."""
        return await asyncio.to_thread(_endpoints, self.settings, network_id)

    def networks(self) -> list[str]:
        """IDs of the networks with a namespace on this host."""
        prefix = self.settings.netns_prefix
        if not NETNS_DIR.is_dir():
            return []
        return sorted(entry[len(prefix):] for entry in os.listdir(NETNS_DIR)
                      if entry.startswith(prefix) and is_network_id(entry[len(prefix):]))
