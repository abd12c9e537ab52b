"""Leader election through etcd: a lease and a create-if-absent key.

Any number of controllers campaign; the one whose transaction creates the
leader key leads while it keeps the lease alive. Its leadership is fenced: the
leader's writes carry a Guard on the key's create_revision, so a leader that
lost its lease (paused, partitioned) cannot write over its successor. A leader
that cannot refresh its lease in time steps down before the lease runs out.

A new leader plans on nothing older than its election: before its loops start
it waits until the watch cache has seen etcd up to the election's revision (a
read barrier; the cache of a follower may lag). And a follower names a leader
to agents only after reading the leader key from etcd (`confirmed_leader`):
a guess from a lagging cache sends agents to a dead controller.

A leader whose process is gone need not hold the seat for the rest of its
lease: a follower that finds the leader's address refusing connections (no
process listens there) AND its lease not refreshed on time (a live leader
refreshes every third of the TTL) deletes the leader key, if it is still that
leader's, and campaigns at once. Both are required: a refused connection
alone could be a wrong --advertise-addr, a late refresh alone a busy leader.
A paused or partitioned leader refuses nothing, so its seat is taken only when
its lease runs out; either way its writes are fenced.

The lease is refreshed from a thread of its own over a synchronous gRPC
channel of its own (LeaseKeeper), not from the event loop: at thousands of
nodes one pass of the orchestrator or scheduler can hold the loop for longer
than a third of the TTL, and a keep-alive waiting behind it made leadership
flap (every flap a full re-plan: busier still). A loop that is busy is not a
loop that is dead, though: the loop feeds a watchdog timestamp every
fraction of a second, and a keeper that finds it older than `watchdog`
seconds (a wedged loop: a deadlock, a runaway computation) stops refreshing
and revokes the lease, so that another controller takes over at once. When
the loop runs again it finds leadership lost and steps down; what it may
write before that is fenced like any deposed leader's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from swarm.api.channels import refuses_connections
from swarm.api.loops import cancel_all

from .store import EtcdSettings, Guard, Store, StoreError, StoreUnavailable
from .store import etcd as E

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeadershipSettings:
    lease_ttl: int = 5  # seconds; a dead leader is replaced after about this long
    poll_interval: float = 0.5  # how often a follower looks for a vacant seat
    # A leader whose event loop has not run for this long gives up its lease
    # (LeaseKeeper). Well above the longest pass measured at 5,000 nodes and far
    # below "forever".
    watchdog: float = 30.0


_RETRY_PAUSE = 0.05  # seconds between a failed lease refresh and the next attempt


def lease_verdict(now: float, fed_at: float, refreshed_at: float, ttl: float,
                  watchdog: float, refresh_failed: bool) -> str | None:
    """Why a lease keeper must stop keeping the lease, or None to go on.

    Pure: `fed_at` is when the event loop last fed the watchdog, `refreshed_at`
    when etcd last confirmed the lease, `refresh_failed` whether the latest
    attempt failed. A failed refresh is retried while the lease cannot yet
    have run out (two thirds of the TTL since the last confirmed one)."""
    if now - fed_at > watchdog:
        return (f"the event loop has not run for {now - fed_at:.1f}s "
                f"(watchdog {watchdog:g}s): giving up the lease")
    if refresh_failed and now - refreshed_at > ttl * 2 / 3:
        return "lease not refreshed in time"
    return None


class LeaseKeeper:
    """Refreshes one lease every third of its TTL from a daemon thread with its
    own etcd channel, while the event loop keeps calling feed() (see the
    module's docstring). on_lost(reason) is called once, from the thread, when
    it stops keeping the lease; stop() ends it quietly."""

    def __init__(self, settings: EtcdSettings, lease_id: int, ttl: float, watchdog: float,
                 on_lost: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._lease_id = lease_id
        self._ttl = ttl
        self._watchdog = watchdog
        self._on_lost = on_lost
        self._clock = clock
        self._fed_at = clock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{lease_id:x}",
                                        daemon=True)

    def feed(self) -> None:
        """The event loop is alive (a float store: cheap, and atomic under the GIL)."""
        self._fed_at = self._clock()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        client = E.BlockingLeaseClient(self._settings)
        try:
            # Connected before the first refresh is due: on a loaded machine a
            # first call that must also connect missed its deadline.
            client.wait_ready(self._ttl / 3)
            reason = self._keep(client)
        except Exception as error:  # a bug here must cost the lease, not keep it silently
            log.exception("lease keeper failed")
            reason = f"lease keeper failed: {error}"
        finally:
            client.close()
        if reason is not None:
            self._on_lost(reason)

    def _keep(self, client: E.BlockingLeaseClient) -> str | None:
        """Refresh a third of the TTL after the last refresh was sent; after a
        failure, again at once, each attempt given what is left until two
        thirds of the TTL (then the lease may be about to run out: stop)."""
        interval = self._ttl / 3
        refreshed_at = self._clock()  # the lease was granted (or refreshed) just now
        failed = False
        while True:
            pause = _RETRY_PAUSE if failed else refreshed_at + interval - self._clock()
            if self._stopping.wait(max(0.0, pause)):
                return None
            now = self._clock()
            verdict = lease_verdict(now, self._fed_at, refreshed_at, self._ttl,
                                    self._watchdog, failed)
            if verdict is not None:
                if not failed:  # hand over at once rather than after the TTL
                    with contextlib.suppress(StoreUnavailable):
                        client.revoke(self._lease_id, interval)
                return verdict
            budget = self._ttl * 2 / 3 - (now - refreshed_at)
            try:
                remaining = client.keepalive_once(self._lease_id, max(budget, _RETRY_PAUSE))
            except StoreUnavailable as error:
                log.warning("cannot refresh the leader lease: %s", error)
                failed = True
                continue
            if remaining <= 0:
                return "lease expired"
            refreshed_at = now  # when it was sent: the lease runs from no earlier
            failed = False


class Leadership:
    def __init__(self, store: Store, identity: str,
                 settings: LeadershipSettings | None = None) -> None:
        self._store = store
        self.identity = identity  # the address agents and clients should use
        self.settings = settings or LeadershipSettings()
        self.guard: Guard | None = None
        self.changed = asyncio.Event()
        self._confirmed: tuple[float, str] = (-1.0, "")  # (when read, leader address)

    @property
    def is_leader(self) -> bool:
        return self.guard is not None

    @property
    def leader_addr(self) -> str:
        if self.guard is not None:
            return self.identity
        leader = self._store.cache.leader
        return leader.value.decode() if leader is not None else ""

    async def confirmed_leader(self, max_age: float = 0.25) -> str:
        """The leader's address as etcd has it now ("" when the seat is vacant or
        etcd cannot say). Read at most every max_age seconds: a crowd of agents
        asking a follower at once costs etcd one read."""
        if self.guard is not None:
            return self.identity
        read_at, leader = self._confirmed
        now = time.monotonic()
        if now - read_at <= max_age:
            return leader
        try:
            async with asyncio.timeout(2.0):
                _revision, kv = await self._store.etcd.get(self._store.keys.leader)
        except (StoreUnavailable, TimeoutError):
            return ""
        leader = kv.value.decode() if kv is not None else ""
        self._confirmed = (now, leader)
        return leader

    async def run(self, lead: Callable[[Guard], Coroutine[Any, Any, None]]) -> None:
        """Campaign forever; while leading, run lead(guard) (cancelled on loss)."""
        changed = self._store.cache.leader_changed
        while True:
            changed.clear()
            try:
                won = await self._campaign()
            except StoreError as error:  # unreachable, full (NOSPACE) or refused: try again
                log.warning("cannot campaign: %s", error)
                won = None
            if won is None:
                with contextlib.suppress(StoreUnavailable):
                    if await self._depose_if_gone():
                        continue
                # Campaign as soon as the seat is seen vacant (the watch delivers
                # the key's deletion), and look again every poll_interval anyway.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.poll_interval):
                        await changed.wait()
                continue
            guard, lease_id = won
            await self._lead(guard, lease_id, lead)

    async def _depose_if_gone(self) -> bool:
        """Delete the leader key of a leader whose process is gone (see the
        module's docstring); True when it was deleted."""
        leader = self._store.cache.leader
        if leader is None:
            return False
        addr = leader.value.decode()
        if addr == self.identity or not await refuses_connections(addr):
            return False
        etcd = self._store.etcd
        key = self._store.keys.leader
        _revision, kv = await etcd.get(key)
        if kv is None or kv.value != leader.value or not kv.lease:
            return False
        remaining, granted = await etcd.lease_time_to_live(kv.lease)
        if remaining > int(granted * 2 / 3) - 1:
            return False  # refreshed on time: alive, whatever its address says
        response = await etcd.txn([E.compare_mod_revision(key, kv.mod_revision)],
                                  [E.op_delete(key)])
        if response.succeeded:
            log.warning("leader %s is gone (refuses connections, lease %ds of %ds left): "
                        "taking over without waiting for its lease", addr, remaining, granted)
        return bool(response.succeeded)

    async def _campaign(self) -> tuple[Guard, int] | None:
        if self._store.cache.leader is not None:
            return None
        etcd = self._store.etcd
        key = self._store.keys.leader
        lease_id = await etcd.lease_grant(self.settings.lease_ttl)
        response = await etcd.txn(
            [E.compare_create_revision(key, 0)],
            [E.op_put(key, self.identity.encode(), lease=lease_id)],
            [E.op_get(key)],
        )
        if not response.succeeded:
            with contextlib.suppress(StoreUnavailable):
                await etcd.lease_revoke(lease_id)
            return None
        revision = int(response.header.revision)
        self._store.cache.apply_committed([(key, self.identity.encode())], [], revision)
        log.info("elected leader as %s (revision %d)", self.identity, revision)
        try:
            # Everything committed before the election has a lower revision. The
            # lease is first refreshed a third of its TTL into leading: wait no longer.
            await self._store.cache.caught_up(revision, self.settings.lease_ttl / 3)
        except TimeoutError:
            log.warning("watch cache did not reach revision %d: giving up the seat", revision)
            with contextlib.suppress(StoreUnavailable):
                await etcd.lease_revoke(lease_id)
            return None
        return Guard(key, revision), lease_id

    async def _lead(self, guard: Guard, lease_id: int,
                    lead: Callable[[Guard], Coroutine[Any, Any, None]]) -> None:
        self.guard = guard
        self.changed.set()
        self.changed.clear()
        work = asyncio.create_task(lead(guard), name="leader-work")
        keepalive = asyncio.create_task(self._keep_lease(lease_id), name="leader-lease")
        try:
            done, _ = await asyncio.wait({work, keepalive}, return_when=asyncio.FIRST_COMPLETED)
            if keepalive in done:
                log.warning("lost leadership: %s", keepalive.exception() or "lease expired")
            else:
                log.error("leader work stopped: %s", work.exception())
        finally:
            self.guard = None
            self.changed.set()
            self.changed.clear()
            try:
                await cancel_all([work, keepalive])
            finally:
                # Hand over at once instead of making the next leader wait for the TTL;
                # shielded, so that a stop arriving meanwhile still revokes. The stop's
                # cancellation itself must go on: swallowing it here kept the
                # leadership loop campaigning and Controller.stop waiting for ever.
                await asyncio.shield(self._revoke_quietly(lease_id))

    async def _revoke_quietly(self, lease_id: int) -> None:
        """Revoke a lease that may be gone already (the keeper revoked it, or it
        ran out): nothing to report either way."""
        with contextlib.suppress(StoreUnavailable):
            await self._store.etcd.lease_revoke(lease_id)

    async def _keep_lease(self, lease_id: int) -> None:
        """Keep the lease (keep_lease); raise StoreUnavailable when it is lost."""
        raise StoreUnavailable(await keep_lease(self._store.etcd.settings, lease_id,
                                                self.settings.lease_ttl, self.settings.watchdog))


async def keep_lease(settings: EtcdSettings, lease_id: int, ttl: float, watchdog: float) -> str:
    """Keep a lease from a LeaseKeeper thread, feeding its watchdog from the
    running loop, until it is lost; returns why. The one way a controller
    keeps a lease (the leader's, the controller registry's record)."""
    loop = asyncio.get_running_loop()
    lost: asyncio.Future[str] = loop.create_future()

    def on_lost(reason: str) -> None:  # called from the keeper's thread
        def settle() -> None:
            if not lost.done():
                lost.set_result(reason)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
            loop.call_soon_threadsafe(settle)

    keeper = LeaseKeeper(settings, lease_id, ttl, watchdog, on_lost)
    keeper.start()
    # Fed far more often than the watchdog's limit, so only a loop that
    # really stopped running trips it.
    feed_every = min(0.25, watchdog / 8)
    try:
        while not lost.done():
            keeper.feed()
            await asyncio.wait({lost}, timeout=feed_every)
        return lost.result()
    finally:
        keeper.stop()
