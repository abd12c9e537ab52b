"""Drain reports: telling the other controllers which stopping tasks are
drained on this controller's side (drain.py).

A task drained here is queued for every other controller in the registry
at that moment; one loop sends each controller its queue in one internal
call (Dispatcher.ReportDrained), as soon as something is queued (a stop
waits for it: no coalescing pause beyond the tasks queued while the
previous call to that controller was in flight), one call in flight per
controller so a dead one delays nobody else's. What a controller did not
take is kept for it and sent again after a short pause, until it takes it
or leaves the registry (then nothing waits for it). A report that never
arrives costs the task's drain timeout on its agent, no more.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

import grpc

from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import dispatcher_pb2_grpc as dgrpc

from .liveness import Dial

log = logging.getLogger(__name__)

RETRY_PAUSE = 0.2  # seconds before a report not taken is sent again
TIMEOUT = 2.0  # seconds one report may take


def queue_for(queues: dict[str, set[str]], targets: Iterable[str],
              task_ids: Iterable[str]) -> None:
    """Add the tasks to the queue of each target controller."""
    tasks = set(task_ids)
    for target in targets:
        queues.setdefault(target, set()).update(tasks)


def prune(queues: dict[str, set[str]], live: Iterable[str]) -> None:
    """Drop the queues of controllers that left the registry (or are empty)."""
    alive = set(live)
    for target in [t for t, q in queues.items() if t not in alive or not q]:
        del queues[target]


class DrainReporter:
    def __init__(self, identity: str, dial: Dial,
                 live: Callable[[], Iterable[str]]) -> None:
        self._identity = identity
        self._dial = dial
        self._live = live  # the registered controllers' addresses, now
        self.queues: dict[str, set[str]] = {}  # controller -> tasks to report
        self._wake = asyncio.Event()
        self._channels: dict[str, grpc.aio.Channel] = {}

    def announce(self, task_id: str) -> None:
        """The task is drained on this side: tell every other controller."""
        others = [addr for addr in self._live() if addr != self._identity]
        if others:
            queue_for(self.queues, others, (task_id,))
            self._wake.set()

    def _stub(self, addr: str) -> dgrpc.DispatcherAsyncStub:
        channel = self._channels.get(addr)
        if channel is None:
            channel = self._channels[addr] = self._dial(addr)
        return dgrpc.DispatcherStub(channel)

    async def _send(self, addr: str, task_ids: set[str]) -> bool:
        try:
            await self._stub(addr).ReportDrained(
                dpb.ReportDrainedRequest(controller=self._identity, task_ids=sorted(task_ids)),
                timeout=TIMEOUT)
            return True
        except grpc.aio.AioRpcError as error:
            log.info("controller %s did not take the report of %d drained tasks: %s %s",
                     addr, len(task_ids), error.code().name, error.details())
            return False

    async def send_once(self) -> bool:
        """Send every queue; whether all were taken (what was not is queued again)."""
        prune(self.queues, self._live())
        sending, self.queues = self.queues, {}
        results = await asyncio.gather(*(self._deliver(t, ids) for t, ids in sending.items()))
        return all(results)

    async def _deliver(self, target: str, task_ids: set[str]) -> bool:
        if await self._send(target, task_ids):
            return True
        queue_for(self.queues, (target,), task_ids)
        prune(self.queues, self._live())
        return False

    async def run(self) -> None:
        """Send queued reports until cancelled: one call in flight per
        controller, so a dead or slow one (until it leaves the registry)
        delays nobody else's reports."""
        inflight: dict[str, asyncio.Task[None]] = {}

        async def deliver(target: str, task_ids: set[str]) -> None:
            try:
                if not await self._deliver(target, task_ids):
                    await asyncio.sleep(RETRY_PAUSE)
            finally:
                del inflight[target]
                self._wake.set()  # what was queued meanwhile, or queued again

        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                prune(self.queues, self._live())
                for target in [t for t in self.queues if t not in inflight]:
                    inflight[target] = asyncio.create_task(
                        deliver(target, self.queues.pop(target)))
        finally:
            for task in list(inflight.values()):
                task.cancel()
            await asyncio.gather(*inflight.values(), return_exceptions=True)

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close(None)
