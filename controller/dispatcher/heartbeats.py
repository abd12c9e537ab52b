"""Heartbeats: which nodes are alive, kept in the serving controller's memory.

A beat is one dict entry (the node's last beat on the serving clock): no etcd
write and no object per beat. etcd hears of a node only when its state
changes (READY when a session opens, DOWN when it falls silent), so the
heartbeat rate of thousands of nodes costs etcd nothing.

A node is overdue after HEARTBEAT_MISSES periods without a beat. The clock
that measures this is the *serving clock*: monotonic time minus the stalls
of the controller's own event loop. While the loop is busy (a big pass, a
burst of sessions) beats wait in socket buffers and are read late; that is
the controller's fault, not the node's. The monitor wakes every half period
and measures how late it woke: lateness beyond a tolerance is a stall, and
the serving clock does not count it, so every node gets that much more time.
A dead node is still marked DOWN, one stall later. (The orchestrator's mass
disconnect gate, orchestrator/disruption.py, is the second line: many nodes
DOWN at once are replaced slowly.)

A loop that is slow rather than stalled wakes the monitor on time, but the
RPCs queue: at 2,000 nodes beats waited 10-20 s between arriving and being
handled, and live nodes were marked DOWN. So the controller also does not
count how far behind it is in handling beats: each beat carries the deadline
its agent gave it (HeartbeatRequest.timeout), and what is left of it when
the beat is handled tells how long it waited here (`lag`). A tick judges the
nodes only up to the moment the controller has caught up to: its serving
time minus the largest lag seen since the tick before last. Beats are
recorded when handled (never earlier), so a node's silence is counted only
up to where the controller has read its queue. A dead node is marked DOWN
that much later, as with a stall.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

HEARTBEAT_MISSES = 3
# A monitor wake-up later than this fraction of its interval counts as a stall.
STALL_TOLERANCE = 0.2


def overdue(last_seen: Mapping[str, float], now: float, timeout: float) -> list[str]:
    """The nodes whose last beat is more than `timeout` before `now`, in order."""
    deadline = now - timeout
    return sorted(node_id for node_id, seen in last_seen.items() if seen < deadline)


def stall(previous: float, now: float, interval: float,
          tolerance: float = STALL_TOLERANCE) -> float:
    """How long the loop was stalled, judged by a wake-up due `interval` after
    `previous` that came at `now`: its lateness beyond tolerance, else 0."""
    late = now - previous - interval
    return late if late > interval * tolerance else 0.0


class ServingClock:
    """Monotonic time that does not count the controller's stalls."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.stalled = 0.0  # seconds not counted so far
        self._last: float | None = None

    def now(self) -> float:
        return self._clock() - self.stalled

    def tick(self, interval: float) -> float:
        """The monitor woke (it sleeps `interval` between ticks): account a
        stall if it woke late. Returns the serving time."""
        real = self._clock()
        if self._last is not None:
            self.stalled += stall(self._last, real, interval)
        self._last = real
        return real - self.stalled


def judged_until(now: float, lags: tuple[float, float]) -> float:
    """The serving time nodes are judged at: `now` less the largest lag seen
    over the last two ticks (the beats that arrived after it may still be
    waiting to be handled)."""
    return now - max(lags)


class Heartbeats:
    """The last beat of every node that has a session here (or had, until it
    is judged)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = ServingClock(clock)
        self.last_seen: dict[str, float] = {}
        # The largest lag seen (seconds a beat waited here before it was
        # handled) since the last tick, and in the tick before.
        self.lags = (0.0, 0.0)
        self.max_lag = 0.0  # the largest ever seen (bench.control_plane reports it)

    def lag(self, seconds: float) -> None:
        """A beat waited this long between its arrival and its handling."""
        if seconds > self.lags[1]:
            self.lags = (self.lags[0], seconds)
            self.max_lag = max(self.max_lag, seconds)

    def beat(self, node_id: str) -> None:
        self.last_seen[node_id] = self.clock.now()

    def grant(self, node_id: str) -> None:
        """A full grace period from now, unless it beat more recently."""
        self.last_seen.setdefault(node_id, self.clock.now())

    def forget(self, node_id: str) -> float | None:
        return self.last_seen.pop(node_id, None)

    def expired(self, interval: float, period: float) -> dict[str, float]:
        """One monitor tick (every `interval`): the nodes silent for
        HEARTBEAT_MISSES periods of serving time, with their last beat,
        forgotten here (restore() one whose DOWN could not be written)."""
        until = judged_until(self.clock.tick(interval), self.lags)
        self.lags = (self.lags[1], 0.0)
        return {node_id: self.last_seen.pop(node_id)
                for node_id in overdue(self.last_seen, until, period * HEARTBEAT_MISSES)}

    def restore(self, node_id: str, seen: float) -> None:
        self.last_seen.setdefault(node_id, seen)
