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
time minus the largest lag seen since the tick before last. A beat (or a
status report, which carries its deadline too) is recorded at its arrival
(handled now, less its lag), and a node's silence is counted only up to
where the controller has read its queue. A dead node is marked DOWN that
much later, as with a stall.

The lag a handled beat reveals comes too late when the queue grows fast
(measured at 2,000 nodes when 40,000 tasks were assigned: beats waited up
to 23 s, the lags of the last two ticks said far less, and 480 live nodes
were marked DOWN in one burst). grpc.aio accepts about one call per turn
of the event loop, so a loop busy with 20-100 ms turns falls behind by
seconds a second. So the dispatcher also measures the queue from the
inside: it sends itself a probe (a Heartbeat with no node) through its own
server, again and again, and a probe sent at serving time T that comes
back says every beat that arrived before T has been handled (it waited in
the same queue: gRPC core hands waiting calls of a method out in order of
arrival). Nodes are judged up to the latest such T (`caught_up`), never
further than the lag says. A stall is covered the same way: a probe sent
before it comes back only after it. The agents help keep the queue short:
a status report on its way stands in for their heartbeat (agent/session.py),
so a busy controller has one call per node waiting, not two.

Beats are served off the loop now, by the heartbeat server
(beatserver.py), which has a queue of its own: it is probed the same way
(`probes`, one mark per queue, judged up to the earliest), and its beats'
waits are lags like the main server's.

The bound: a controller behind by more than its tolerance (`backlog_limit`,
HEARTBEAT_MISSES periods: as long as agents wait for a beat's answer,
so beats older than it are lost anyway) judges at now less that limit,
not later. A dead node is therefore marked DOWN at most HEARTBEAT_MISSES
periods after its last beat plus the controller's backlog, capped at
HEARTBEAT_MISSES more periods, plus one monitor tick (half a period): at
most 6.5 periods, 3.5 periods when the controller keeps up.
"""

from __future__ import annotations

import math
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


def judged_until(now: float, lags: tuple[float, float], caught_up: float | None = None,
                 limit: float = math.inf) -> float:
    """The serving time nodes are judged at: `now` less the largest lag seen
    over the last two ticks (the beats that arrived after it may still be
    waiting to be handled), and no later than `caught_up` (the send time
    of the latest probe that came back: every beat that arrived before it
    was handled); but never earlier than `now - limit` (a controller
    further behind than that judges anyway, so a dead node is still found)."""
    until = now - max(lags)
    if caught_up is not None:
        until = min(until, caught_up)
    return max(until, now - limit)


def backlog_limit(period: float) -> float:
    """How far behind its beats the controller may be and still not judge
    at its own pace: HEARTBEAT_MISSES periods (agents wait that long for a
    beat's answer; a beat that waited longer was lost anyway)."""
    return HEARTBEAT_MISSES * period


def worst_detection(period: float, interval: float) -> float:
    """The longest a dead node stays READY after its last beat: the missed
    periods, the largest backlog tolerated, and one monitor tick."""
    return HEARTBEAT_MISSES * period + backlog_limit(period) + interval


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
        # The longest time between two signs of life of one node folded in
        # from the heartbeat server (bench.control_plane reports it).
        self.max_gap = 0.0
        # Per queue beats wait in (the main server's, the heartbeat
        # server's: beatserver.py), the send time (serving clock) of the
        # latest probe that came back through it (none: no prober here, as
        # in unit tests of the lag alone).
        self.probes: dict[str, float] = {}
        self.max_probe_wait = 0.0  # the longest a probe took (bench.control_plane reports it)
        # The serving time of the last judgement and the time judged up to (logged with DOWN marks).
        self.judged = (0.0, 0.0)

    def lag(self, seconds: float) -> None:
        """A beat waited this long between its arrival and its handling."""
        if seconds > self.lags[1]:
            self.lags = (self.lags[0], seconds)
            self.max_lag = max(self.max_lag, seconds)

    @property
    def probed(self) -> float | None:
        """How far every queue is known to have been handled: the earliest of
        the queues' latest probe marks (None: no prober)."""
        return min(self.probes.values()) if self.probes else None

    def probe_sent(self, queue: str = "main") -> float:
        """A probe is leaving now through `queue`: the mark to give
        caught_up() when it is back."""
        self.probes.setdefault(queue, self.clock.now())  # judged from the first probe on
        return self.clock.now()

    def caught_up(self, sent: float, queue: str = "main") -> None:
        """A probe sent through `queue` at serving time `sent` came back."""
        self.max_probe_wait = max(self.max_probe_wait, self.clock.now() - sent)
        if sent > self.probes.get(queue, -math.inf):
            self.probes[queue] = sent

    def beat(self, node_id: str, lag: float = 0.0) -> None:
        """A sign of life from the node that waited `lag` seconds here before
        it was handled: counted from when it arrived (the judgement runs
        on arrivals too: `caught_up`), never moving a later beat back."""
        seen = self.clock.now() - max(0.0, lag)
        if seen > self.last_seen.get(node_id, -math.inf):
            self.last_seen[node_id] = seen

    def seen(self, node_id: str, at: float) -> None:
        """A beat that arrived at serving time `at` (handled off the loop:
        beatserver.py), never moving a later beat back."""
        last = self.last_seen.get(node_id, -math.inf)
        if at > last:
            self.last_seen[node_id] = at
            if at - last > self.max_gap and last > -math.inf:
                self.max_gap = at - last

    def grant(self, node_id: str) -> None:
        """A full grace period from now, unless it beat more recently."""
        self.last_seen.setdefault(node_id, self.clock.now())

    def forget(self, node_id: str) -> float | None:
        return self.last_seen.pop(node_id, None)

    def expired(self, interval: float, period: float) -> dict[str, float]:
        """One monitor tick (every `interval`): the nodes silent for
        HEARTBEAT_MISSES periods of serving time, with their last beat,
        forgotten here (restore() one whose DOWN could not be written)."""
        now = self.clock.tick(interval)
        until = judged_until(now, self.lags, self.probed, backlog_limit(period))
        self.judged = (now, until)
        self.lags = (self.lags[1], 0.0)
        return {node_id: self.last_seen.pop(node_id)
                for node_id in overdue(self.last_seen, until, period * HEARTBEAT_MISSES)}

    def restore(self, node_id: str, seen: float) -> None:
        self.last_seen.setdefault(node_id, seen)
