"""Simulated hosts on one machine, for e2e tests, the local cluster command and
benchmarks: N network namespaces joined by an underlay bridge.

    <prefix>ul   (the underlay's own namespace)
      br0 --+-- h1 ==veth==> <prefix>h1: eth0 192.168.77.11/24
            +-- h2 ==veth==> <prefix>h2: eth0 192.168.77.12/24
            ...

* The underlay bridge lives in a namespace of its own, never the root one:
  on a machine where Docker's engine ever ran, the root namespace's FORWARD
  policy is DROP and would silently drop bridged traffic (DESIGN.md).
* Nothing connects to the root namespace: hosts have no route to the outside
  (and nothing on them can reach the machine's real network).
* Commands run in a host through `nsenter --net=/run/netns/NAME` (only the
  network namespace changes); `ip netns exec` is never used, since it remounts
  /sys in a new mount namespace and hides the cgroup mounts runc needs.
* Every namespace of a run is named `swt-<pid>-<random>-...`: parallel runs
  never collide, teardown removes everything with its run's prefix (the
  namespaces a test made for its tasks or overlays included, when named with
  Hosts.name()), and cleanup_stale() removes what runs whose process is gone
  left behind.

Netlink work is done with pyroute2 (no `ip` commands), synchronously -- call
from a thread (asyncio.to_thread) when an event loop is running -- and never
with IPRoute(netns=...), which forks (see agent/runtime/netns.py).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from types import TracebackType
from typing import Any

from pyroute2 import IPRoute

from swarm.host.netns import (
    NETNS_DIR,
    bridge_without_netfilter_blocking,
    ensure_netns_blocking,
    netlink_socket_in,
    netns_path,
    remove_netns_blocking,
    socket_in,
)

from .daemons import stop_child

log = logging.getLogger(__name__)

RUN_BASE = "swt-"
# A private /24 that only ever exists inside the run's namespaces.
DEFAULT_SUBNET = "192.168.77.0/24"
FIRST_HOST_OFFSET = 11  # h1 is .11, h2 .12, ...
UNDERLAY_BRIDGE = "br0"


def new_run_prefix(base: str = RUN_BASE) -> str:
    """`swt-<pid>-<4 hex>-`: unique per run, and the pid tells cleanup_stale
    whether the run that made it is still alive."""
    return f"{base}{os.getpid()}-{secrets.token_hex(2)}-"


def ipr_in(netns: str) -> IPRoute:
    """An IPRoute inside a namespace, made without a fork (close it; use it from
    one thread). A missing namespace is FileNotFoundError, never created."""
    return IPRoute(use_socket=netlink_socket_in(netns))


def nsenter_argv(netns: str | os.PathLike[str], argv: Sequence[str]) -> list[str]:
    """argv run in a network namespace (a name under /run/netns, or a path),
    every other namespace (mount, cgroup, pid) left as it is."""
    text = os.fspath(netns)
    path = text if "/" in text else str(netns_path(text))
    return ["nsenter", f"--net={path}", "--", *argv]


@dataclass
class Host:
    """One simulated host: a network namespace with `ifname` on the underlay."""

    name: str  # short: h1, h2...
    netns: str  # the namespace's name under /run/netns
    address: IPv4Interface  # on the underlay
    ifname: str = "eth0"
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False, compare=False)

    @property
    def path(self) -> str:
        return str(netns_path(self.netns))

    @property
    def ip(self) -> IPv4Address:
        return self.address.ip

    def argv(self, argv: Sequence[str]) -> list[str]:
        return nsenter_argv(self.netns, argv)

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float = 30.0,
            **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run a short command in the host and wait for it (output captured)."""
        return subprocess.run(self.argv(argv), check=check, timeout=timeout, capture_output=True,
                              text=True, **kwargs)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a process in the host; teardown stops it (by its pid) if it
        is still running."""
        process: subprocess.Popen[bytes] = subprocess.Popen(self.argv(argv), **kwargs)
        self.processes.append(process)
        return process

    def ipr(self) -> IPRoute:
        """A pyroute2 IPRoute inside the host (close it; flags=0: never
        create the namespace as a side effect)."""
        return ipr_in(self.netns)

    def set_mtu(self, mtu: int) -> None:
        with self.ipr() as ipr:
            (index,) = ipr.link_lookup(ifname=self.ifname)
            ipr.link("set", index=index, mtu=mtu)

    def stop_processes(self, timeout: float = 5.0) -> None:
        for process in self.processes:
            stop_child(process, timeout)
        self.processes.clear()


class Hosts:
    """N simulated hosts on an underlay; a context manager that tears down
    everything of its run on exit (also when the set-up itself failed)."""

    def __init__(self, prefix: str, subnet: IPv4Network) -> None:
        self.prefix = prefix
        self.subnet = subnet
        self.underlay_netns = prefix + "ul"
        self.hosts: list[Host] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    @classmethod
    def create(cls, count: int, *, prefix: str | None = None, subnet: str = DEFAULT_SUBNET,
               mtu: int = 1500) -> Hosts:
        network = IPv4Network(subnet)
        if count < 1 or FIRST_HOST_OFFSET + count >= network.num_addresses - 1:
            raise ValueError(f"{count} hosts do not fit in {network}")
        prefix = prefix or new_run_prefix()
        if _namespaces_with(prefix):
            # Teardown removes everything with the prefix: never adopt another run's.
            raise ValueError(f"namespaces named {prefix}* exist already")
        hosts = cls(prefix, network)
        try:
            hosts._make_underlay(mtu)
            for i in range(1, count + 1):
                hosts.add_host(f"h{i}", mtu=mtu)
        except BaseException:
            hosts.teardown()
            raise
        return hosts

    def _make_underlay(self, mtu: int) -> None:
        ensure_netns_blocking(self.underlay_netns)
        # A switch, not a firewall: no netfilter on the bridged frames.
        bridge_without_netfilter_blocking(self.underlay_netns)
        with ipr_in(self.underlay_netns) as ul:
            ul.link("add", ifname=UNDERLAY_BRIDGE, kind="bridge", mtu=mtu)
            (index,) = ul.link_lookup(ifname=UNDERLAY_BRIDGE)
            ul.link("set", index=index, state="up")

    def add_host(self, name: str, *, mtu: int = 1500) -> Host:
        """Another host on the underlay (the next free address). The name is
        also its port's name on the underlay bridge: 15 characters at most."""
        if not 0 < len(name) <= 15 or "/" in name:
            raise ValueError(f"bad host name {name!r}")
        address = IPv4Interface(
            f"{self.subnet.network_address + FIRST_HOST_OFFSET + len(self.hosts)}/{self.subnet.prefixlen}")
        host = Host(name=name, netns=self.prefix + name, address=address)
        ensure_netns_blocking(host.netns)  # with lo up
        self.hosts.append(host)
        with ipr_in(self.underlay_netns) as ul:
            # Both ends in one request: the host's end straight into its namespace.
            ul.link("add", ifname=name, kind="veth", mtu=mtu,
                    peer={"ifname": host.ifname, "net_ns_fd": host.path, "mtu": mtu})
            (port,) = ul.link_lookup(ifname=name)
            (bridge,) = ul.link_lookup(ifname=UNDERLAY_BRIDGE)
            ul.link("set", index=port, master=bridge, state="up")
        with host.ipr() as ipr:
            (index,) = ipr.link_lookup(ifname=host.ifname)
            ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
            ipr.link("set", index=index, state="up")
        return host

    def attach_root(self, link: str, *, mtu: int = 1500) -> IPv4Interface:
        """Give the root namespace a leg on the underlay (the subnet's first
        address, on a veth named `link`), for the local cluster's etcd,
        controller and registry and for the operator's swarmctl. The hosts
        still have no route beyond the underlay. Removed with the underlay
        namespace (a veth dies with its peer)."""
        address = IPv4Interface(f"{self.subnet.network_address + 1}/{self.subnet.prefixlen}")
        with IPRoute() as root:
            root.link("add", ifname=link, kind="veth", mtu=mtu,
                      peer={"ifname": "root", "net_ns_fd": str(netns_path(self.underlay_netns)),
                            "mtu": mtu})
            (index,) = root.link_lookup(ifname=link)
            root.addr("add", index=index, address=str(address.ip),
                      prefixlen=address.network.prefixlen)
            root.link("set", index=index, state="up")
        with ipr_in(self.underlay_netns) as ul:
            (port,) = ul.link_lookup(ifname="root")
            (bridge,) = ul.link_lookup(ifname=UNDERLAY_BRIDGE)
            ul.link("set", index=port, master=bridge, state="up")
        return address

    def popen(self, netns: str | os.PathLike[str], argv: Sequence[str],
              **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a process in any namespace (a task's, say); teardown stops
        it by its pid if it still runs."""
        process: subprocess.Popen[bytes] = subprocess.Popen(nsenter_argv(netns, argv), **kwargs)
        self.processes.append(process)
        return process

    def name(self, suffix: str) -> str:
        """A namespace name of this run (torn down with it)."""
        return self.prefix + suffix

    def __getitem__(self, index: int) -> Host:
        return self.hosts[index]

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    def __enter__(self) -> Hosts:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.teardown()

    def namespaces(self) -> list[str]:
        """Every namespace of this run that still exists."""
        return _namespaces_with(self.prefix)

    def teardown(self) -> None:
        """Stop the processes started in the hosts, then remove every
        namespace of the run (underlay, hosts, and whatever else a test named
        with self.name()); the kernel deletes their devices with them."""
        for host in self.hosts:
            host.stop_processes()
        for process in self.processes:
            stop_child(process, 5.0)
        self.processes.clear()
        remove_namespaces(self.prefix)


def remove_namespaces(prefix: str) -> list[str]:
    """Remove every namespace named prefix* (the kernel deletes their devices,
    and with them the peers of their veths). Returns the names removed."""
    names = _namespaces_with(prefix)
    for name in names:
        remove_netns_blocking(name)
    return names


def _namespaces_with(prefix: str) -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(name for name in os.listdir(NETNS_DIR) if name.startswith(prefix))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(base: str = RUN_BASE) -> list[str]:
    """Remove the namespaces left by runs whose process is gone (a run killed
    before its teardown); those of live runs are left alone. Returns the names
    removed. Processes still inside a stale namespace are not touched (they
    are not ours to kill): they keep it alive, nameless, until they exit."""
    removed = []
    for name in _namespaces_with(base):
        pid_text = name[len(base):].split("-", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        remove_netns_blocking(name)
        removed.append(name)
    if removed:
        log.info("removed %d stale namespaces: %s", len(removed), " ".join(removed))
    return removed


def connect_in(netns: str | os.PathLike[str], address: tuple[str, int], *, timeout: float = 1.0,
               retry_for: float = 0.0) -> socket.socket:
    """A TCP connection from inside a namespace. retry_for: keep trying for
    that long while the connection is refused (a server still starting)."""
    deadline = time.monotonic() + retry_for
    while True:
        sock = socket_in(netns)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
            return sock
        except ConnectionRefusedError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        except BaseException:
            sock.close()
            raise
