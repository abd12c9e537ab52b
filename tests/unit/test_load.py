"""bench.load, the client load of the rollout scenarios: bounded by count
and time by itself, and every failure counted with its reason. Targets on
loopback only."""

from __future__ import annotations

import socket
import threading
import time

from bench.load import Load, Target


def test_it_stops_by_itself_and_counts_refusals_with_their_reason() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    load = Load([Target("127.0.0.1", port, label="nothing")], interval=0.001,
                max_seconds=30, max_requests=20)
    tally = load.start().wait(30)
    assert (tally.requests, tally.failures) == (20, 20)
    assert list(tally.reasons) == ["ConnectionRefusedError: Connection refused"]


def test_answers_are_checked_and_time_bounds_it() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    answers = [b"HTTP/1.0 200 OK\r\n\r\nhello from a", b"HTTP/1.0 500 Oops\r\n\r\n",
               b"HTTP/1.0 200 OK\r\n\r\nsomething else", b""]

    def serve() -> None:
        for answer in answers * 1000:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with connection:
                connection.recv(4096)
                connection.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    began = time.monotonic()
    load = Load([Target("127.0.0.1", server.getsockname()[1])], interval=0.01,
                max_seconds=0.5, max_requests=100_000)
    tally = load.start().wait(10)
    server.close()
    assert time.monotonic() - began < 5
    assert tally.requests >= 8
    # One answer in four is right (served in turn): the others fail.
    assert 0 < tally.requests - tally.failures <= tally.requests // 4 + 1
    assert {"answer 'HTTP/1.0 500 Oops'", "unexpected body b'something else'",
            "closed without an answer"} == set(tally.reasons)
