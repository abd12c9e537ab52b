"""A tiny upstream DNS server for tests (dnspython, threads): answers the A
records it is given, NXDOMAIN for anything else, and remembers every name
it was asked. Listens on UDP and TCP of one address (loopback, or an
address of a namespace the test made) -- tests never ask real resolvers."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Mapping

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class UpstreamDns:
    def __init__(self, records: Mapping[str, str], host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.records = {name.rstrip(".").lower(): address for name, address in records.items()}
        self.asked: list[str] = []
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind((host, port))
        self.host, self.port = self._udp.getsockname()
        self._tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._tcp.bind((host, self.port))
        self._tcp.listen(8)
        self._stopped = threading.Event()
        self._threads = [threading.Thread(target=self._serve_udp, daemon=True),
                         threading.Thread(target=self._serve_tcp, daemon=True)]
        for thread in self._threads:
            thread.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def answer(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        question = query.question[0]
        name = question.name.to_text().rstrip(".").lower()
        self.asked.append(name)
        response = dns.message.make_response(query)
        address = self.records.get(name)
        if address is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.A:
            response.answer.append(dns.rrset.from_text(question.name, 30, dns.rdataclass.IN,
                                                       dns.rdatatype.A, address))
        return response.to_wire()

    def _serve_udp(self) -> None:
        self._udp.settimeout(0.2)
        while not self._stopped.is_set():
            try:
                data, client = self._udp.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with contextlib.suppress(Exception):
                self._udp.sendto(self.answer(data), client)

    def _serve_tcp(self) -> None:
        self._tcp.settimeout(0.2)
        while not self._stopped.is_set():
            try:
                conn, _ = self._tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn, contextlib.suppress(Exception):
                conn.settimeout(2)
                (length,) = struct.unpack("!H", conn.recv(2))
                data = b""
                while len(data) < length:
                    data += conn.recv(length - len(data))
                reply = self.answer(data)
                conn.sendall(struct.pack("!H", len(reply)) + reply)

    def close(self) -> None:
        self._stopped.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._udp.close()
        self._tcp.close()
