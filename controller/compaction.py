"""Compaction of etcd's history, by the leader.

etcd keeps every revision of every key until it is compacted; each task
status report rewrites a whole task, so without compaction the backend grows
until etcd's quota (2 GiB by default) and raises its NOSPACE alarm. The
leader compacts as the Kubernetes API server does (--etcd-compaction-interval,
5 minutes by default): every `interval` it notes etcd's current revision and
compacts up to the revision it noted the time before. So between one and two
intervals of history stay, never more.

Why 5 minutes here too: history only serves watchers that reconnect and
resume from a revision. Our watch cache resumes within about a second of a
lost stream and re-lists after a compaction anyway (it never misses a state,
only replays it as a list), so minutes of history are plenty; an operator's
`etcdctl watch --rev` still has five minutes to look back. Shorter intervals
buy little: what grows the backend is the write rate times the interval,
a few megabytes per interval at this project's measured rates.

Compaction frees pages for reuse but does not shrink the file: a member that
reached its quota still needs `etcdctl defrag` (it blocks the member while it
runs, so it is an operator's step; see deploy/PRODUCTION.md). Set the
interval to 0 when etcd compacts by itself (--auto-compaction-retention).
A deposed leader that compacts late does no harm: compacting a revision
compacted already is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from .store import EtcdClient, StoreError

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 300.0


@dataclass(frozen=True)
class CompactionSettings:
    interval: float = DEFAULT_INTERVAL  # seconds; 0: never (etcd compacts by itself)


class Compactor:
    def __init__(self, etcd: EtcdClient, settings: CompactionSettings | None = None) -> None:
        self._etcd = etcd
        self.settings = settings or CompactionSettings()
        self.compacted = 0  # the last revision compacted to, for tests and logs

    async def run(self) -> None:
        """Compact every interval, to the revision noted one interval before."""
        if self.settings.interval <= 0:
            return
        # Note the revision at once: a new leader compacts after one interval,
        # so leadership changing hands often cannot postpone compaction forever.
        noted = await self.tick(0)
        while True:
            await asyncio.sleep(self.settings.interval)
            noted = await self.tick(noted)

    async def tick(self, noted: int) -> int:
        """One round: compact to `noted` (if any); returns the revision to note
        for the next round (the current one, or `noted` again when etcd failed)."""
        try:
            current = await self._etcd.revision()
            if noted and noted < current and await self._etcd.compact(noted, physical=False):
                self.compacted = noted
                log.info("compacted etcd history up to revision %d (now at %d)", noted, current)
            return current
        except StoreError as error:
            log.warning("cannot compact etcd: %s", error)
            return noted
