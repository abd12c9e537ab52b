"""The leader's lease is kept from a thread of its own (leadership.LeaseKeeper):
a busy event loop keeps leadership, a wedged one gives it up.

The leader runs in this process (so the test can hold its event loop); its
rival is a real controller process on the same etcd, ready to take the seat.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from swarm.controller.leadership import LeadershipSettings
from swarm.controller.server import Controller
from swarm.controller.store.keys import Keys
from tests.etcd_server import EtcdServer
from tests.integration.conftest import controller_config
from tests.processes import Proc, start_controller
from tests.waiting import eventually_async

TTL = 2  # seconds: the lease of both controllers


async def _leader(controller: Controller, prefix: str) -> str:
    _revision, kv = await controller.etcd.get(Keys(prefix).leader)
    return kv.value.decode() if kv is not None else ""


@pytest.fixture
def rival(etcd_server: EtcdServer, etcd_prefix: str) -> Iterator[list[Proc]]:
    """Started by the test once the in-process controller leads."""
    procs: list[Proc] = []
    try:
        yield procs
    finally:
        for proc in procs:
            proc.stop()


@contextlib.asynccontextmanager
async def _leading(etcd_server: EtcdServer, prefix: str, watchdog: float,
                   rival: list[Proc]) -> AsyncIterator[Controller]:
    config = dataclasses.replace(
        controller_config(etcd_server.endpoint, prefix, insecure=True),
        leadership=LeadershipSettings(lease_ttl=TTL, poll_interval=0.1, watchdog=watchdog))
    controller = Controller(config)
    await controller.start()
    try:
        leadership = controller.leadership
        assert leadership is not None

        async def leads() -> bool:
            return leadership.is_leader

        await eventually_async(leads, timeout=10, message="the in-process controller leads")
        rival.append(start_controller(etcd_server.endpoint, prefix, lease_ttl=TTL,
                                      insecure=True))
        yield controller
    finally:
        await controller.stop()


async def _record_lease(controller: Controller, prefix: str) -> int:
    """The lease of the controller's registry record (0: no record)."""
    assert controller.leadership is not None
    _revision, kv = await controller.etcd.get(
        Keys(prefix).controller(controller.leadership.identity))
    return int(kv.lease) if kv is not None else 0


async def test_a_busy_event_loop_keeps_leadership(
        etcd_server: EtcdServer, etcd_prefix: str, rival: list[Proc]) -> None:
    async with _leading(etcd_server, etcd_prefix, 30.0, rival) as controller:
        leadership = controller.leadership
        assert leadership is not None
        guard = leadership.guard
        record = await _record_lease(controller, etcd_prefix)
        assert record, "the controller is not registered"
        # Three lease TTLs without the loop running (a long pass at thousands
        # of nodes): a keep-alive on the loop would let the lease run out and
        # the rival (polling every 0.5 s) take the seat.
        time.sleep(3 * TTL)  # noqa: ASYNC251 - holding the event loop is the point
        assert await _leader(controller, etcd_prefix) == leadership.identity
        assert leadership.guard is guard, "leadership was lost and won again"
        # And it stays so once the loop runs again.
        await asyncio.sleep(2 * TTL)
        assert leadership.guard is guard
        assert await _leader(controller, etcd_prefix) == leadership.identity
        assert "elected leader" not in rival[0].log()
        # The registry record (controller ls, the agents' list) kept its lease too.
        assert await _record_lease(controller, etcd_prefix) == record


async def test_a_wedged_event_loop_loses_leadership_to_another_controller(
        etcd_server: EtcdServer, etcd_prefix: str, rival: list[Proc]) -> None:
    watchdog = 3.0
    async with _leading(etcd_server, etcd_prefix, watchdog, rival) as controller:
        leadership = controller.leadership
        assert leadership is not None
        # Wedged beyond the watchdog: the keeper gives the lease up (revokes it)
        # and the rival is elected meanwhile, while this loop still sleeps.
        time.sleep(watchdog + 2 * TTL + 1)  # noqa: ASYNC251 - a wedged loop is the point
        assert await _leader(controller, etcd_prefix) == rival[0].addr

        async def stepped_down() -> bool:
            return not leadership.is_leader

        await eventually_async(stepped_down, timeout=5, message="the wedged leader steps down")
        assert await _leader(controller, etcd_prefix) == rival[0].addr
