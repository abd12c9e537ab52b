"""Supervised loops stop when cancelled, even when the cancellation reaches
them as another error (grpc.aio can report a call cancelled under a task as
AioRpcError CANCELLED): otherwise cancel_all would wait for them forever."""

from __future__ import annotations

import asyncio

from swarm.api.loops import cancel_all, cancel_requested, paced_pause, start_supervised


class CallFailed(Exception):
    """What a client library raises instead of CancelledError."""


async def call_that_converts_cancellation() -> None:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        raise CallFailed("call cancelled") from None


async def test_a_loop_whose_cancel_surfaces_as_an_error_still_stops() -> None:
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            await call_that_converts_cancellation()

    task = start_supervised("converting", loop, restart_delay=0.01)
    await asyncio.sleep(0.05)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert task in done, "still running after its cancel"
    assert task.cancelled()
    assert rounds == 1, "not restarted after the cancel"


async def test_a_loop_that_catches_errors_checks_cancel_requested() -> None:
    seen: list[bool] = []

    async def loop() -> None:
        while True:
            try:
                await call_that_converts_cancellation()
            except CallFailed:
                seen.append(cancel_requested())
                if seen[-1]:
                    raise asyncio.CancelledError from None

    task = start_supervised("checking", loop)
    await asyncio.sleep(0.05)
    assert not cancel_requested()
    await cancel_all([task])
    assert seen == [True]


async def test_a_crash_without_a_cancel_restarts() -> None:
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        rounds += 1
        if rounds < 3:
            raise CallFailed("boom")

    task = start_supervised("crashing", loop, restart_delay=0.01)
    async with asyncio.timeout(5):
        await task
    assert rounds == 3


async def test_cancel_all_keeps_the_callers_cancel_and_waits_for_every_task() -> None:
    stopped: list[str] = []

    async def slow_to_stop(name: str) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.05)
            stopped.append(name)

    async def failing_on_stop() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise RuntimeError("broke while stopping") from None

    tasks = [asyncio.create_task(slow_to_stop("a")), asyncio.create_task(failing_on_stop()),
             asyncio.create_task(slow_to_stop("b"))]
    await asyncio.sleep(0)
    caller = asyncio.create_task(cancel_all(tasks))
    await asyncio.sleep(0.01)
    caller.cancel()  # the caller's own stop, while it waits
    await asyncio.wait([caller])
    assert caller.cancelled(), "the caller's cancel must not be swallowed"
    assert sorted(stopped) == ["a", "b"], "every task has stopped before cancel_all ends"
    assert all(task.done() for task in tasks)


def test_paced_pause_sends_lone_news_at_once_and_a_burst_once_per_interval() -> None:
    assert paced_pause(last_sent=0.0, interval=0.1, first=0.005, now=100.0) == 0.005  # quiet
    assert paced_pause(last_sent=99.98, interval=0.1, first=0.005, now=100.0) == 99.98 + 0.1 - 100.0
    assert paced_pause(last_sent=99.9, interval=0.1, first=0.005, now=100.0) == 0.005
