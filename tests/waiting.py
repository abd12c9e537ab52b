"""Waiting for a condition in tests, without fixed sleeps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def eventually(condition: Callable[[], bool], timeout: float = 10.0,
                     message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not reached within {timeout}s")
        await asyncio.sleep(0.02)


async def eventually_async(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0,
                           message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not reached within {timeout}s")
        await asyncio.sleep(0.05)


def until(mismatch: Callable[[], str], timeout: float = 10.0, interval: float = 0.2) -> None:
    """Blocking (for synchronous tests): poll until mismatch() returns '';
    it describes what is still wrong, and the failure reports its last word."""
    deadline = time.monotonic() + timeout
    while problem := mismatch():
        if time.monotonic() > deadline:
            raise AssertionError(f"not settled within {timeout}s: {problem}")
        time.sleep(interval)
