"""A bounded HTTP client load for rollout scenarios (bench.rollout and
tests/e2e/test_zero_downtime.py): one thread per target sends `GET /` on a
new connection every `interval` seconds and counts answers and failures,
with the reason of each failure.

A target is an address and port, and the network namespace the client's
socket is made in: None for this process's own (the root namespace: a
host's published port through the routing mesh, as deploy/demo.sh fetches),
or a task's namespace (its VIP: the socket made there goes through that
namespace's nftables load balancer, exactly as the container's own
connections do). A request succeeds when the answer is `HTTP/1.x 200` with a
body starting with `expect`, within `timeout`.

Bounded: every thread stops by itself after `max_requests` requests or
`max_seconds`, whichever comes first, even if nobody calls stop(); stop()
ends it sooner. Used as a context manager it runs for the `with` block.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType

from swarm.host.netns import socket_in


@dataclass(frozen=True)
class Target:
    address: str
    port: int
    netns: str | None = None  # None: this process's namespace
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or f"{self.address}:{self.port}" + (
            f" in {self.netns}" if self.netns else "")


@dataclass
class Tally:
    """Requests and failures of one target (or of all, merged)."""

    requests: int = 0
    failures: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def merge(self, other: Tally) -> None:
        self.requests += other.requests
        self.failures += other.failures
        self.reasons.update(other.reasons)

    def summary(self) -> str:
        reasons = ", ".join(f"{reason} x{count}" for reason, count in self.reasons.most_common())
        return f"{self.failures} of {self.requests} failed" + (f" ({reasons})" if reasons else "")


def get(target: Target, timeout: float, expect: bytes) -> str:
    """One request on a new connection; '' when it succeeded, else why not."""
    try:
        sock = socket_in(target.netns) if target.netns else socket.socket()
    except OSError as error:
        return f"socket: {error}"
    try:
        sock.settimeout(timeout)
        sock.connect((target.address, target.port))
        sock.sendall(b"GET / HTTP/1.0\r\nHost: load\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        answer = b"".join(chunks)
    except OSError as error:  # refused, reset, timed out...
        return f"{type(error).__name__}: {error.strerror or error}"
    finally:
        sock.close()
    if not answer:
        return "closed without an answer"
    head, _, body = answer.partition(b"\r\n\r\n")
    if not head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")):
        status = head.split(b"\r\n", 1)[0][:40].decode(errors="replace")
        return f"answer {status!r}"
    if not body.startswith(expect):
        return f"unexpected body {body[:30]!r}"
    return ""


class Load:
    """Client load on several targets at once (see the module's notes)."""

    def __init__(self, targets: list[Target], *, interval: float = 0.03,
                 timeout: float = 3.0, max_seconds: float = 120.0,
                 max_requests: int = 10_000, expect: bytes = b"hello from") -> None:
        if not targets:
            raise ValueError("load: no target")
        self.targets = targets
        self.interval = interval
        self.timeout = timeout
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.expect = expect
        self.tallies = {target.name: Tally() for target in targets}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.started = 0.0
        self.ended = 0.0

    def start(self) -> Load:
        self.started = time.monotonic()
        for target in self.targets:
            thread = threading.Thread(target=self._run, args=(target,), daemon=True,
                                      name=f"load {target.name}")
            thread.start()
            self._threads.append(thread)
        return self

    def _run(self, target: Target) -> None:
        deadline = self.started + self.max_seconds
        tally = self.tallies[target.name]
        while tally.requests < self.max_requests and time.monotonic() < deadline \
                and not self._stop.is_set():
            began = time.monotonic()
            reason = get(target, self.timeout, self.expect)
            with self._lock:
                tally.requests += 1
                if reason:
                    tally.failures += 1
                    tally.reasons[reason] += 1
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - began)))

    def wait(self, timeout: float | None = None) -> Tally:
        """Until every thread has ended by itself (its bounds); the totals."""
        for thread in self._threads:
            thread.join(timeout)
        self.ended = time.monotonic()
        return self.total()

    def stop(self) -> Tally:
        """Stop every thread (each ends within one request's timeout) and
        return the totals."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        self.ended = time.monotonic()
        return self.total()

    def total(self) -> Tally:
        total = Tally()
        with self._lock:
            for tally in self.tallies.values():
                total.merge(tally)
        return total

    def report(self) -> str:
        with self._lock:
            return "; ".join(f"{name}: {tally.summary()}" for name, tally in self.tallies.items())

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
