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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from swarm.api.channels import refuses_connections
from swarm.api.loops import cancel_requested

from .store import Guard, Store, StoreError, StoreUnavailable
from .store import etcd as E

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeadershipSettings:
    lease_ttl: int = 5  # seconds; a dead leader is replaced after about this long
    poll_interval: float = 0.5  # how often a follower looks for a vacant seat


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
            for task in (work, keepalive):
                task.cancel()
            for task in (work, keepalive):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            # Hand over at once instead of making the next leader wait for the TTL.
            with contextlib.suppress(StoreUnavailable, asyncio.CancelledError):
                await asyncio.shield(self._store.etcd.lease_revoke(lease_id))

    async def _keep_lease(self, lease_id: int) -> None:
        ttl = self.settings.lease_ttl
        last_ok = time.monotonic()
        while True:
            # A cancel can surface as a call error, or be lost by wait_for when
            # it races with the reply (Python 3.11): asked to stop is stop.
            if cancel_requested():
                raise asyncio.CancelledError
            await asyncio.sleep(ttl / 3)
            try:
                remaining = await asyncio.wait_for(
                    self._store.etcd.lease_keepalive_once(lease_id), ttl / 3)
            except (StoreUnavailable, TimeoutError) as error:
                # Step down before the lease can have expired under us.
                if time.monotonic() - last_ok > ttl * 2 / 3:
                    raise StoreUnavailable(f"lease not refreshed in time: {error}") from error
                continue
            if remaining <= 0:
                raise StoreUnavailable("lease expired")
            last_ok = time.monotonic()
