"""A userspace proxy for published ports (TCP and UDP): listen on a port in the
agent's (the host's) namespace, and carry each accepted connection to a
backend, the upstream socket made INSIDE another namespace (the ingress
sandbox, or a task's own), so the backend sees a connection from that
namespace and its replies go back the way they came.

This is what docker's userland proxy is, not what its routing mesh is (in
the kernel: mesh.py); every byte crosses the agent process twice
(bench.published measures the cost), so agent.published uses it only where
the kernel path cannot serve (loopback clients, PROXY protocol headers, no
nft). Plain non-blocking
sockets on the event loop, not asyncio streams (a copy fewer each way).
Bounded: each direction has one CHUNK buffer and sends what it read before
reading more, so a slow reader slows its writer instead of filling memory.
A half-close (EOF one way) is passed on with shutdown(SHUT_WR), the other
direction keeps flowing; a reset on either side resets both. Closing the
proxy (the port no longer published) closes every connection it carries; a
backend leaving the set does not: its established connections go on until
they end (drain before stop gives them the task's stop grace period).

A connection whose chosen backend cannot be reached (refused, reset during
the handshake, unreachable, timed out) is carried to another ready backend
(see PortProxy._connect): nothing was relayed yet, so the client loses
nothing but a few milliseconds. Once bytes went upstream, a failure is passed
on to the client, never replayed elsewhere: the backend may have acted on
them (a POST), and only the client knows whether repeating is safe.

A listener carries at most MAX_CONNECTIONS connections (more are accepted
and closed at once, so the backlog drains and remote clients cannot take the
agent's file descriptors), and a connection that moved no byte either way
for IDLE_TIMEOUT seconds is closed (both sides reset), as conntrack forgets
an idle flow.

With proxy_protocol, each connection to the backend starts with a PROXY
protocol version 2 header (HAProxy's spec, moby/moby#25526) naming the
client's address and port and the address it connected to, so a task behind
the routing mesh still learns who its client is.

UDP has no connections: each client address is a flow with its own
upstream socket (made in the backend's namespace, connected to one backend
chosen at random), kept while datagrams pass and closed after UDP_IDLE
seconds without any, as conntrack does; replies go back to the client from
the published port. At most UDP_FLOWS flows and UDP_QUEUE datagrams waiting
for a new flow's socket: beyond that datagrams are dropped, as UDP may.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from swarm.host.netns import run_in_netns_blocking, socket_in

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
CONNECT_TIMEOUT = 3.0  # one attempt to reach a backend
CONNECT_DEADLINE = 5.0  # every attempt for one connection
CONNECT_ATTEMPTS = 8
RETRY_PAUSE = 0.1  # before asking again when every ready backend failed
CONNECT_TRIES = 3  # UDP: backends tried per flow
MAX_CONNECTIONS = 4096  # per TCP listener
IDLE_TIMEOUT = 900.0  # seconds without a byte either way
UDP_IDLE = 60.0
UDP_FLOWS = 4096
UDP_QUEUE = 64


@dataclass(frozen=True, slots=True)
class Backend:
    """Where a connection goes: address and port as seen from `netns` (a
    path, or a name under /run/netns), where the upstream socket is made."""

    netns: str
    address: str
    port: int


def proxy_v2_header(client: tuple[str, int], local: tuple[str, int],
                    stream: bool = True) -> bytes:
    """The PROXY protocol v2 header of an IPv4 connection from `client` to
    `local` (the address the client connected to): signature, version 2 and
    command PROXY, AF_INET over STREAM (or DGRAM), 12 address bytes."""
    addresses = (socket.inet_aton(client[0]) + socket.inet_aton(local[0])
                 + struct.pack("!HH", client[1], local[1]))
    return (PROXY_V2_SIGNATURE + bytes([0x21, 0x11 if stream else 0x12])
            + struct.pack("!H", len(addresses)) + addresses)


def parse_proxy_v2(data: bytes) -> tuple[tuple[str, int], tuple[str, int], int]:
    """(client, local, header length) of a PROXY v2 IPv4 header at the start
    of `data` (ValueError otherwise): what a task behind the mesh reads."""
    if len(data) < 16 or not data.startswith(PROXY_V2_SIGNATURE) or data[12] != 0x21:
        raise ValueError("not a PROXY protocol v2 header")
    length = struct.unpack("!H", data[14:16])[0]
    if data[13] >> 4 != 1 or length < 12 or len(data) < 16 + length:
        raise ValueError("not an IPv4 PROXY protocol v2 header")
    source, destination = socket.inet_ntoa(data[16:20]), socket.inet_ntoa(data[20:24])
    source_port, destination_port = struct.unpack("!HH", data[24:28])
    return (source, source_port), (destination, destination_port), 16 + length


def pick(backends: Sequence[Backend], tries: int = CONNECT_TRIES) -> list[Backend]:
    """Up to `tries` distinct backends in random order (random choice per
    connection, as kube-proxy's statistic rules; the next ones if the first
    cannot be reached)."""
    return random.sample(list(backends), min(tries, len(backends)))


async def open_upstream(backend: Backend, timeout: float = CONNECT_TIMEOUT) -> socket.socket:
    """A connected, non-blocking TCP socket to the backend, made inside its namespace."""
    sock = await asyncio.to_thread(socket_in, backend.netns)
    try:
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(
            sock, (backend.address, backend.port)), timeout)
        return sock
    except BaseException:
        sock.close()
        raise


class _Activity:
    """When a connection last moved a byte (either way)."""

    __slots__ = ("last",)

    def __init__(self, now: float) -> None:
        self.last = now


async def _relay(source: socket.socket, sink: socket.socket,
                 activity: _Activity | None = None) -> None:
    """Copy until EOF, then pass the EOF on (half-close: the other direction
    keeps flowing). One buffer, reused: what is read is sent before more is
    read, so a slow reader slows its writer. A reset or error resets both
    sockets, which ends the other direction too."""
    loop = asyncio.get_running_loop()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    try:
        while count := await loop.sock_recv_into(source, buffer):
            if activity is not None:
                activity.last = loop.time()
            await loop.sock_sendall(sink, view[:count])
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        for sock in (source, sink):
            _reset(sock)


def _reset(sock: socket.socket) -> None:
    """Make the peer see a reset (not a clean close) and end our side."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class PortProxy:
    """One published TCP port on this host: a listener on all addresses and
    the connections it carries. `backends()` is asked at each connection, so
    backends may change without touching the listener."""

    def __init__(self, port: int, backends: Callable[[], Sequence[Backend]], *,
                 host: str = "0.0.0.0", name: str = "", netns: str | None = None,
                 proxy_protocol: bool = False, max_connections: int | None = None,
                 idle_timeout: float | None = None) -> None:
        self.port = port
        self.host = host
        self.name = name or f"port {port}/tcp"
        self.netns = netns  # where the listener is (None: this process's namespace)
        self.proxy_protocol = proxy_protocol
        self.max_connections = MAX_CONNECTIONS if max_connections is None else max_connections
        self.idle_timeout = IDLE_TIMEOUT if idle_timeout is None else idle_timeout
        self._backends = backends
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._sweeping: asyncio.Task[None] | None = None
        self._connections: dict[asyncio.Task[None], _Activity] = {}
        self.accepted = 0
        self.refused = 0  # connections reset for want of a reachable backend
        self.over_limit = 0  # connections closed at once: MAX_CONNECTIONS reached
        self.idle_closed = 0

    async def start(self) -> None:
        """Listen; OSError (EADDRINUSE: something else has the port) when the
        port cannot be had, with nothing left open."""
        sock = (socket.socket(socket.AF_INET, socket.SOCK_STREAM) if self.netns is None
                else await asyncio.to_thread(socket_in, self.netns))
        try:
            # A restarted agent rebinds at once despite connections in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(512)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._listener = sock
        loop = asyncio.get_running_loop()
        self._accepting = loop.create_task(self._accept(sock), name=f"{self.name}-accept")
        self._sweeping = loop.create_task(self._sweep(), name=f"{self.name}-idle")

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def close(self) -> None:
        """Stop listening and close every connection."""
        tasks = [t for t in (self._accepting, self._sweeping, *self._connections)
                 if t is not None]
        self._accepting = self._sweeping = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, _ = await loop.sock_accept(listener)
            except OSError as error:  # EMFILE and the like: keep the port, pause
                log.warning("%s: accept failed: %s", self.name, error)
                await asyncio.sleep(0.1)
                continue
            if len(self._connections) >= self.max_connections:
                self.over_limit += 1
                _reset(client)
                client.close()
                continue
            client.setblocking(False)
            activity = _Activity(loop.time())
            task = loop.create_task(self._carry(client, activity),
                                    name=f"{self.name}-connection")
            self._connections[task] = activity
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._connections.pop(task, None)

    async def _sweep(self) -> None:
        """Close the connections idle for idle_timeout."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(self.idle_timeout / 4, 30.0))
            deadline = loop.time() - self.idle_timeout
            for task, activity in list(self._connections.items()):
                if activity.last < deadline:
                    self.idle_closed += 1
                    task.cancel()

    async def _carry(self, client: socket.socket, activity: _Activity) -> None:
        self.accepted += 1
        upstream: socket.socket | None = None
        try:
            upstream = await self._connect()
            if upstream is None:
                self.refused += 1
                _reset(client)  # the client learns at once
                return
            if self.proxy_protocol:
                await asyncio.get_running_loop().sock_sendall(upstream, proxy_v2_header(
                    client.getpeername(), client.getsockname()))
            await asyncio.gather(_relay(client, upstream, activity),
                                 _relay(upstream, client, activity))
        except asyncio.CancelledError:
            _reset(client)  # idle, or the port closed: both sides see a reset
            if upstream is not None:
                _reset(upstream)
            raise
        finally:
            client.close()
            if upstream is not None:
                upstream.close()

    async def _connect(self) -> socket.socket | None:
        """An upstream socket to a ready backend, or None. A backend that
        cannot be reached (refused, reset, unreachable, timed out: nothing
        was relayed yet, so nothing is lost) is left for another ready one;
        when every ready backend failed, the set is asked again after a
        pause (a task that died is on its way out of it, its replacement on
        its way in), all within CONNECT_DEADLINE."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONNECT_DEADLINE
        failed: set[Backend] = set()
        attempts = 0
        while attempts < CONNECT_ATTEMPTS:
            ready = list(self._backends())
            if not ready:
                if not attempts:
                    log.warning("%s: no backend ready; connection refused", self.name)
                    return None
                break
            fresh = [backend for backend in ready if backend not in failed]
            if not fresh:
                if deadline - loop.time() <= RETRY_PAUSE:
                    break
                await asyncio.sleep(RETRY_PAUSE)
                failed.clear()
                continue
            backend = random.choice(fresh)
            attempts += 1
            try:
                return await open_upstream(
                    backend, max(0.05, min(CONNECT_TIMEOUT, deadline - loop.time())))
            except (OSError, TimeoutError) as error:
                failed.add(backend)
                log.info("%s: backend %s:%d unreachable (%s)", self.name, backend.address,
                         backend.port, error or "timeout")
        log.warning("%s: no backend reachable (%d tries); connection refused", self.name,
                    attempts)
        return None


def _listening_udp(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _Datagrams(asyncio.DatagramProtocol):
    """Hands each datagram to a callback (the listener's and each flow's)."""

    def __init__(self, received: Callable[[bytes, tuple[str, int]], None]) -> None:
        self._received = received

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._received(data, addr)


@dataclass
class _Flow:
    client: tuple[str, int]
    last: float
    pending: list[bytes]
    transport: asyncio.DatagramTransport | None = None
    opening: asyncio.Task[None] | None = None


class UdpPortProxy:
    """One published UDP port on this host: flows per client address (see
    the module's notes). Same interface as PortProxy."""

    def __init__(self, port: int, backends: Callable[[], Sequence[Backend]], *,
                 host: str = "0.0.0.0", name: str = "", netns: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.port = port
        self.host = host
        self.netns = netns
        self.name = name or f"port {port}/udp"
        self._backends = backends
        self._clock = clock
        self._listener: asyncio.DatagramTransport | None = None
        self._flows: dict[tuple[str, int], _Flow] = {}
        self._sweeping: asyncio.Task[None] | None = None
        self.dropped = 0

    async def start(self) -> None:
        """Bind; OSError (EADDRINUSE) when the port cannot be had."""
        loop = asyncio.get_running_loop()
        sock = (_listening_udp(self.host, self.port) if self.netns is None else
                await asyncio.to_thread(run_in_netns_blocking, self.netns,
                                        functools.partial(_listening_udp, self.host, self.port)))
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Datagrams(self._from_client), sock=sock)
        except BaseException:
            sock.close()
            raise
        self._listener = transport
        self._sweeping = loop.create_task(self._sweep(), name=f"{self.name}-sweep")

    @property
    def connections(self) -> int:
        return len(self._flows)

    async def close(self) -> None:
        tasks = [t for t in (self._sweeping, *(f.opening for f in self._flows.values()))
                 if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for flow in self._flows.values():
            if flow.transport is not None:
                flow.transport.close()
        self._flows.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _from_client(self, data: bytes, client: tuple[str, int]) -> None:
        flow = self._flows.get(client)
        if flow is None:
            if len(self._flows) >= UDP_FLOWS:
                self.dropped += 1
                return
            flow = self._flows[client] = _Flow(client, self._clock(), [])
            flow.opening = asyncio.get_running_loop().create_task(
                self._open(flow), name=f"{self.name}-flow")
        flow.last = self._clock()
        if flow.transport is not None:
            flow.transport.sendto(data)
        elif len(flow.pending) < UDP_QUEUE:
            flow.pending.append(data)
        else:
            self.dropped += 1

    async def _open(self, flow: _Flow) -> None:
        loop = asyncio.get_running_loop()
        for backend in pick(self._backends()):
            try:
                sock = await asyncio.to_thread(socket_in, backend.netns, socket.AF_INET,
                                               socket.SOCK_DGRAM)
            except OSError as error:
                log.info("%s: backend %s unreachable (%s)", self.name, backend.netns, error)
                continue
            try:
                sock.setblocking(False)
                sock.connect((backend.address, backend.port))
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Datagrams(functools.partial(self._to_client, flow)), sock=sock)
            except BaseException:
                sock.close()
                raise
            flow.transport = transport
            for data in flow.pending:
                transport.sendto(data)
            flow.pending.clear()
            return
        log.warning("%s: no backend ready; datagrams from %s:%d dropped", self.name,
                    *flow.client)
        self.dropped += len(flow.pending)
        self._flows.pop(flow.client, None)

    def _to_client(self, flow: _Flow, data: bytes, _source: tuple[str, int]) -> None:
        flow.last = self._clock()
        if self._listener is not None:
            self._listener.sendto(data, flow.client)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(UDP_IDLE / 4, 5.0))
            deadline = self._clock() - UDP_IDLE
            for client, flow in list(self._flows.items()):
                if flow.last < deadline and flow.transport is not None:
                    flow.transport.close()
                    del self._flows[client]
