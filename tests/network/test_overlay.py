"""The overlay data plane on real kernel networking: simulated hosts (network
namespaces on an underlay bridge, tests/hosts.py), an OverlayManager per host
driving it from outside (host_netns), and plain network namespaces standing in
for the tasks' containers. Traffic is real TCP over VXLAN between them.

Every namespace is named with the run's prefix, so the hosts fixture's
teardown removes all of it, also when a test fails; tests that check for
leftovers do so through pyroute2 before that.
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from socket import AF_INET
from typing import Any

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from swarm.agent.network import (
    OverlayError,
    OverlayManager,
    OverlayNetwork,
    OverlaySettings,
    Peer,
    mac_from_ip,
)
from swarm.agent.network.overlay import BRIDGE, VXLAN
from swarm.cli.dev.hosts import Host, Hosts, connect_in, ipr_in
from swarm.host.netns import ensure_netns_blocking, netns_path, run_in_netns_blocking

REPO = Path(__file__).resolve().parents[2]
NET = OverlayNetwork.create("net1", 4096, "10.20.0.0/24", "10.20.0.1")
PORT = 7000

# A tiny echo server: prints "ready" once listening, echoes every connection.
ECHO_SERVER = f"""
import socket, sys, threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", {PORT}))
srv.listen(16)
print("ready", flush=True)
def echo(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=echo, args=(conn,), daemon=True).start()
"""


@dataclass
class Task:
    """A fake task: a plain namespace, on a host, with an overlay address."""

    host: Host
    netns: str
    address: IPv4Interface

    @property
    def path(self) -> str:
        return str(netns_path(self.netns))

    def peer(self) -> Peer:
        return Peer(self.address.ip, self.host.ip)


def manager(hosts: Hosts, host: Host) -> OverlayManager:
    return OverlayManager(OverlaySettings(advertise_addr=host.ip, host_netns=host.netns,
                                          netns_prefix=hosts.name(f"{host.name}-ov-")))


async def new_task(hosts: Hosts, host: Host, n: int) -> Task:
    name = hosts.name(f"{host.name}-t{n}")
    await asyncio.to_thread(ensure_netns_blocking, name)
    return Task(host, name, IPv4Interface(f"10.20.0.{10 + n}/24"))


async def start_echo(hosts: Hosts, task: Task) -> None:
    process = hosts.popen(task.netns, [sys.executable, "-c", ECHO_SERVER],
                          stdout=subprocess.PIPE)
    assert process.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 15)
    assert line.strip() == b"ready", line


def _echo_once(src: Task, dst: Task, size: int, timeout: float) -> bytes:
    # Larger than one frame, so full-MTU frames must cross the VXLAN.
    payload = bytes(range(256)) * (size // 256)
    with connect_in(src.path, (str(dst.address.ip), PORT), timeout=timeout) as sock:
        sock.sendall(payload)
        received = b""
        while len(received) < len(payload):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    assert received == payload
    return received


async def echo(src: Task, dst: Task, size: int = 20_000, timeout: float = 3.0) -> None:
    await asyncio.to_thread(_echo_once, src, dst, size, timeout)


async def unreachable(src: Task, dst: Task) -> bool:
    try:
        await asyncio.to_thread(_echo_once, src, dst, 256, 1.0)
    except OSError:  # timeout, or no route to host once ARP fails
        return True
    return False


def dump(netns: str, what: str) -> list[Any]:
    with ipr_in(netns) as ipr:
        if what == "links":
            return [(m.get("ifname"), m.get(("linkinfo", "kind"))) for m in ipr.link("dump")]
        if what == "fdb":
            (vxlan,) = ipr.link_lookup(ifname=VXLAN)
            return sorted((m.get("lladdr"), m.get("dst")) for m in ipr.fdb("dump")
                          if m["ifindex"] == vxlan and m.get("dst"))
        if what == "neigh":
            (vxlan,) = ipr.link_lookup(ifname=VXLAN)
            return sorted((m.get("dst"), m.get("lladdr")) for m in ipr.neigh("dump", family=AF_INET)
                          if m["ifindex"] == vxlan)
        if what == "eth0":
            (index,) = ipr.link_lookup(ifname="eth0")
            link = ipr.link("get", index=index)[0]
            addrs = [f"{m.get('address')}/{m['prefixlen']}"
                     for m in ipr.addr("dump", family=AF_INET, index=index)]
            routes = [m.get("gateway") for m in ipr.route("dump", family=AF_INET)
                      if m["dst_len"] == 0 and m.get("gateway")]
            return [link.get("address"), link.get("mtu"), addrs, routes]
    raise ValueError(what)


def ifindex(netns: str, ifname: str) -> int:
    with ipr_in(netns) as ipr:
        (index,) = ipr.link_lookup(ifname=ifname)
        return int(index)


def add_address(netns: str, ifname: str, address: str) -> None:
    with ipr_in(netns) as ipr:
        (index,) = ipr.link_lookup(ifname=ifname)
        ip, prefixlen = address.split("/")
        ipr.addr("add", index=index, address=ip, prefixlen=int(prefixlen))


def vxlan_local(netns: str) -> str:
    with ipr_in(netns) as ipr:
        (index,) = ipr.link_lookup(ifname=VXLAN)
        return str(ipr.link("get", index=index)[0].get(("linkinfo", "data", "vxlan_local")))


def add_foreign(netns: str, ifname: str) -> None:
    """An interface someone else made (a veth within the namespace: this
    kernel has no dummy driver)."""
    with ipr_in(netns) as ipr:
        ipr.link("add", ifname=ifname, kind="veth", peer="foreign")


async def host_links(host: Host) -> list[Any]:
    return await asyncio.to_thread(dump, host.netns, "links")


async def set_up(hosts: Hosts, tasks_per_host: int = 1) -> tuple[list[OverlayManager], list[Task]]:
    managers = [manager(hosts, host) for host in hosts]
    tasks: list[Task] = []
    n = 0
    for mgr, host in zip(managers, hosts, strict=True):
        await mgr.ensure_network(NET)
        for _ in range(tasks_per_host):
            n += 1
            task = await new_task(hosts, host, n)
            await mgr.attach(task.path, NET, task.address, default_route=True)
            tasks.append(task)
    peers = [t.peer() for t in tasks]
    for mgr in managers:
        await mgr.set_peers(NET, peers)
    return managers, tasks


def others(tasks: Sequence[Task], *excluded: Task) -> list[Peer]:
    return [t.peer() for t in tasks if t not in excluded]


# ================================================================ traffic


async def test_tasks_on_three_hosts_reach_each_other_over_vxlan(hosts3: Hosts) -> None:
    managers, (t1, t2, t3) = await set_up(hosts3)
    await start_echo(hosts3, t3)

    await echo(t1, t3)
    await echo(t2, t3)

    # The task's interface: MAC from its address, underlay MTU - 50, its
    # address, default route via the gateway.
    assert await asyncio.to_thread(dump, t1.path, "eth0") == [
        mac_from_ip(t1.address.ip), 1450, [str(t1.address)], [str(NET.gateway)]]
    # Host 1 knows the two remote endpoints, not its own.
    ov1 = managers[0].netns_path(NET.network_id)
    assert await asyncio.to_thread(dump, ov1, "fdb") == sorted(
        (mac_from_ip(t.address.ip), str(t.host.ip)) for t in (t2, t3))
    assert await asyncio.to_thread(dump, ov1, "neigh") == sorted(
        (str(t.address.ip), mac_from_ip(t.address.ip)) for t in (t2, t3))
    # The host namespaces hold no overlay device: it all lives in the overlay's.
    assert await host_links(hosts3[0]) == [("lo", None), ("eth0", "veth")]
    assert {link[1] for link in await asyncio.to_thread(dump, ov1, "links")} == {
        None, "bridge", "vxlan", "veth"}


async def test_set_peers_has_replace_semantics(hosts3: Hosts) -> None:
    managers, tasks = await set_up(hosts3)
    t1, t2, t3 = tasks
    await start_echo(hosts3, t3)
    await echo(t1, t3)
    ov1 = managers[0].netns_path(NET.network_id)

    # t3 gone from host 1's view: its entries go and traffic stops.
    await managers[0].set_peers(NET, others(tasks, t3))
    assert await asyncio.to_thread(dump, ov1, "fdb") == [(mac_from_ip(t2.address.ip), str(t2.host.ip))]
    assert await asyncio.to_thread(dump, ov1, "neigh") == [(str(t2.address.ip), mac_from_ip(t2.address.ip))]
    assert await unreachable(t1, t3)
    await echo(t2, t3)  # other hosts unaffected

    # Back again; repeating the same set changes nothing.
    await managers[0].set_peers(NET, others(tasks))
    await managers[0].set_peers(NET, others(tasks))
    await echo(t1, t3)

    # An endpoint that moved host (same address, other VTEP): replaced, not added.
    moved = Peer(t3.address.ip, t2.host.ip)
    await managers[0].set_peers(NET, [t2.peer(), moved])
    assert await asyncio.to_thread(dump, ov1, "fdb") == sorted(
        [(mac_from_ip(t2.address.ip), str(t2.host.ip)), (moved.mac, str(t2.host.ip))])

    # Nobody left: no entries at all.
    await managers[0].set_peers(NET, [])
    assert await asyncio.to_thread(dump, ov1, "fdb") == []
    assert await asyncio.to_thread(dump, ov1, "neigh") == []


async def test_update_peers_applies_deltas_without_a_full_set(hosts3: Hosts) -> None:
    """A delta writes only what changed, from what the manager knows (no
    dump), and the kernel ends exactly where a full set would leave it."""
    managers, tasks = await set_up(hosts3)
    t1, t2, t3 = tasks
    await start_echo(hosts3, t3)
    ov1 = managers[0].netns_path(NET.network_id)
    everything_asked: list[int] = []

    def everything(peers: list[Peer]) -> Any:
        def call() -> list[Peer]:
            everything_asked.append(1)
            return peers
        return call

    # t3 leaves: its entries go, traffic stops; the other host's are untouched.
    await managers[0].update_peers(NET, [t3.peer()], [], everything(others(tasks, t3)))
    assert await asyncio.to_thread(dump, ov1, "fdb") == [(mac_from_ip(t2.address.ip), str(t2.host.ip))]
    assert await unreachable(t1, t3)
    # t3 back, and a new endpoint on host 2 at once; one that moved host is replaced.
    extra = Peer(IPv4Address("10.20.0.77"), t2.host.ip)
    await managers[0].update_peers(NET, [], [t3.peer(), extra], everything([]))
    await echo(t1, t3)
    moved = Peer(extra.ip, t3.host.ip)
    await managers[0].update_peers(NET, [extra], [moved], everything([]))
    wanted = [t2.peer(), t3.peer(), moved]
    assert await asyncio.to_thread(dump, ov1, "fdb") == sorted((p.mac, str(p.vtep)) for p in wanted)
    assert await asyncio.to_thread(dump, ov1, "neigh") == sorted((str(p.ip), p.mac) for p in wanted)
    # Peers on this host's own VTEP never get entries; nothing was ever re-sent whole.
    await managers[0].update_peers(NET, [], [Peer(IPv4Address("10.20.0.78"), t1.host.ip)],
                                   everything([]))
    assert len(await asyncio.to_thread(dump, ov1, "fdb")) == 3
    assert everything_asked == []
    # After ensure_network the manager no longer trusts what it knew: the
    # next delta starts from the whole set (and a dump).
    await managers[0].ensure_network(NET)
    await managers[0].update_peers(NET, [], [], everything(others(tasks)))
    assert everything_asked == [1]
    assert await asyncio.to_thread(dump, ov1, "fdb") == sorted(
        (p.mac, str(p.vtep)) for p in others(tasks, t1))


async def test_networks_are_isolated_even_with_a_wrong_peer_entry(hosts2: Hosts) -> None:
    # net2 overlaps net1's subnet on purpose. h1's net1 is even told (wrongly)
    # that net2's task is a peer: its frames reach h2 with net1's VNI, land
    # on net1's bridge there, and never on net2's.
    h1, h2 = hosts2
    net2 = OverlayNetwork.create("net2", 4097, str(NET.subnet), str(NET.gateway))
    m1, m2 = manager(hosts2, h1), manager(hosts2, h2)
    t1, t2 = await new_task(hosts2, h1, 1), await new_task(hosts2, h2, 2)
    other = Task(h2, hosts2.name("h2-other"), IPv4Interface("10.20.0.30/24"))
    await asyncio.to_thread(ensure_netns_blocking, other.netns)
    for mgr in (m1, m2):
        await mgr.ensure_network(NET)
    await m2.ensure_network(net2)
    await m1.attach(t1.path, NET, t1.address, default_route=True)
    await m2.attach(t2.path, NET, t2.address, default_route=True)
    await m2.attach(other.path, net2, other.address, default_route=True)
    await m1.set_peers(NET, [t2.peer(), other.peer()])
    await m2.set_peers(NET, [t1.peer()])
    await start_echo(hosts2, t2)
    await start_echo(hosts2, other)

    await echo(t1, t2)
    assert await unreachable(t1, other)


async def test_two_tasks_on_one_host_talk_through_the_bridge(hosts2: Hosts) -> None:
    _managers, (t1, t2, _t3, _t4) = await set_up(hosts2, tasks_per_host=2)
    await start_echo(hosts2, t2)
    await echo(t1, t2)


async def test_an_agent_inside_its_host_namespace_needs_no_host_netns(hosts2: Hosts) -> None:
    # Production: the agent is started in its host's namespace (nsenter) and
    # leaves host_netns unset. Here a child process does what it would, then
    # the test sends traffic over the result.
    h1, h2 = hosts2
    t1, t2 = await new_task(hosts2, h1, 1), await new_task(hosts2, h2, 2)
    script = f"""
import asyncio
from ipaddress import IPv4Address, IPv4Interface
from swarm.agent.network import OverlayManager, OverlayNetwork, OverlaySettings, Peer
net = OverlayNetwork.create("net1", 4096, "10.20.0.0/24", "10.20.0.1")
mgr = OverlayManager(OverlaySettings(IPv4Address("{h1.ip}"), netns_prefix="{hosts2.name('h1-ov-')}"))
async def main():
    await mgr.ensure_network(net)
    await mgr.attach("{t1.path}", net, IPv4Interface("{t1.address}"), default_route=True)
    await mgr.set_peers(net, [Peer.create("{t2.address.ip}", "{h2.ip}")])
asyncio.run(main())
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = await asyncio.to_thread(h1.run, [sys.executable, "-c", script], env=env, check=False)
    assert done.returncode == 0, done.stderr
    mgr2 = manager(hosts2, h2)
    await mgr2.ensure_network(NET)
    await mgr2.attach(t2.path, NET, t2.address, default_route=True)
    await mgr2.set_peers(NET, [t1.peer()])
    await start_echo(hosts2, t2)
    await echo(t1, t2)
    await manager(hosts2, h1).remove_network(NET.network_id)


# ================================================================ lifecycle


async def test_operations_are_idempotent_and_removal_leaves_nothing(hosts2: Hosts) -> None:
    h1 = hosts2[0]
    before = await host_links(h1)
    mgr = manager(hosts2, h1)
    task = await new_task(hosts2, h1, 1)

    indexes, vxlans = set(), set()
    for _ in range(2):
        await mgr.ensure_network(NET)
        await mgr.attach(task.path, NET, task.address, default_route=True)
        await mgr.set_peers(NET, [Peer.create("10.20.0.99", str(hosts2[1].ip))])
        indexes.add(await asyncio.to_thread(ifindex, task.path, "eth0"))
        vxlans.add(await asyncio.to_thread(ifindex, mgr.netns_path(NET.network_id), VXLAN))
    assert len(indexes) == 1, "a repeated attach must keep the veth, not recreate it"
    assert len(vxlans) == 1, "a repeated ensure_network must keep the VXLAN device"
    assert mgr.networks() == [NET.network_id]
    assert len(await mgr.endpoints(NET.network_id)) == 1
    assert await asyncio.to_thread(dump, task.path, "eth0") == [
        mac_from_ip(task.address.ip), 1450, [str(task.address)], [str(NET.gateway)]]

    # A changed address converges on the same veth.
    await mgr.attach(task.path, NET, IPv4Interface("10.20.0.77/24"), default_route=True)
    assert (await asyncio.to_thread(dump, task.path, "eth0"))[2] == ["10.20.0.77/24"]
    assert await asyncio.to_thread(ifindex, task.path, "eth0") in indexes

    for _ in range(2):
        await mgr.detach(task.path, NET.network_id)
    assert await mgr.endpoints(NET.network_id) == []
    assert await asyncio.to_thread(dump, task.path, "links") == [("lo", None)]

    for _ in range(2):
        await mgr.remove_network(NET.network_id)
    assert mgr.networks() == []
    assert not netns_path(hosts2.name(f"{h1.name}-ov-{NET.network_id}")).exists()
    assert await host_links(h1) == before

    # The VNI is free again at once (devices were deleted, not left to the
    # namespace's asynchronous destruction).
    await mgr.ensure_network(NET)
    await mgr.remove_network(NET.network_id)


async def test_a_changed_advertise_address_recreates_the_vxlan_device(hosts2: Hosts) -> None:
    h1 = hosts2[0]
    mgr = manager(hosts2, h1)
    await mgr.ensure_network(NET)
    await asyncio.to_thread(add_address, h1.netns, h1.ifname, "192.168.77.50/24")
    moved = OverlayManager(OverlaySettings(advertise_addr=IPv4Address("192.168.77.50"),
                                           host_netns=h1.netns, netns_prefix=mgr.settings.netns_prefix))
    await moved.ensure_network(NET)
    assert await asyncio.to_thread(vxlan_local, moved.netns_path(NET.network_id)) == "192.168.77.50"
    await moved.remove_network(NET.network_id)


async def test_a_cancelled_call_finishes_before_the_next_one_starts(hosts2: Hosts) -> None:
    mgr = manager(hosts2, hosts2[0])
    pending = asyncio.ensure_future(mgr.ensure_network(NET))
    await asyncio.sleep(0.005)  # in its thread by now
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    # The thread finished (the lock was held until then): the network is
    # whole or absent, never half made; removal leaves nothing either way.
    await mgr.remove_network(NET.network_id)
    assert mgr.networks() == []


async def test_remove_network_takes_the_tasks_ends_with_it(hosts2: Hosts) -> None:
    mgr = manager(hosts2, hosts2[0])
    task = await new_task(hosts2, hosts2[0], 1)
    await mgr.ensure_network(NET)
    await mgr.attach(task.path, NET, task.address)
    await mgr.remove_network(NET.network_id)
    assert await asyncio.to_thread(dump, task.path, "links") == [("lo", None)]
    await mgr.detach(task.path, NET.network_id)  # nothing to do, no error


async def test_second_network_gets_its_own_namespace_and_devices(hosts2: Hosts) -> None:
    mgr = manager(hosts2, hosts2[0])
    other = OverlayNetwork.create("net2", 4097, "10.21.0.0/24", "10.21.0.1")
    task = await new_task(hosts2, hosts2[0], 1)
    await mgr.ensure_network(NET)
    await mgr.ensure_network(other)
    await mgr.attach(task.path, NET, task.address, ifname="eth0", default_route=True)
    await mgr.attach(task.path, other, IPv4Interface("10.21.0.5/24"), ifname="eth1")
    assert mgr.networks() == ["net1", "net2"]
    names = sorted(str(link[0]) for link in await asyncio.to_thread(dump, task.path, "links"))
    assert names == ["eth0", "eth1", "lo"]
    await mgr.remove_network(NET.network_id)
    names = sorted(str(link[0]) for link in await asyncio.to_thread(dump, task.path, "links"))
    assert names == ["eth1", "lo"]
    await mgr.remove_network(other.network_id)


async def test_the_overlay_bridge_skips_the_netfilter_hooks(hosts2: Hosts) -> None:
    """br_netfilter would send every bridged frame through iptables in the
    overlay's namespace, which has no rules: switched off there, and only there."""
    switch = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
    if not await asyncio.to_thread(switch.exists) and not os.environ.get("CI"):
        pytest.skip("this kernel has no br_netfilter (outside CI): nothing to switch off")
    mgr = manager(hosts2, hosts2[0])
    await mgr.ensure_network(NET)

    def read_in(netns: str) -> str:
        return run_in_netns_blocking(netns, lambda: switch.read_text().strip())

    assert await asyncio.to_thread(read_in, mgr.netns_path(NET.network_id)) == "0"
    # A new namespace starts with the hooks on: the host's is left as it was.
    assert await asyncio.to_thread(read_in, hosts2[0].path) == "1"
    await mgr.remove_network(NET.network_id)


# ================================================================ bad input


async def test_failed_set_up_of_a_new_network_leaves_nothing(hosts2: Hosts) -> None:
    # A VNI already used by another network on this host (a controller bug):
    # the kernel refuses the second VXLAN device, after the namespace and
    # bridge were made; they must go again.
    mgr = manager(hosts2, hosts2[0])
    await mgr.ensure_network(NET)
    clash = OverlayNetwork.create("clash", NET.vni, "10.22.0.0/24", "10.22.0.1")
    with pytest.raises(OverlayError, match="VNI 4096 is already used"):
        await mgr.ensure_network(clash)
    assert mgr.networks() == [NET.network_id]
    await mgr.remove_network(NET.network_id)
    await mgr.ensure_network(clash)  # now its VNI is free
    await mgr.remove_network(clash.network_id)


async def test_too_small_underlay_mtu_is_refused_and_creates_nothing(hosts2: Hosts) -> None:
    h1 = hosts2[0]
    await asyncio.to_thread(h1.set_mtu, 1300)
    before = await host_links(h1)
    mgr = manager(hosts2, h1)
    with pytest.raises(OverlayError, match=r"underlay MTU 1300 .* needs 1330"):
        await mgr.ensure_network(NET)
    assert mgr.networks() == []
    assert await host_links(h1) == before


async def test_unknown_advertise_address_is_refused_and_creates_nothing(hosts2: Hosts) -> None:
    h1 = hosts2[0]
    mgr = OverlayManager(OverlaySettings(advertise_addr=IPv4Address("192.168.77.250"),
                                         host_netns=h1.netns, netns_prefix=hosts2.name("h1-ov-")))
    with pytest.raises(OverlayError, match="on no interface"):
        await mgr.ensure_network(NET)
    assert mgr.networks() == []


async def test_attach_errors_leave_nothing(hosts2: Hosts) -> None:
    mgr = manager(hosts2, hosts2[0])
    task = await new_task(hosts2, hosts2[0], 1)
    with pytest.raises(OverlayError, match="not set up"):
        await mgr.attach(task.path, NET, task.address)
    with pytest.raises(ValueError, match="not in network"):
        await mgr.attach(task.path, NET, IPv4Interface("10.99.0.5/24"))
    with pytest.raises(ValueError, match="reserved"):
        await mgr.attach(task.path, NET, IPv4Interface("10.20.0.1/24"))

    await mgr.ensure_network(NET)
    # Something else already named eth0 in the task: refused, nothing made,
    # and the foreign interface is left alone.
    await asyncio.to_thread(add_foreign, task.path, "eth0")
    with pytest.raises(OverlayError, match="already has an eth0"):
        await mgr.attach(task.path, NET, task.address)
    assert await mgr.endpoints(NET.network_id) == []
    assert ("eth0", "veth") in await asyncio.to_thread(dump, task.path, "links")
    # A task namespace that does not exist: nothing made either.
    with pytest.raises(FileNotFoundError):
        await mgr.attach(hosts2.name("no-such-task"), NET, task.address)
    assert await mgr.endpoints(NET.network_id) == []
    links = {link[0] for link in await asyncio.to_thread(dump, mgr.netns_path(NET.network_id), "links")}
    assert links == {"lo", BRIDGE, VXLAN}
    await mgr.remove_network(NET.network_id)


async def test_attach_failing_half_way_removes_its_veth(hosts2: Hosts,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    mgr = manager(hosts2, hosts2[0])
    task = await new_task(hosts2, hosts2[0], 1)
    await mgr.ensure_network(NET)

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise NetlinkError(errno.EINVAL, "injected")

    # The last step (the default route) fails, after the pair was made.
    monkeypatch.setattr(IPRoute, "route", refuse, raising=False)
    with pytest.raises(OverlayError, match="injected"):
        await mgr.attach(task.path, NET, task.address, default_route=True)
    monkeypatch.undo()
    assert await mgr.endpoints(NET.network_id) == []
    assert await asyncio.to_thread(dump, task.path, "links") == [("lo", None)]
    await mgr.attach(task.path, NET, task.address, default_route=True)  # and it works after
    await mgr.remove_network(NET.network_id)


async def test_set_peers_refuses_bad_peers(hosts2: Hosts) -> None:
    mgr = manager(hosts2, hosts2[0])
    with pytest.raises(OverlayError, match="not set up"):
        await mgr.set_peers(NET, [])
    await mgr.ensure_network(NET)
    with pytest.raises(ValueError, match="not in network"):
        await mgr.set_peers(NET, [Peer.create("10.99.0.2", "192.168.77.12")])
    with pytest.raises(ValueError, match="peers clash"):
        await mgr.set_peers(NET, [Peer.create("10.20.0.2", "192.168.77.12"),
                                  Peer.create("10.20.0.2", "192.168.77.13")])
    with pytest.raises(ValueError, match="peers clash"):
        await mgr.set_peers(NET, [Peer.create("10.20.0.2", "192.168.77.12", "02:00:00:00:00:01"),
                                  Peer.create("10.20.0.3", "192.168.77.13", "02:00:00:00:00:01")])
    await mgr.remove_network(NET.network_id)
