"""Controllers register themselves: each running controller keeps the key
`{prefix}controllers/{addr}` (a ControllerInfo: address, version, start time)
on a lease of its own, refreshed every third of its TTL by a LeaseKeeper
thread (leadership.keep_lease, as the leader's lease): a busy event loop at
thousands of nodes let this lease expire, and the controller dropped out of
every agent's list. A controller that dies drops out when its lease runs
out; one that stops revokes it at once; one whose loop is wedged past the
watchdog has it revoked by the keeper.

Every controller's watch cache holds the set (WatchCache.controllers). The
leader's dispatcher sends it to the agents in their sessions, as Swarm's
managers tell agents of each other, so an agent started with one controller's
address fails over to the others; `swarmctl controller ls` lists it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from swarm.api.v1 import objects_pb2 as pb

from .leadership import keep_lease
from .store import Store, StoreUnavailable
from .store import etcd as E

log = logging.getLogger(__name__)


class ControllerRegistry:
    def __init__(self, store: Store, info: pb.ControllerInfo, ttl: int,
                 watchdog: float = 30.0) -> None:
        self._store = store
        self.info = info
        self._ttl = ttl
        self._watchdog = watchdog  # LeadershipSettings.watchdog
        self._lease = 0
        self.registered = asyncio.Event()  # set once the record is first written

    async def run(self) -> None:
        """Keep this controller's record in etcd until cancelled."""
        etcd = self._store.etcd
        key = self._store.keys.controller(self.info.addr)
        while True:
            try:
                self._lease = await etcd.lease_grant(self._ttl)
                await etcd.txn([], [E.op_put(key, self.info.SerializeToString(),
                                             lease=self._lease)])
                log.info("registered as controller %s", self.info.addr)
                self.registered.set()
                reason = await keep_lease(etcd.settings, self._lease, self._ttl, self._watchdog)
                log.warning("controller record's lease lost (%s): registering again", reason)
            except StoreUnavailable as error:
                log.warning("cannot keep the controller record: %s", error)
                await asyncio.sleep(self._ttl / 3)

    async def withdraw(self) -> None:
        """Drop the record at once (a clean stop): agents stop trying this address."""
        if self._lease:
            with contextlib.suppress(StoreUnavailable):
                await self._store.etcd.lease_revoke(self._lease)
            self._lease = 0
