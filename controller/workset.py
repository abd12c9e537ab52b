"""The level-triggered work set of the leader's task loops (the allocator,
the scheduler): which task IDs to look at on the next pass, and which were
looked at and could not be handled (no address, no node), parked until
something they wait for changes.

A loop feeds it from cache changes (want / drop / retry_parked) and drains it
one batch per pass (next_batch); a pass whose writes failed puts its tasks
back (retry). Decisions stay in the loops; this only keeps the sets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


class WorkSet:
    def __init__(self, batch_window: float) -> None:
        # How long a pass waits after the first wake-up, so that a burst of
        # changes is handled in one pass.
        self.batch_window = batch_window
        self.pending: set[str] = set()  # to look at
        self.parked: set[str] = set()  # looked at; again only after a change
        self._wake = asyncio.Event()

    def reset(self, task_ids: Iterable[str]) -> None:
        """Start over with these (a loop's start: everything in the cache)."""
        self.pending = set(task_ids)
        self.parked.clear()
        self._wake.set()

    def want(self, task_id: str) -> None:
        """The task needs a look, unless it is parked (nothing it waits for changed)."""
        if task_id not in self.parked:
            self.pending.add(task_id)
            self._wake.set()

    def drop(self, task_id: str) -> None:
        """The task needs nothing from this loop any more."""
        self.pending.discard(task_id)
        self.parked.discard(task_id)

    def park(self, task_ids: Iterable[str]) -> None:
        self.parked.update(task_ids)

    def retry_parked(self) -> None:
        """Something parked tasks wait for changed: look at them all again."""
        if self.parked:
            self.pending |= self.parked
            self.parked.clear()
            self._wake.set()

    def retry(self, task_ids: Iterable[str]) -> None:
        """Look at these again at once (their pass's writes failed)."""
        ids = set(task_ids)
        self.parked -= ids
        self.pending |= ids
        self._wake.set()

    async def next_batch(self) -> set[str]:
        """Wait for work, let a burst gather, and take everything pending."""
        await self._wake.wait()
        await asyncio.sleep(self.batch_window)
        self._wake.clear()
        batch, self.pending = self.pending, set()
        return batch
