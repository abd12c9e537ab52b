"""Published ports on real kernel networking: the routing mesh in the kernel
(agent.network.mesh: nftables in a simulated host's namespace and its
ingress sandbox, on a real VXLAN overlay between simulated hosts), host-mode
ports straight to a task's namespace, and the userspace proxy where it
stays (loopback clients, PROXY protocol v2). Clients connect from another
simulated host over the underlay, or from the node itself; every backend is
in a namespace the test made."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from collections import Counter

import pytest

from swarm.agent.network import OverlayNetwork, Peer, mesh, proxy
from swarm.agent.network.proxy import Backend
from swarm.agent.published import PublishedPorts, Route, remove_kernel_state
from swarm.api.overlay import mac_for_ip
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli.dev.hosts import Hosts, ipr_in
from swarm.host.netns import ensure_netns_blocking, netns_path, socket_in
from tests.etcd_server import free_port
from tests.network.test_overlay import NET, Task, manager, new_task

TARGET = 7000
WHO_PORT = 7001
# Says its name on each connection, then echoes until the client's EOF,
# then closes: a half-close must pass through both ways. On UDP the same
# port answers each datagram with its name and the datagram. On WHO_PORT it
# says who the client is: the PROXY v2 header's client when one came first,
# else the connection's peer address.
NAMED_ECHO = f"""
import socket, struct, sys, threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", {TARGET}))
srv.listen(64)
who = socket.socket()
who.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
who.bind(("0.0.0.0", {WHO_PORT}))
who.listen(64)
print("ready", flush=True)
def serve(conn):
    with conn:
        conn.sendall(sys.argv[1].encode() + b"\\n")
        while data := conn.recv(65536):
            conn.sendall(data)
def tell(conn, peer):
    with conn:
        data = b""
        while chunk := conn.recv(65536):  # all of it: closing with unread data resets
            data += chunk
        if data.startswith(b"\\r\\n\\r\\n\\x00\\r\\nQUIT\\n"):
            length = struct.unpack("!H", data[14:16])[0]
            client = socket.inet_ntoa(data[16:20]), struct.unpack("!H", data[24:26])[0]
            conn.sendall(f"proxy {{client[0]}}:{{client[1]}}\\n".encode() + data[16 + length:])
        else:
            conn.sendall(f"peer {{peer[0]}}:{{peer[1]}}\\n".encode() + data)
def datagrams():
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", {TARGET}))
    while True:
        data, client = udp.recvfrom(65536)
        udp.sendto(sys.argv[1].encode() + b"\\n" + data, client)
def whos():
    while True:
        conn, peer = who.accept()
        threading.Thread(target=tell, args=(conn, peer), daemon=True).start()
threading.Thread(target=datagrams, daemon=True).start()
threading.Thread(target=whos, daemon=True).start()
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""
SERVICE = "svc1"
LOOPBACK = "127.0.0.1"


async def start_named_echo(hosts: Hosts, netns: str, name: str) -> None:
    process = hosts.popen(netns, [sys.executable, "-c", NAMED_ECHO, name],
                          stdout=subprocess.PIPE)
    assert process.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 15)
    assert line.strip() == b"ready", line


def connect(netns: str, address: str, port: int, timeout: float = 5.0) -> socket.socket:
    """A TCP connection made from inside `netns` (a client host, or the node)."""
    sock = socket_in(netns)
    try:
        sock.settimeout(timeout)
        sock.connect((address, port))
    except BaseException:
        sock.close()
        raise
    return sock


def exchange(netns: str, address: str, port: int, payload: bytes) -> tuple[str, bytes]:
    """Through the published port: (who answered, what came back after our
    EOF), reading until the server's EOF."""
    with connect(netns, address, port) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # half-close: the answer must still come
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    name, _, echoed = received.partition(b"\n")
    return name.decode(), echoed


def who(netns: str, address: str, port: int) -> tuple[str, tuple[str, int]]:
    """What WHO_PORT says of our connection, and our own (address, port)."""
    with connect(netns, address, port) as sock:
        mine = sock.getsockname()
        sock.sendall(b"hello")
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    line, _, rest = received.partition(b"\n")
    assert rest == b"hello", received
    return line.decode(), mine


def datagram(netns: str, address: str, port: int, payload: bytes,
             timeout: float = 3.0) -> tuple[str, bytes]:
    """Through the published UDP port, from a new source port (a new flow)."""
    with socket_in(netns, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(payload, (address, port))
        answer, _ = sock.recvfrom(65536)
    name, _, echoed = answer.partition(b"\n")
    return name.decode(), echoed


def refused(netns: str, address: str, port: int) -> bool:
    try:
        exchange(netns, address, port, b"x")
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    return False


def ingress_entry(network: OverlayNetwork, node_address: str, port: int,
                  peers: list[dpb.OverlayPeer], proxied: int = 0) -> dpb.NetworkAssignment:
    entry = dpb.NetworkAssignment(node_address=node_address, peers=peers)
    entry.network.CopyFrom(pb.Network(
        id=network.network_id, vni=network.vni, subnet=str(network.subnet),
        gateway=str(network.gateway), spec=pb.NetworkSpec(name="ingress", ingress=True)))
    ports = [pb.PortConfig(published_port=port, target_port=TARGET,
                           publish_mode=pb.PortConfig.INGRESS),
             pb.PortConfig(published_port=port, target_port=TARGET, protocol=pb.PortConfig.UDP,
                           publish_mode=pb.PortConfig.INGRESS)]
    if proxied:
        ports.append(pb.PortConfig(published_port=proxied, target_port=WHO_PORT,
                                   publish_mode=pb.PortConfig.INGRESS,
                                   proxy_protocol=pb.PortConfig.PROXY_V2))
    entry.services.add(id=SERVICE, name="web", ports=ports)
    return entry


def peer(task: Task, ready: bool = True, service_id: str = SERVICE) -> dpb.OverlayPeer:
    return dpb.OverlayPeer(task_id=task.netns, address=str(task.address), vtep=str(task.host.ip),
                           mac=mac_for_ip(str(task.address)), service_id=service_id, ready=ready)


def links(netns: str) -> list[str]:
    with ipr_in(netns) as ipr:
        return sorted(str(m.get("ifname")) for m in ipr.get_links()
                      if str(m.get("ifname")).startswith((mesh.MESH_PREFIX, mesh.HOST_PREFIX)))


def tcp_proxy(ports: PublishedPorts, port: int) -> proxy.PortProxy:
    carrier = ports._proxies[(pb.PortConfig.TCP, port)]
    assert isinstance(carrier, proxy.PortProxy)
    return carrier


async def assert_nothing_left(ports: PublishedPorts) -> None:
    """Agent stop: no table, no chain, no mesh link of ours in the node's namespace."""
    assert ports.netns is not None
    assert await mesh.listing(ports.netns, ports.table) == ""
    listed = await asyncio.to_thread(
        subprocess.run, ["nsenter", f"--net={netns_path(ports.netns)}", "nft", "list",
                         "ruleset"], capture_output=True, check=True)
    assert ports.table.encode() not in listed.stdout, listed.stdout
    assert ports.mesh_link not in await asyncio.to_thread(links, ports.netns)


async def test_ingress_port_reaches_ready_tasks_on_other_hosts_over_the_overlay(
        hosts3: Hosts) -> None:
    managers = [manager(hosts3, host) for host in hosts3]
    for mgr in managers:
        await mgr.ensure_network(NET)
    # Tasks on hosts 2 and 3; host 1 has none but serves the port.
    t2, t3 = await new_task(hosts3, hosts3[1], 2), await new_task(hosts3, hosts3[2], 3)
    for mgr, task in ((managers[1], t2), (managers[2], t3)):
        await mgr.attach(task.path, NET, task.address, default_route=True)
        await start_named_echo(hosts3, task.netns, task.netns)
    node1 = "10.20.0.2/24"  # host 1's own ingress address
    sandbox_peer = dpb.OverlayPeer(task_id="node:h1", address=node1, vtep=str(hosts3[0].ip),
                                   mac=mac_for_ip(node1))
    all_peers = [peer(t2), peer(t3), sandbox_peer]
    for mgr in managers:  # what every agent's worker does with these peers
        await mgr.set_peers(NET, [t2.peer(), t3.peer(), Peer.create("10.20.0.2", str(hosts3[0].ip))])
    port, proxied = free_port(), free_port()
    node, client, there = hosts3[0].netns, hosts3[1].netns, str(hosts3[0].ip)
    ports = PublishedPorts(managers[0], managers[0].settings.sandbox_name("ingress"),
                           netns=node)
    run = asyncio.create_task(ports.run())
    try:
        await ports.set_ingress(ingress_entry(NET, node1, port, all_peers, proxied), all_peers)
        await ports.reconcile()
        assert ports.listening() == sorted([(pb.PortConfig.TCP, port),
                                            (pb.PortConfig.TCP, proxied),
                                            (pb.PortConfig.UDP, port)])
        assert ports.in_kernel((pb.PortConfig.TCP, port))
        assert not ports.in_kernel((pb.PortConfig.TCP, proxied))
        # The sandbox is a namespace under the overlay prefix, not a network.
        assert netns_path(ports.sandbox).exists()
        assert managers[0].networks() == [NET.network_id]
        assert f"dport {port} dnat to" in await mesh.listing(node, ports.table)

        payload = bytes(range(256)) * 400  # 100 KiB: many frames over the VXLAN
        seen: Counter[str] = Counter()
        for _ in range(24):  # from another host, through the kernel
            name, echoed = await asyncio.to_thread(exchange, client, there, port, payload)
            assert echoed == payload
            seen[name] += 1
        assert set(seen) == {t2.netns, t3.netns}, seen  # random choice reaches both
        assert tcp_proxy(ports, port).accepted == 0  # no byte in userspace
        # From the node itself: to its own address (the kernel), to loopback (the proxy).
        for address in (there, LOOPBACK):
            name, echoed = await asyncio.to_thread(exchange, node, address, port, payload)
            assert (name in (t2.netns, t3.netns), echoed) == (True, payload)
        assert tcp_proxy(ports, port).accepted == 1
        # UDP: each client address a flow to a random task, over the same overlay.
        seen.clear()
        for _ in range(24):
            name, echoed = await asyncio.to_thread(datagram, client, there, port, b"q" * 1200)
            assert echoed == b"q" * 1200
            seen[name] += 1
        assert set(seen) == {t2.netns, t3.netns}, seen
        # With proxy-protocol v2 the task is told the remote client's address
        # (the connection itself comes from this node's ingress address).
        line, mine = await asyncio.to_thread(who, client, there, proxied)
        assert line == f"proxy {mine[0]}:{mine[1]}", line
        assert mine[0] == str(hosts3[1].ip)

        # A task that is not ready gets no connections, in one transaction.
        ready_only = [peer(t2), peer(t3, ready=False), sandbox_peer]
        await ports.set_ingress(ingress_entry(NET, node1, port, ready_only, proxied), ready_only)
        for _ in range(8):
            assert (await asyncio.to_thread(exchange, client, there, port, b"x"))[0] == t2.netns
        # None ready: refused at once (the sandbox has no rule for the port).
        none_ready = [peer(t2, ready=False), peer(t3, ready=False), sandbox_peer]
        await ports.set_ingress(ingress_entry(NET, node1, port, none_ready), none_ready)
        assert await asyncio.to_thread(refused, client, there, port)
        await ports.set_ingress(ingress_entry(NET, node1, port, ready_only), ready_only)

        # Unpublished: the listener goes, and so does a connection it carried;
        # new connections are refused on every path.
        held = await asyncio.to_thread(connect, node, LOOPBACK, port)
        with held:
            assert (await asyncio.to_thread(held.recv, 100)).startswith(t2.netns.encode())
            empty = ingress_entry(NET, node1, port, ready_only)
            del empty.services[:]
            await ports.set_ingress(empty, ready_only)
            await ports.reconcile()
            assert ports.listening() == []
            with contextlib.suppress(ConnectionResetError):  # closed either way
                assert await asyncio.to_thread(held.recv, 100) == b""
        for netns, address in ((client, there), (node, LOOPBACK)):
            assert await asyncio.to_thread(refused, netns, address, port)
        assert await mesh.listing(node, ports.table) == ""  # no port: no table

        # The ingress network goes: so does the sandbox (and its link).
        await managers[0].remove_network(NET.network_id)
        await ports.ingress_removed(NET.network_id)
        assert not netns_path(ports.sandbox).exists()
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await ports.close()
    await assert_nothing_left(ports)


async def test_a_node_not_known_live_sends_connections_to_its_own_tasks_only(
        hosts3: Hosts) -> None:
    """The routing mesh of a node whose agent died (or lost the controllers):
    while heartbeats are answered the sandbox picks any ready task; the
    beats stop, and within mesh.LIVE_PERIODS periods it picks only the
    tasks on its own node (the others' hosts forget this node once it is
    marked DOWN, so theirs could not answer), without any agent acting; the
    next beat brings the others back. Nothing is refused meanwhile, nor
    while the agent is stopped and the next one starts."""
    managers = [manager(hosts3, host) for host in hosts3]
    for mgr in managers:
        await mgr.ensure_network(NET)
    t1, t2 = await new_task(hosts3, hosts3[0], 2), await new_task(hosts3, hosts3[1], 3)
    for mgr, task in ((managers[0], t1), (managers[1], t2)):
        await mgr.attach(task.path, NET, task.address, default_route=True)
        await start_named_echo(hosts3, task.netns, task.netns)
    node1 = "10.20.0.4/24"
    sandbox_peer = dpb.OverlayPeer(task_id="node:h1", address=node1, vtep=str(hosts3[0].ip),
                                   mac=mac_for_ip(node1))
    all_peers = [peer(t1), peer(t2), sandbox_peer]
    for mgr in managers:
        await mgr.set_peers(NET, [t1.peer(), t2.peer(),
                                  Peer.create("10.20.0.4", str(hosts3[0].ip))])
    port = free_port()
    node, client, there = hosts3[0].netns, hosts3[2].netns, str(hosts3[0].ip)
    ports = PublishedPorts(managers[0], managers[0].settings.sandbox_name("ingress"),
                           netns=node, local_vtep=str(hosts3[0].ip))
    period = 0.4  # live for 1 s after a beat
    loops = [asyncio.create_task(ports.run()), asyncio.create_task(ports.keep_live())]

    async def answering(rounds: int = 24) -> set[str]:
        seen = set()
        for _ in range(rounds):
            name, echoed = await asyncio.to_thread(exchange, client, there, port, b"ping")
            assert echoed == b"ping"
            seen.add(name)
        return seen

    try:
        ports.beat(period)
        await ports.set_ingress(ingress_entry(NET, node1, port, all_peers), all_peers)
        await ports.reconcile()
        assert await answering() == {t1.netns, t2.netns}
        await asyncio.sleep(mesh.LIVE_PERIODS * period + 0.2)  # no beat: liveness lapses
        assert await answering() == {t1.netns}
        ports.beat(period)
        await asyncio.sleep(0.3)  # keep_live renews the set
        assert await answering() == {t1.netns, t2.netns}
        # A task only elsewhere stays chosen whatever the liveness (nothing
        # better is left); the rule has no guard.
        elsewhere = [peer(t1, ready=False), peer(t2), sandbox_peer]
        await ports.set_ingress(ingress_entry(NET, node1, port, elsewhere), elsewhere)
        await asyncio.sleep(mesh.LIVE_PERIODS * period + 0.2)
        assert await answering(8) == {t2.netns}
        # The agent stops (an upgrade): the kernel serves on. The next agent
        # leaves the tables as they are until it knows its assignment.
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await ports.close(keep_kernel=True)
        assert await answering(4) == {t2.netns}
        ports = PublishedPorts(managers[0], managers[0].settings.sandbox_name("ingress"),
                               netns=node, local_vtep=str(hosts3[0].ip))
        loops = [asyncio.create_task(ports.run()), asyncio.create_task(ports.keep_live())]
        await asyncio.sleep(0.3)
        assert f"dport {port} dnat to" in await mesh.listing(node, ports.table)
        assert await answering(4) == {t2.netns}
        await ports.set_ingress(ingress_entry(NET, node1, port, all_peers), all_peers)
        ports.set_host_routes({})
        ports.beat(period)
        await asyncio.sleep(0.3)
        assert await answering() == {t1.netns, t2.netns}
    finally:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await ports.close()
    await assert_nothing_left(ports)


async def test_host_mode_port_reaches_the_task_with_the_clients_address(
        hosts2: Hosts, monkeypatch: pytest.MonkeyPatch) -> None:
    """mode=host: the kernel sends the port straight into the task's
    namespace, no source NAT: the task sees the remote client's own address
    and port. The loopback listener of the node is the userspace proxy's: a
    port in use there is reported and retried, not fatal."""
    monkeypatch.setattr(proxy, "UDP_IDLE", 0.4)  # UDP flows end after this without traffic
    node, client, there = hosts2[0].netns, hosts2[1].netns, str(hosts2[0].ip)
    # A task with no network: only its loopback and, now, its host link.
    task_ns = hosts2.name("task-host-mode")
    await asyncio.to_thread(ensure_netns_blocking, task_ns)
    await start_named_echo(hosts2, task_ns, "task-a")
    port, who_port = free_port(), free_port()
    blocker = await asyncio.to_thread(socket_in, node)
    blocker.bind((LOOPBACK, port))
    blocker.listen(1)
    ports = PublishedPorts(None, hosts2.name("unused"), netns=node, retry_interval=0.2)
    backend = Backend(str(netns_path(task_ns)), LOOPBACK, TARGET)
    who_backend = Backend(str(netns_path(task_ns)), LOOPBACK, WHO_PORT)
    sctp_port = free_port()
    ports.set_host_routes({(pb.PortConfig.TCP, port): Route(target_port=TARGET,
                                                            backends=(backend,)),
                           (pb.PortConfig.UDP, port): Route(target_port=TARGET,
                                                            backends=(backend,)),
                           (pb.PortConfig.TCP, who_port): Route(target_port=WHO_PORT,
                                                                backends=(who_backend,)),
                           (pb.PortConfig.SCTP, sctp_port): Route(backends=(backend,))})
    run = asyncio.create_task(ports.run())
    try:
        await ports.reconcile()
        # Something else has the loopback port: reported, not fatal; the kernel serves.
        assert ports.listening() == [(pb.PortConfig.TCP, who_port), (pb.PortConfig.UDP, port)]
        assert len([n for n in await asyncio.to_thread(links, node)
                    if n.startswith(mesh.HOST_PREFIX)]) == 1
        assert "Address already in use" in ports.failures[(pb.PortConfig.TCP, port)]
        assert ports.failures[(pb.PortConfig.SCTP, sctp_port)] == \
            "only TCP and UDP ports are published by this agent"
        name, echoed = await asyncio.to_thread(exchange, client, there, port, b"hello" * 1000)
        assert (name, echoed) == ("task-a", b"hello" * 1000)
        # The client's own address and port reach the task.
        line, mine = await asyncio.to_thread(who, client, there, who_port)
        assert mine[0] == str(hosts2[1].ip)
        assert line == f"peer {mine[0]}:{mine[1]}", line
        # The task cannot use its host link to reach the node's own services.
        (link,) = ports._host_links.values()
        node_service = await asyncio.to_thread(socket_in, node)
        with node_service:
            node_service.bind(("0.0.0.0", 0))
            node_service.listen(1)
            with pytest.raises(TimeoutError):  # dropped, not refused
                await asyncio.to_thread(connect, str(netns_path(task_ns)), str(link.ip - 1),
                                        node_service.getsockname()[1], 1.0)
        # Host-mode UDP is the userspace proxy's (PublishedPorts.in_kernel says why).
        assert await asyncio.to_thread(datagram, client, there, port, b"dgram") == \
            ("task-a", b"dgram")
        blocker.close()
        for _ in range(50):  # retried by the loop
            if (pb.PortConfig.TCP, port) in ports.listening():
                break
            await asyncio.sleep(0.1)
        assert (pb.PortConfig.TCP, port) not in ports.failures
        # From the node's loopback: the userspace proxy, into the task's namespace.
        name, echoed = await asyncio.to_thread(exchange, node, LOOPBACK, port, b"hi" * 1000)
        assert (name, echoed) == ("task-a", b"hi" * 1000)
        assert await asyncio.to_thread(datagram, node, LOOPBACK, port, b"dgram") == \
            ("task-a", b"dgram")
        udp = ports._proxies[(pb.PortConfig.UDP, port)]
        # A flow per client address: the loopback one's (the remote one's may
        # have idled out already).
        assert udp.connections in (1, 2)
        for _ in range(30):
            if not udp.connections:
                break
            await asyncio.sleep(0.1)
        assert udp.connections == 0  # closed once idle
        # The task stops: its port goes from the kernel and the listener.
        ports.set_host_routes({})
        await ports.reconcile()
        assert ports.listening() == []
        assert ports.failures == {}
        assert await asyncio.to_thread(refused, client, there, port)
        assert await mesh.listing(node, ports.table) == ""
    finally:
        blocker.close()
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await ports.close()
    await assert_nothing_left(ports)


# ---------------------------------------------------------------- connecting to a backend

SELF_NETNS = "/proc/self/ns/net"  # the test's own namespace: loopback backends


def loopback_server(name: bytes) -> socket.socket:
    """Answers each connection with its name, then closes (in a thread)."""
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with connection:
                connection.sendall(name)

    threading.Thread(target=serve, daemon=True).start()
    return server


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fetch_name(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        received = b""
        while chunk := sock.recv(100):
            received += chunk
        return received


def answer_or_nothing(port: int) -> bytes:
    """What comes back; nothing when the proxy closed or reset the connection
    (seen as a reset, or as EPIPE from connect() on a loaded machine)."""
    try:
        return fetch_name(port)
    except (ConnectionResetError, BrokenPipeError):
        return b""


async def test_a_backend_that_cannot_be_reached_costs_no_connection() -> None:
    """A backend that died between two updates (its port refuses) is left
    for another ready one; when every ready backend refuses, the set is
    asked again after a pause (its replacement arrives): no client sees a
    failure. Only when nothing answers within the deadline is it refused."""
    good = loopback_server(b"good")
    dead = Backend(SELF_NETNS, "127.0.0.1", unused_port())
    alive_backend = Backend(SELF_NETNS, "127.0.0.1", good.getsockname()[1])
    backends = [dead, alive_backend]
    port = free_port()
    carrier = proxy.PortProxy(port, lambda: backends, host="127.0.0.1")
    await carrier.start()
    try:
        for _ in range(20):
            assert await asyncio.to_thread(fetch_name, port) == b"good"
        assert carrier.refused == 0
        # Only the dead one is ready; its replacement becomes ready 0.3 s later.
        backends[:] = [dead]
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, backends.append, alive_backend)
        assert await asyncio.to_thread(fetch_name, port) == b"good"
        assert carrier.refused == 0
        # Nothing ever answers: refused (a reset) within the deadline.
        backends[:] = [dead]
        began = loop.time()
        assert await asyncio.to_thread(answer_or_nothing, port) == b""
        assert loop.time() - began < proxy.CONNECT_DEADLINE + 2
        assert carrier.refused == 1
    finally:
        await carrier.close()
        good.close()


async def test_a_connection_in_flight_outlives_its_backend_leaving_the_set() -> None:
    """Drain before stop takes a task out of the routing mesh before its stop
    signal; a connection it already carries goes on (until the process
    ends: within its stop grace period), only new ones go elsewhere."""
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)

    def echo() -> None:
        try:
            connection, _ = server.accept()
        except OSError:
            return
        with connection:
            while data := connection.recv(100):
                connection.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    backends = [Backend(SELF_NETNS, "127.0.0.1", server.getsockname()[1])]
    port = free_port()
    carrier = proxy.PortProxy(port, lambda: backends, host="127.0.0.1")
    await carrier.start()

    def talk(sock: socket.socket, word: bytes) -> bytes:
        sock.sendall(word)
        return sock.recv(100)

    try:
        client = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", port), 10)
        with client:
            assert await asyncio.to_thread(talk, client, b"before") == b"before"
            backends.clear()  # the task left every node's set: drained
            assert await asyncio.to_thread(talk, client, b"after") == b"after"
            assert carrier.connections == 1
        # A new connection finds no backend.
        assert await asyncio.to_thread(answer_or_nothing, port) == b""
    finally:
        await carrier.close()
        server.close()


async def test_the_userspace_proxy_caps_connections_and_closes_idle_ones() -> None:
    """Where the proxy stays, a remote client cannot hold the agent's file
    descriptors: past max_connections a connection is closed at once, and a
    connection that moved nothing for idle_timeout is reset; a busy one stays."""
    import threading

    server = socket.socket()
    server.bind((LOOPBACK, 0))
    server.listen(16)
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            held.append(connection)
            threading.Thread(target=echo, args=(connection,), daemon=True).start()

    def echo(connection: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := connection.recv(100):
                connection.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    backends = [Backend(SELF_NETNS, LOOPBACK, server.getsockname()[1])]
    port = free_port()
    carrier = proxy.PortProxy(port, lambda: backends, host=LOOPBACK, max_connections=2,
                              idle_timeout=0.6)
    await carrier.start()

    def talk(sock: socket.socket, word: bytes) -> bytes:
        sock.sendall(word)
        return sock.recv(100)

    def ended(sock: socket.socket) -> bool:
        try:
            return sock.recv(100) == b""
        except ConnectionResetError:
            return True

    try:
        idle = await asyncio.to_thread(socket.create_connection, (LOOPBACK, port), 10)
        busy = await asyncio.to_thread(socket.create_connection, (LOOPBACK, port), 10)
        with idle, busy:
            for sock in (idle, busy):
                assert await asyncio.to_thread(talk, sock, b"hi") == b"hi"
            assert carrier.connections == 2
            # Over the cap: closed at once (seen as EOF, a reset, or EPIPE from
            # connect() on a loaded machine).
            assert await asyncio.to_thread(answer_or_nothing, port) == b""
            assert carrier.over_limit == 1
            for _ in range(12):  # the busy one keeps talking, the idle one goes quiet
                assert await asyncio.to_thread(talk, busy, b"x") == b"x"
                await asyncio.sleep(0.1)
            idle.settimeout(5)
            assert await asyncio.to_thread(ended, idle)
            assert carrier.idle_closed == 1
            assert carrier.connections == 1
            assert await asyncio.to_thread(talk, busy, b"still") == b"still"
    finally:
        await carrier.close()
        server.close()
        for connection in held:
            connection.close()


async def test_purge_removes_what_a_killed_agent_left_in_the_kernel(hosts2: Hosts) -> None:
    """An agent killed without its stop leaves its table (forwarding goes on,
    as Docker's ingress outlives dockerd); `swarm-agent purge` runs
    remove_kernel_state, which leaves no table and no mesh link."""
    node = hosts2[0].netns
    task_ns = hosts2.name("task-purged")
    await asyncio.to_thread(ensure_netns_blocking, task_ns)
    sandbox = hosts2.name("purged")
    ports = PublishedPorts(None, sandbox, netns=node)
    backend = Backend(str(netns_path(task_ns)), LOOPBACK, TARGET)
    ports.set_host_routes({(pb.PortConfig.TCP, free_port()): Route(target_port=TARGET,
                                                                   backends=(backend,))})
    await ports.reconcile()
    assert "dnat to" in await mesh.listing(node, ports.table)
    # The mesh link as an agent with an ingress sandbox has it.
    await asyncio.to_thread(ensure_netns_blocking, sandbox)
    await asyncio.to_thread(mesh.ensure_link_blocking, node, str(netns_path(sandbox)),
                            ports.mesh_link, mesh.SANDBOX_IFNAME,
                            mesh.link_pair(sandbox, mesh.MESH_POOL), policy=False)
    assert ports.mesh_link in await asyncio.to_thread(links, node)
    for proxy_ in list(ports._proxies.values()):  # the process died: its sockets went
        await proxy_.close()
    await remove_kernel_state(node, sandbox)
    await assert_nothing_left(ports)
    await remove_kernel_state(node, sandbox)  # again: nothing to do, no error
