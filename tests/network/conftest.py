"""Fixtures for the data-plane tests: simulated hosts from cli/dev/hosts.py.

They need root (network namespaces, netlink). CI runs them as root; elsewhere
they are skipped when not root. In CI (CI set) nothing is skipped: a missing
privilege fails loudly instead."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from swarm.cli.dev.hosts import Hosts, cleanup_stale


def require_root() -> None:
    if os.environ.get("CI"):
        return
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces and netlink (CI runs it as root)")


@pytest.fixture(scope="session", autouse=True)
def _stale_namespaces() -> None:
    # Leftovers of runs killed before their teardown (their pid is gone).
    if os.geteuid() == 0:
        cleanup_stale()


async def _hosts(count: int) -> AsyncIterator[Hosts]:
    require_root()
    hosts = await asyncio.to_thread(Hosts.create, count)
    try:
        yield hosts
    finally:
        await asyncio.to_thread(hosts.teardown)
        leftover = hosts.namespaces()
        assert not leftover, f"teardown left namespaces: {leftover}"


@pytest.fixture
async def hosts3() -> AsyncIterator[Hosts]:
    async for hosts in _hosts(3):
        yield hosts


@pytest.fixture
async def hosts2() -> AsyncIterator[Hosts]:
    async for hosts in _hosts(2):
        yield hosts
