"""The embedded DNS responder: what a container on overlay networks finds at
127.0.0.11:53 (its resolv.conf says `nameserver 127.0.0.11`, `options
ndots:0`, as under docker).

Per task, a UDP and a TCP socket are made INSIDE the task's network
namespace (swarm.host.netns.socket_in) and bound to 127.0.0.11 on its
loopback, which is up in every task namespace; the agent serves them all
from its own asyncio loop. The socket a query arrives on says which task
asks, so the answer is limited to that task's networks (directory.py: the
first of its networks that knows the name answers). As docker does, the
sockets take ephemeral ports and the task's nftables table (lb.py) sends
127.0.0.11:53 to them, so a container may run a DNS server of its own on
port 53 (a bind of 0.0.0.0:53 would otherwise fail).

    names of ours          A: the addresses; AAAA and other types: NOERROR,
                           no records (the name exists, IPv4 only)
    addresses of ours      PTR (in-addr.arpa): the task's name, a VIP's service
    ours, not shared       NXDOMAIN (never forwarded)
    anything else          forwarded to the upstream resolvers, from the
                           AGENT's namespace (so a loopback resolver of the
                           host, like systemd-resolved's 127.0.0.53, serves
                           containers too, as docker's resolver forwards
                           from the host); none configured: REFUSED; none
                           answering within the time budget: SERVFAIL

TTL 0 on our own answers: they change whenever a task comes, goes or
changes health, a query costs a round trip over the task's loopback (well
under a millisecond), and a caching client (nscd, a JVM, an nginx resolver)
must not keep sending to a task that is gone. (docker's 600 s is known to
keep dnsrr clients on removed tasks.)

A UDP answer that does not fit the client's buffer (512 bytes without EDNS)
carries as many addresses as fit, with the TC flag: clients that retry over
TCP get them all, those that cannot still get some. dnsrr and tasks.NAME
answers are shuffled on every query (round robin for clients that take the
first address).

Sockets are closed when the task stops (they would keep its namespace, and
with it its veths, alive). Forwarded queries are bounded: per upstream try
FORWARD_TRY_TIMEOUT, all tries within FORWARD_DEADLINE (below the 5 s a
glibc client waits before it retries), at most MAX_INFLIGHT at once per
task (more are dropped: the client retries).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import random
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import TYPE_CHECKING

from swarm.api.lazy import lazy_modules
from swarm.api.loops import cancel_all
from swarm.host.netns import socket_in

from .directory import Outcome, Resolution

if TYPE_CHECKING:
    import dns.asyncquery
    import dns.exception
    import dns.flags
    import dns.message
    import dns.name
    import dns.opcode
    import dns.rcode
    import dns.rdataclass
    import dns.rdatatype
    import dns.reversename
    import dns.rrset
else:
    # dnspython (about 4 MiB) is loaded when a task on an overlay network
    # first needs a resolver, not by every agent at start.
    dns = lazy_modules("dns", ["asyncquery", "exception", "flags", "message", "name", "opcode",
                               "rcode", "rdataclass", "rdatatype", "reversename", "rrset"])

log = logging.getLogger(__name__)

ADDRESS = "127.0.0.11"  # docker's: inside 127/8, so on every namespace's loopback
PORT = 53
TTL = 0
FORWARD_TRY_TIMEOUT = 2.0
FORWARD_DEADLINE = 4.0
MAX_INFLIGHT = 64
TCP_IDLE_TIMEOUT = 10.0
MAX_TCP_CONNECTIONS = 16
_UDP_MIN_PAYLOAD = 512


class DnsError(Exception):
    pass


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int = PORT

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, value: str) -> Upstream:
        """IP, IP:PORT, IPv6 or [IPv6]:PORT. Raises ValueError naming the problem."""
        text = value.strip()
        host, port = text, str(PORT)
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(f"expected IP[:PORT] or [IPv6]:PORT, got {value!r}")
            port = rest[1:] or str(PORT)
        elif text.count(":") == 1:
            host, _, port = text.partition(":")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"not an IP address: {host!r} (in {value!r})") from None
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad port {port!r} in {value!r}")
        return cls(str(address), int(port))


def upstreams_from_resolv_conf(text: str) -> list[Upstream]:
    """The nameservers of a resolv.conf, loopback ones included (forwarding
    happens in the agent's namespace, where they are reachable); at most 3,
    as the C library reads."""
    found: list[Upstream] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            with contextlib.suppress(ValueError):
                found.append(Upstream(str(ipaddress.ip_address(fields[1].split("%")[0]))))
    return found[:3]


# ---------------------------------------------------------------- pure answers


Reverse = Callable[[IPv4Address], tuple[Outcome, str]]


def local_answer(query: dns.message.Message, resolve: Callable[[str], Resolution],
                 reverse: Reverse | None = None) -> dns.message.Message | None:
    """The response to a query, or None when it is to be forwarded."""
    if query.opcode() != dns.opcode.QUERY:
        return _error(query, dns.rcode.NOTIMP)
    if len(query.question) != 1:
        return _error(query, dns.rcode.FORMERR)
    question = query.question[0]
    if question.rdclass != dns.rdataclass.IN:
        return None
    if reverse is not None and question.name.is_subdomain(_IN_ADDR_ARPA):
        return _reverse_answer(query, question, reverse)
    resolution = resolve(question.name.to_text())
    if resolution.outcome is Outcome.UNKNOWN:
        return None
    response = dns.message.make_response(query, recursion_available=True)
    response.flags |= dns.flags.AA
    if resolution.outcome is Outcome.HIDDEN:
        response.set_rcode(dns.rcode.NXDOMAIN)
        return response
    if question.rdtype in (dns.rdatatype.A, dns.rdatatype.ANY) and resolution.addresses:
        addresses = list(resolution.addresses)
        random.shuffle(addresses)
        response.answer.append(dns.rrset.from_text_list(
            question.name, TTL, dns.rdataclass.IN, dns.rdatatype.A,
            [str(address) for address in addresses]))
    return response


_IN_ADDR_ARPA = dns.name.from_text("in-addr.arpa.")


def _reverse_answer(query: dns.message.Message, question: dns.rrset.RRset,
                    reverse: Reverse) -> dns.message.Message | None:
    try:
        address = IPv4Address(dns.reversename.to_address(question.name))
    except (dns.exception.SyntaxError, ValueError):
        return None  # a partial name (a zone, not an address): not ours
    outcome, name = reverse(address)
    if outcome is Outcome.UNKNOWN:
        return None
    response = dns.message.make_response(query, recursion_available=True)
    response.flags |= dns.flags.AA
    if outcome is Outcome.HIDDEN:
        response.set_rcode(dns.rcode.NXDOMAIN)
    elif question.rdtype in (dns.rdatatype.PTR, dns.rdatatype.ANY):
        response.answer.append(dns.rrset.from_text(
            question.name, TTL, dns.rdataclass.IN, dns.rdatatype.PTR, name + "."))
    return response


def _error(query: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
    response = dns.message.make_response(query, recursion_available=True)
    response.set_rcode(rcode)
    return response


def error_for_wire(data: bytes, rcode: dns.rcode.Rcode) -> bytes | None:
    """A bare error response to a query that did not parse (None when not
    even its header did)."""
    if len(data) < 12:
        return None
    query_id, flags = struct.unpack("!HH", data[:4])
    if flags & dns.flags.QR:
        return None  # a response: never answer those (no loops)
    response = dns.message.Message(id=query_id)
    response.flags = dns.flags.QR | dns.flags.RA | (flags & dns.flags.RD)
    response.set_rcode(rcode)
    return response.to_wire()


def udp_payload(query: dns.message.Message) -> int:
    return max(_UDP_MIN_PAYLOAD, query.payload) if query.edns >= 0 else _UDP_MIN_PAYLOAD


def to_udp_wire(response: dns.message.Message, limit: int) -> bytes:
    """The response within `limit` bytes: records dropped until it fits, with
    TC set (see the module doc)."""
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        pass
    response.flags |= dns.flags.TC
    while response.answer:
        rrset = response.answer[-1]
        if len(rrset) <= 1:
            response.answer.pop()
        else:
            kept = list(rrset)[: len(rrset) // 2]
            response.answer[-1] = dns.rrset.from_rdata_list(rrset.name, rrset.ttl, kept)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            continue
    response.additional = []
    return response.to_wire(max_size=limit)


# ---------------------------------------------------------------- forwarding


class Forwarder:
    """Sends the queries we do not answer to the upstream resolvers, in
    order, from the agent's own namespace."""

    def __init__(self, upstreams: Sequence[Upstream], try_timeout: float = FORWARD_TRY_TIMEOUT,
                 deadline: float = FORWARD_DEADLINE) -> None:
        self.upstreams = tuple(upstreams)
        self.try_timeout = try_timeout
        self.deadline = deadline

    async def forward(self, query: dns.message.Message, tcp: bool) -> dns.message.Message:
        if not self.upstreams:
            return _error(query, dns.rcode.REFUSED)
        end = time.monotonic() + self.deadline
        for upstream in self.upstreams:
            budget = min(self.try_timeout, end - time.monotonic())
            if budget <= 0:
                break
            try:
                if tcp:
                    return await dns.asyncquery.tcp(query, upstream.host, budget, upstream.port)
                return await dns.asyncquery.udp(query, upstream.host, budget, upstream.port,
                                                ignore_unexpected=True)
            except (dns.exception.DNSException, OSError, EOFError) as error:
                log.debug("forwarding %s to %s: %s", query.question, upstream,
                          error or type(error).__name__)
        return _error(query, dns.rcode.SERVFAIL)


# ---------------------------------------------------------------- per-task servers


Resolver = Callable[[str, Sequence[str]], Resolution]
ReverseResolver = Callable[[IPv4Address, Sequence[str]], tuple[Outcome, str]]


class TaskDns:
    """The responder of one task: its two sockets, its networks, its
    in-flight queries."""

    def __init__(self, task_id: str, networks: Sequence[str], resolve: Resolver,
                 forwarder: Forwarder, reverse: ReverseResolver | None = None) -> None:
        self.task_id = task_id
        self.networks = tuple(networks)
        self._resolve = resolve
        self._reverse = reverse
        self._forwarder = forwarder
        self._transport: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._connections: set[asyncio.Task[None]] = set()
        self.udp_port = 0  # where it listens, once started (port 0: ephemeral)
        self.tcp_port = 0

    def _resolution(self, name: str) -> Resolution:
        return self._resolve(name, self.networks)

    def _reverse_of(self, address: IPv4Address) -> tuple[Outcome, str]:
        if self._reverse is None:
            return Outcome.UNKNOWN, ""
        return self._reverse(address, self.networks)

    async def start(self, netns: str | os.PathLike[str],
                    address: str = ADDRESS, port: int = PORT) -> None:
        udp, tcp = await asyncio.to_thread(_bound_sockets, netns, address, port)
        self.udp_port, self.tcp_port = udp.getsockname()[1], tcp.getsockname()[1]
        loop = asyncio.get_running_loop()
        try:
            self._transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), sock=udp)
            self._server = await asyncio.start_server(self._tcp_connection, sock=tcp)
        except BaseException:
            udp.close()
            tcp.close()
            await self.close()
            raise

    def close_now(self) -> None:
        """Close both sockets at once (synchronous: usable from a status
        callback); queries in flight are cancelled."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in [*self._inflight, *self._connections]:
            task.cancel()

    async def close(self) -> None:
        """close_now(), and wait until the queries in flight have ended."""
        pending = [*self._inflight, *self._connections]
        self.close_now()
        await cancel_all(pending)

    # ------------------------------------------------------------ UDP

    def datagram(self, data: bytes, client: tuple[str, int]) -> None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            reply = error_for_wire(data, dns.rcode.FORMERR)
            if reply is not None:
                self._send(reply, client)
            return
        if query.flags & dns.flags.QR:
            return
        response = local_answer(query, self._resolution, self._reverse_of)
        if response is not None:
            self._send(to_udp_wire(response, udp_payload(query)), client)
            return
        if len(self._inflight) >= MAX_INFLIGHT:
            log.debug("task %s: too many queries in flight; dropping one", self.task_id)
            return
        task = asyncio.create_task(self._forward_udp(query, client),
                                   name=f"dns-forward-{self.task_id}")
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _forward_udp(self, query: dns.message.Message, client: tuple[str, int]) -> None:
        response = await self._forwarder.forward(query, tcp=False)
        response.id = query.id
        self._send(to_udp_wire(response, udp_payload(query)), client)

    def _send(self, wire: bytes, client: tuple[str, int]) -> None:
        if self._transport is not None:
            self._transport.sendto(wire, client)

    # ------------------------------------------------------------ TCP

    async def _tcp_connection(self, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= MAX_TCP_CONNECTIONS:
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                header = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT)
                (length,) = struct.unpack("!H", header)
                data = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE_TIMEOUT)
                wire = await self._tcp_answer(data)
                if wire is None:
                    return
                writer.write(struct.pack("!H", len(wire)) + wire)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _tcp_answer(self, data: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return error_for_wire(data, dns.rcode.FORMERR)
        if query.flags & dns.flags.QR:
            return None
        response = local_answer(query, self._resolution, self._reverse_of)
        if response is None:
            response = await self._forwarder.forward(query, tcp=True)
            response.id = query.id
        return response.to_wire()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: TaskDns) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.server.datagram(data, addr)
        except Exception:  # one bad query must not end the endpoint
            log.exception("task %s: DNS query from %s", self.server.task_id, addr)


def _bound_sockets(netns: str | os.PathLike[str], address: str,
                   port: int) -> tuple[socket.socket, socket.socket]:
    """A UDP and a listening TCP socket on address:port inside the namespace."""
    udp: socket.socket | None = None
    tcp: socket.socket | None = None
    try:
        udp = socket_in(netns, socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket_in(netns, socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        udp.bind((address, port))
        tcp.bind((address, port))
        tcp.listen(64)
        udp.setblocking(False)
        tcp.setblocking(False)
    except OSError as error:
        for made in (udp, tcp):
            if made is not None:
                made.close()
        raise DnsError(f"DNS sockets on {address}:{port} in {os.fspath(netns)}: "
                       f"{error.strerror or error}") from error
    return udp, tcp
