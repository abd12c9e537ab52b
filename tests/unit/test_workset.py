"""The work set of the allocator's and the scheduler's loops: parked tasks
wait for a change; a burst of changes is one batch."""

from __future__ import annotations

import asyncio

from swarm.controller.workset import WorkSet


async def test_a_burst_is_one_batch_and_parked_tasks_wait_for_a_change() -> None:
    work = WorkSet(batch_window=0.01)
    work.reset(["a"])
    work.want("b")
    assert await work.next_batch() == {"a", "b"}

    work.park(["b"])  # looked at; could not be handled
    work.want("b")  # a change of b itself does not bring it back
    work.want("c")
    assert await work.next_batch() == {"c"}

    work.retry_parked()  # what b waits for changed
    assert await work.next_batch() == {"b"}
    assert not work.parked

    work.park(["d"])
    work.retry(["d"])  # its pass's write failed: again at once, parked or not
    work.want("e")
    work.drop("e")  # needs nothing any more
    assert await work.next_batch() == {"d"}


async def test_next_batch_waits_for_work() -> None:
    work = WorkSet(batch_window=0.0)
    waiting = asyncio.create_task(work.next_batch())
    await asyncio.sleep(0.02)
    assert not waiting.done()
    work.want("x")
    assert await asyncio.wait_for(waiting, 1) == {"x"}
