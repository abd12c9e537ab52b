"""A userspace TCP proxy for published ports: listen on a port in the
agent's (the host's) namespace, and carry each accepted connection to a
backend, the upstream socket made INSIDE another namespace (the ingress
sandbox, or a task's own), so the backend sees a connection from that
namespace and its replies go back the way they came.

This is what docker's userland proxy is, not what its routing mesh is (IPVS
in the kernel, which this kernel lacks): every byte crosses the agent
process twice. Bounded: each direction reads at most CHUNK bytes and waits
for the other side to take them (drain) before reading more, so a slow
reader slows its writer instead of filling memory. A half-close (EOF one
way) is passed on with write_eof, the other direction keeps flowing; a
reset on either side aborts both. Closing the proxy (the port no longer
published) closes every connection it carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.runtime.netns import socket_in

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
CONNECT_TIMEOUT = 3.0
CONNECT_TRIES = 3  # backends tried per connection before giving up on it


@dataclass(frozen=True, slots=True)
class Backend:
    """Where a connection goes: address and port as seen from `netns` (a
    path, or a name under /run/netns), where the upstream socket is made."""

    netns: str
    address: str
    port: int


def pick(backends: Sequence[Backend], tries: int = CONNECT_TRIES) -> list[Backend]:
    """Up to `tries` distinct backends in random order (random choice per
    connection, as kube-proxy's statistic rules; the next ones if the first
    cannot be reached)."""
    return random.sample(list(backends), min(tries, len(backends)))


async def open_upstream(backend: Backend, timeout: float = CONNECT_TIMEOUT
                        ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to the backend from inside its namespace."""
    sock = await asyncio.to_thread(socket_in, backend.netns)
    try:
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(
            sock, (backend.address, backend.port)), timeout)
        return await asyncio.open_connection(sock=sock, limit=CHUNK)
    except BaseException:
        sock.close()
        raise


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy until EOF, then pass the EOF on (half-close); a reset or error
    aborts the sink, which ends the other direction too."""
    try:
        while data := await source.read(CHUNK):
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof() and not sink.is_closing():
            sink.write_eof()
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        sink.transport.abort()


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()


class PortProxy:
    """One published TCP port on this host: a listener on all addresses and
    the connections it carries. `backends()` is asked at each connection, so
    backends may change without touching the listener."""

    def __init__(self, port: int, backends: Callable[[], Sequence[Backend]], *,
                 host: str = "0.0.0.0", name: str = "") -> None:
        self.port = port
        self.host = host
        self.name = name or f"port {port}/tcp"
        self._backends = backends
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.accepted = 0
        self.refused = 0  # connections closed for want of a reachable backend

    async def start(self) -> None:
        """Listen; OSError (EADDRINUSE: something else has the port) when the
        port cannot be had, with nothing left open."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # A restarted agent rebinds at once despite connections in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(512)
            sock.setblocking(False)
            self._server = await asyncio.start_server(self._accepted, sock=sock, limit=CHUNK)
        except BaseException:
            sock.close()
            raise

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def close(self) -> None:
        """Stop listening and close every connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._carry(reader, writer),
                                                       name=f"{self.name}-connection")
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            upstream = await self._connect()
            if upstream is None:
                self.refused += 1
                writer.transport.abort()  # a reset tells the client at once
                return
            upstream_reader, upstream_writer = upstream
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        finally:
            _close(writer)
            if upstream_writer is not None:
                _close(upstream_writer)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        candidates = pick(self._backends())
        if not candidates:
            log.warning("%s: no backend ready; connection refused", self.name)
            return None
        for backend in candidates:
            try:
                return await open_upstream(backend)
            except (OSError, TimeoutError) as error:
                log.info("%s: backend %s:%d unreachable (%s)", self.name, backend.address,
                         backend.port, error or "timeout")
        log.warning("%s: no backend reachable (%d tried); connection refused", self.name,
                    len(candidates))
        return None


def in_use(error: OSError) -> bool:
    return error.errno == errno.EADDRINUSE
