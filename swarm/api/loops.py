"""How the daemons run their long-lived loops: each one a named asyncio task,
restarted with backoff when it fails, logged when it stops, cancelled cleanly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)


def paced_pause(last_sent: float, interval: float, first: float, now: float) -> float:
    """How long a paced sender waits before its next send: at most one send
    per `interval` after the last one, but after a quiet spell only `first`
    (enough to gather a burst), so lone news goes out at once."""
    return max(first, last_sent + interval - now)


async def run_supervised(name: str, loop: Callable[[], Awaitable[None]], *,
                         restart_delay: float = 0.5, max_delay: float = 10.0) -> None:
    """Run loop() forever: a crash is logged and the loop restarted after a
    growing delay; cancellation stops it. A loop that returns is done."""
    delay = restart_delay
    while True:
        try:
            await loop()
            log.info("loop %s finished", name)
            return
        except asyncio.CancelledError:
            log.debug("loop %s cancelled", name)
            raise
        except Exception as error:
            if cancel_requested():  # the cancel surfaced as another error (see cancel_requested)
                log.debug("loop %s cancelled (%s)", name, error)
                raise asyncio.CancelledError from error
            log.exception("loop %s crashed; restarting in %.1fs", name, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)


def cancel_requested() -> bool:
    """Whether the running task has been asked to stop. A loop that catches
    errors to go on must check it: grpc.aio can report a call cancelled under
    it as an AioRpcError (CANCELLED) rather than CancelledError, and Python
    3.11's wait_for can lose a cancel that races with its result; going on
    would leave the task running after cancel_all, waited for forever."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def start_supervised(name: str, loop: Callable[[], Awaitable[None]],
                     **kwargs: float) -> asyncio.Task[None]:
    return asyncio.create_task(run_supervised(name, loop, **kwargs), name=name)


async def cancel_all(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel tasks and wait until every one has stopped. A task that ended
    with an error (rather than by the cancel) is logged, not raised: the
    others are still waited for. The caller's own cancel is not swallowed:
    it is raised once the tasks have stopped. (The obvious
    `task.cancel(); with suppress(CancelledError): await task` swallows it.)"""
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    if not pending:
        return
    cancelled = False
    while True:
        try:
            await asyncio.wait(pending)
            break
        except asyncio.CancelledError:
            cancelled = True  # finish the wait: "stopped" means stopped
    for task in pending:
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed while stopping: %s", task.get_name(), task.exception())
    if cancelled:
        raise asyncio.CancelledError
