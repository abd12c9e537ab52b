"""Service discovery and VIP load balancing on real kernel networking: two
simulated hosts (tests/network/conftest.py), a real overlay between them,
plain namespaces standing in for task containers, the agent's Discovery fed
hand-made assignments (the dispatcher's contract, dispatcher.proto), its
DNS responder bound to 127.0.0.11:53 in the client's namespace, its nftables
table there, and a dnspython upstream on this process's loopback (the
agent's namespace here: forwarding happens from there).

Queries and connections are made from inside the client's namespace, in
threads: the responder runs on the test's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from ipaddress import IPv4Interface

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from swarm.agent.discovery import Discovery
from swarm.agent.network import OverlayManager, OverlayNetwork, OverlaySettings
from swarm.agent.network import lb as lb_module
from swarm.agent.network.dns import DnsError, Forwarder, TaskDns, Upstream
from swarm.agent.network.model import Peer
from swarm.api.loops import cancel_all, start_supervised
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli.dev.hosts import Host, Hosts
from swarm.host.netns import ensure_netns_blocking, netns_path, socket_in
from tests.dns_upstream import UpstreamDns

PORT = 7000
NET = pb.Network(id="dnet1", vni=4301, subnet="10.31.0.0/24", gateway="10.31.0.1")
NET.spec.name = "front"
OTHER = pb.Network(id="dnet2", vni=4302, subnet="10.32.0.0/24", gateway="10.32.0.1")
OTHER.spec.name = "back"
VIP = "10.31.0.2"

# Answers each TCP connection and each UDP datagram with its own address
# (given as argv[1]), then closes.
NAME_SERVER = f"""
import socket, sys, threading
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind((sys.argv[1], {PORT}))
def answer_udp():
    while True:
        _, client = udp.recvfrom(100)
        udp.sendto(sys.argv[1].encode(), client)
threading.Thread(target=answer_udp, daemon=True).start()
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", {PORT}))
srv.listen(64)
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    with conn:
        conn.sendall(conn.getsockname()[0].encode())
"""


class Fake:
    """A task: a plain namespace on a host, attached to the overlay."""

    def __init__(self, hosts: Hosts, host: Host, task_id: str, service_id: str,
                 address: str, network: pb.Network = NET) -> None:
        self.host = host
        self.task_id = task_id
        self.service_id = service_id
        self.netns = hosts.name(f"{host.name}-{task_id}")
        self.address = IPv4Interface(address)
        self.network = network

    @property
    def path(self) -> str:
        return str(netns_path(self.netns))

    def peer(self, ready: bool = True) -> dpb.OverlayPeer:
        return dpb.OverlayPeer(task_id=self.task_id, node_id=self.host.name,
                               address=str(self.address), vtep=str(self.host.ip),
                               service_id=self.service_id, ready=ready,
                               task_name=f"{self.service_id}.1.{self.task_id}")


def assignment(entries: list[dpb.NetworkAssignment],
               complete: bool = True) -> dpb.Assignments:
    return dpb.Assignments(type=dpb.Assignments.COMPLETE if complete
                           else dpb.Assignments.INCREMENTAL, networks=entries)


def web_entry(peers: list[dpb.OverlayPeer], *, delta: bool = False) -> dpb.NetworkAssignment:
    return dpb.NetworkAssignment(network=NET, peers=peers, delta=delta, services=[
        dpb.ServiceRecord(id="web", name="web", mode=pb.EndpointSpec.VIP, vip=f"{VIP}/24"),
        dpb.ServiceRecord(id="client", name="client", mode=pb.EndpointSpec.DNSRR)])


def other_entry(peers: list[dpb.OverlayPeer]) -> dpb.NetworkAssignment:
    return dpb.NetworkAssignment(network=OTHER, peers=peers, services=[
        dpb.ServiceRecord(id="secret", name="secret", mode=pb.EndpointSpec.VIP,
                          vip="10.32.0.2/24")])


def query(netns: str, name: str, rdtype: str = "A", tcp: bool = False) -> dns.message.Message:
    """A query to 127.0.0.11 from inside the namespace (blocking)."""
    message = dns.message.make_query(name, rdtype)
    sock = socket_in(netns, socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    with sock:
        if tcp:
            sock.settimeout(5)
            sock.connect(("127.0.0.11", 53))
        sock.setblocking(False)  # dnspython's timeouts need it
        if tcp:
            return dns.query.tcp(message, "127.0.0.11", timeout=5, sock=sock)
        return dns.query.udp(message, "127.0.0.11", timeout=5, sock=sock)


def addresses(response: dns.message.Message) -> list[str]:
    return sorted(item.address for rrset in response.answer for item in rrset
                  if rrset.rdtype == dns.rdatatype.A)


def fetch(netns: str, address: str) -> str:
    """Who answers a connection to address:PORT from inside the namespace."""
    with socket_in(netns) as sock:
        sock.settimeout(3)
        sock.connect((address, PORT))
        return sock.recv(100).decode()


def udp_ask(sock: socket.socket, address: str) -> str:
    """Who answers a datagram to address:PORT from this (one) UDP socket."""
    sock.sendto(b"?", (address, PORT))
    return sock.recv(100).decode()


def socket_fds() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


async def wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.fixture
def upstream() -> Iterator[UpstreamDns]:
    server = UpstreamDns({"upstream.test": "192.0.2.7"})
    try:
        yield server
    finally:
        server.close()


class Setup:
    def __init__(self, hosts: Hosts) -> None:
        self.hosts = hosts
        self.managers = [OverlayManager(OverlaySettings(
            advertise_addr=host.ip, host_netns=host.netns,
            netns_prefix=hosts.name(f"{host.name}-ov-"))) for host in hosts]
        h1, h2 = hosts[0], hosts[1]
        self.client = Fake(hosts, h1, "c1", "client", "10.31.0.10/24")
        self.b1 = Fake(hosts, h1, "b1", "web", "10.31.0.11/24")
        self.b2 = Fake(hosts, h2, "b2", "web", "10.31.0.12/24")
        self.hidden = Fake(hosts, h2, "s1", "secret", "10.32.0.13/24", OTHER)
        self.servers: list[subprocess.Popen[bytes]] = []

    async def build(self) -> None:
        fakes = [self.client, self.b1, self.b2, self.hidden]
        for manager in self.managers:
            for network in (NET, OTHER):
                await manager.ensure_network(OverlayNetwork.from_proto(network))
        for fake in fakes:
            manager = self.managers[list(self.hosts).index(fake.host)]
            await asyncio.to_thread(ensure_netns_blocking, fake.netns)
            await manager.attach(fake.path, OverlayNetwork.from_proto(fake.network),
                                 fake.address, default_route=True)
        for manager in self.managers:
            for network in (NET, OTHER):
                await manager.set_peers(OverlayNetwork.from_proto(network), [
                    Peer(f.address.ip, f.host.ip) for f in fakes if f.network is network])
        for backend in (self.b1, self.b2):
            process = self.hosts.popen(backend.netns, [sys.executable, "-c", NAME_SERVER,
                                                       str(backend.address.ip)],
                                       stdout=subprocess.PIPE)
            self.servers.append(process)
            assert process.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 15)
            assert line.strip() == b"ready"

    def stop(self) -> None:
        for process in self.servers:
            process.kill()
            process.wait()


@pytest.fixture
async def setup(hosts2: Hosts) -> AsyncIterator[Setup]:
    made = Setup(hosts2)
    try:
        await made.build()
        yield made
    finally:
        made.stop()


async def test_dns_answers_the_askers_networks_and_forwards_the_rest(
        setup: Setup, upstream: UpstreamDns) -> None:
    discovery = Discovery(Forwarder([Upstream("127.0.0.1", upstream.port)]))
    client, b1, b2 = setup.client, setup.b1, setup.b2
    discovery.apply(assignment([web_entry([client.peer(), b1.peer(), b2.peer(ready=False)]),
                                other_entry([setup.hidden.peer()])]))
    sockets_before = socket_fds()
    await discovery.serve(client.task_id, client.path, [NET.id])
    try:
        ns = client.path
        # The container may run its own DNS server on port 53: the agent's
        # sockets have other ports, 127.0.0.11:53 is redirected to them.
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            with socket_in(ns, socket.AF_INET, kind) as own:
                own.bind(("0.0.0.0", 53))
                answer = await asyncio.to_thread(query, ns, "web", "A",
                                                 kind == socket.SOCK_STREAM)
                assert addresses(answer) == [VIP]
        web = await asyncio.to_thread(query, ns, "web")
        assert addresses(web) == [VIP]
        assert web.answer[0].ttl == 0
        assert addresses(await asyncio.to_thread(query, ns, "WEB.")) == [VIP]
        assert addresses(await asyncio.to_thread(query, ns, "tasks.web")) == ["10.31.0.11"]
        assert addresses(await asyncio.to_thread(query, ns, "web.1.b2")) == ["10.31.0.12"]
        assert addresses(await asyncio.to_thread(query, ns, "client")) == ["10.31.0.10"]
        ptr = await asyncio.to_thread(query, ns, "11.0.31.10.in-addr.arpa", "PTR")
        assert [item.target.to_text() for rrset in ptr.answer for item in rrset] == \
            ["web.1.b1."]
        over_tcp = await asyncio.to_thread(query, ns, "tasks.web", "A", True)
        assert addresses(over_tcp) == ["10.31.0.11"]
        aaaa = await asyncio.to_thread(query, ns, "web", "AAAA")
        assert aaaa.rcode() == dns.rcode.NOERROR
        assert not aaaa.answer
        # On a network the client is not on: NXDOMAIN, and never asked upstream.
        secret = await asyncio.to_thread(query, ns, "secret")
        assert secret.rcode() == dns.rcode.NXDOMAIN
        assert "secret" not in upstream.asked
        # Not ours: forwarded (UDP and TCP), the upstream's answer comes back.
        forwarded = await asyncio.to_thread(query, ns, "upstream.test")
        assert addresses(forwarded) == ["192.0.2.7"]
        assert addresses(await asyncio.to_thread(query, ns, "upstream.test", "A", True)) == \
            ["192.0.2.7"]
        missing = await asyncio.to_thread(query, ns, "nothing.test")
        assert missing.rcode() == dns.rcode.NXDOMAIN
        assert upstream.asked.count("upstream.test") == 2
        assert "nothing.test" in upstream.asked

        # b2 becomes ready: answered at once (no load-balancer pass needed for DNS).
        discovery.apply(assignment([web_entry([b2.peer()], delta=True)], complete=False))
        assert addresses(await asyncio.to_thread(query, ns, "tasks.web")) == \
            ["10.31.0.11", "10.31.0.12"]
    finally:
        discovery.release(client.task_id)
    await asyncio.sleep(0)  # the transports close on the next loop iteration
    await asyncio.sleep(0)
    assert discovery.serving() == []
    assert socket_fds() == sockets_before
    # The address is free again inside the namespace: nothing holds it.
    with socket_in(client.path, socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.11", 53))
    # And nothing answers there any more.
    with socket_in(client.path, socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.setblocking(False)
        with pytest.raises(dns.exception.Timeout):
            await asyncio.to_thread(dns.query.udp, dns.message.make_query("web", "A"),
                                    "127.0.0.11", timeout=0.3, sock=probe)


async def test_vip_balances_over_ready_backends_and_rejects_without_any(setup: Setup) -> None:
    discovery = Discovery(Forwarder([]))
    client, b1, b2 = setup.client, setup.b1, setup.b2
    discovery.apply(assignment([web_entry([client.peer(), b1.peer(), b2.peer()])]))
    loop = start_supervised("discovery-lb", discovery.run)
    await discovery.serve(client.task_id, client.path, [NET.id])
    try:
        table = await lb_module.listing(client.path)
        assert "numgen random mod 2" in table, table
        # Every backend answers over repeated connections (one on each host).
        seen = [await asyncio.to_thread(fetch, client.path, VIP) for _ in range(40)]
        assert set(seen) == {"10.31.0.11", "10.31.0.12"}, seen

        # A UDP flow sticks to the backend it got (conntrack)...
        flow = socket_in(client.path, socket.AF_INET, socket.SOCK_DGRAM)
        flow.settimeout(3)
        try:
            first = await asyncio.to_thread(udp_ask, flow, VIP)
            assert first in ("10.31.0.11", "10.31.0.12")
            for _ in range(5):
                assert await asyncio.to_thread(udp_ask, flow, VIP) == first
            leaving = b1 if first == "10.31.0.11" else b2
            staying = b2 if leaving is b1 else b1

            # ... until its backend is no longer ready: after the next pass,
            # new connections and that same flow go to the other one.
            passes = discovery.passes
            discovery.apply(assignment([web_entry([leaving.peer(ready=False)], delta=True)],
                                       complete=False))
            await wait_for(lambda: discovery.passes > passes)
            assert await asyncio.to_thread(udp_ask, flow, VIP) == str(staying.address.ip)
            seen = [await asyncio.to_thread(fetch, client.path, VIP) for _ in range(20)]
            assert set(seen) == {str(staying.address.ip)}
        finally:
            flow.close()
        # Both ready again, then b2 not: the rest of the test expects b1.
        discovery.apply(assignment([web_entry([b1.peer(), b2.peer(ready=False)], delta=True)],
                                   complete=False))
        assert await discovery.sync_all() == 0  # settled now, whether or not that changed it
        assert {await asyncio.to_thread(fetch, client.path, VIP) for _ in range(10)} == \
            {"10.31.0.11"}

        # b1 gone too: the VIP refuses at once rather than letting SYNs hang.
        passes = discovery.passes
        discovery.apply(assignment([web_entry([], delta=True)], complete=False))
        discovery.apply(assignment([dpb.NetworkAssignment(
            network=NET, delta=True, removed_peers=["b1"], services=web_entry([]).services)],
            complete=False))
        await wait_for(lambda: discovery.passes > passes)
        started = time.monotonic()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.to_thread(fetch, client.path, VIP)
        assert time.monotonic() - started < 1.0
        assert "reject" in await lb_module.listing(client.path)

        # Burst of changes: coalesced (fewer passes than changes), ends right.
        passes = discovery.passes
        for _ in range(20):
            discovery.apply(assignment([web_entry([b1.peer(ready=False)], delta=True)],
                                       complete=False))
            discovery.apply(assignment([web_entry([b1.peer()], delta=True)], complete=False))
        await wait_for(lambda: discovery.passes > passes)
        await asyncio.sleep(0.3)
        assert discovery.passes - passes < 40
        assert await asyncio.to_thread(fetch, client.path, VIP) == "10.31.0.11"
    finally:
        await cancel_all([loop])
        discovery.release(client.task_id)
        await discovery.close()


async def test_dns_without_upstreams_refuses_and_a_dead_upstream_fails_fast(
        hosts2: Hosts) -> None:
    netns = hosts2.name("dnsonly")
    await asyncio.to_thread(ensure_netns_blocking, netns)
    path = str(netns_path(netns))
    refusing = TaskDns("t-refuse", [], lambda n, nets: Discovery(Forwarder([])).resolve(n, nets),
                       Forwarder([]))
    await refusing.start(path)
    try:
        response = await asyncio.to_thread(query, path, "example.test")
        assert response.rcode() == dns.rcode.REFUSED
        # A second responder on the same address is refused with a clear error.
        with pytest.raises(DnsError, match=r"127\.0\.0\.11:53"):
            await TaskDns("t-dup", [], refusing._resolve, Forwarder([])).start(path)
        # Discovery.serve in a namespace that does not exist: a one-line
        # DnsError, nothing served, no socket left open.
        discovery = Discovery(Forwarder([]))
        sockets = socket_fds()
        with pytest.raises(DnsError, match="No such file") as error:
            await discovery.serve("t-bad", path + "-missing", [])
        assert "\n" not in str(error.value)
        assert discovery.serving() == []
        assert socket_fds() == sockets
    finally:
        await refusing.close()
    # An upstream nobody listens on (a closed loopback port): SERVFAIL, within the deadline.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    dead = Forwarder([Upstream("127.0.0.1", dead_port)], try_timeout=0.5, deadline=1.0)
    failing = TaskDns("t-dead", [], refusing._resolve, dead)
    await failing.start(path)
    try:
        started = time.monotonic()
        response = await asyncio.to_thread(query, path, "example.test")
        assert response.rcode() == dns.rcode.SERVFAIL
        assert response.flags & dns.flags.QR
        assert time.monotonic() - started < 2.0
    finally:
        await failing.close()
