"""Pure parts of the event stream: how a change is described and filtered, and how
the client's view applies events (never going back to an older version)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli.events import event_line
from swarm.cli.watch import View
from swarm.controller.api.events import (
    EventFilter,
    EventLog,
    Record,
    describe,
    parse_request,
    to_event,
)
from swarm.controller.store.cache import ServiceChange, TaskChange, WatchCache
from swarm.controller.store.keys import Keys


def _service(replicas: int, version: int) -> pb.Service:
    service = pb.Service(id="s1", spec=pb.ServiceSpec(
        name="web", replicated=pb.ReplicatedService(replicas=replicas)))
    service.spec.task.container.image = "busybox"
    service.meta.version = version
    return service


def _task(state: int, version: int) -> pb.Task:
    task = pb.Task(id="t1", service_id="s1", service_name="web", slot=2, node_id="n1",
                   desired_state=pb.RUNNING)
    task.status.state = state  # type: ignore[assignment]
    task.meta.version = version
    return task


def test_a_scale_is_an_update_with_old_and_new_replicas() -> None:
    record = describe(ServiceChange("s1", _service(2, 5), _service(3, 6)), now=10.0)
    assert (record.type, record.action, record.name, record.revision) == \
        ("service", "update", "web", 6)
    assert record.attributes["replicas.old"] == "2"
    assert record.attributes["replicas.new"] == "3"
    assert record.attributes["image"] == "busybox"
    created = describe(ServiceChange("s1", None, _service(2, 5)), now=10.0)
    assert created.action == "create"
    assert created.attributes["replicas"] == "2"


def test_a_task_transition_names_both_states_and_its_service() -> None:
    record = describe(TaskChange("t1", _task(pb.ASSIGNED, 7), _task(pb.RUNNING, 8)), 1.0)
    assert record.name == "web.2"
    assert record.service == "web"
    assert record.attributes["state.old"] == "assigned"
    assert record.attributes["state.new"] == "running"
    event = to_event(record, with_object=True)
    assert event.task.status.state == pb.RUNNING
    assert event_line(event).startswith("1970-01-01T00:00:01.000000000Z task update t1 (")
    assert "name=web.2" in event_line(event)
    assert "state.new=running" in event_line(event)
    assert not to_event(record, with_object=False).HasField("task")


def test_filters_match_type_name_service_and_id_prefix() -> None:
    task = describe(TaskChange("t1", None, _task(pb.NEW, 1)), now=5.0)
    service = describe(ServiceChange("s1", None, _service(1, 1)), now=5.0)
    by_name = EventFilter(names=("web",))
    assert by_name.matches(task)
    assert by_name.matches(service)
    assert EventFilter(names=("t",)).matches(task)
    assert not EventFilter(types=frozenset({"node"})).matches(task)
    assert not EventFilter(since=6.0).matches(task)


def test_bad_requests_name_the_field() -> None:
    with pytest.raises(ValueError, match="types: unknown type 'volume'"):
        parse_request(cpb.EventsRequest(types=["volume"]))
    request = cpb.EventsRequest()
    request.since.FromSeconds(10)
    request.until.FromSeconds(5)
    with pytest.raises(ValueError, match="until"):
        parse_request(request)


def test_the_view_skips_events_it_has_already_read() -> None:
    view = View(frozenset({"s1"}))
    view.load([_service(3, 9)], [_task(pb.RUNNING, 8)], [])
    old = cpb.Event(type="service", action="update", id="s1", service=_service(2, 5))
    assert not view.apply(old)
    assert view.services["s1"].spec.replicated.replicas == 3
    newer = cpb.Event(type="task", action="update", id="t1", task=_task(pb.FAILED, 10))
    assert view.apply(newer)
    assert view.tasks["t1"].status.state == pb.FAILED
    other = cpb.Event(type="task", action="create", id="t2",
                      task=pb.Task(id="t2", service_id="elsewhere"))
    assert not view.apply(other)
    assert "t2" not in view.tasks
    assert view.apply(cpb.Event(type="service", action="remove", id="s1",
                                service=_service(3, 9)))
    assert view.removed == {"s1"}


def _log(clock: list[float]) -> tuple[WatchCache, EventLog]:
    cache = WatchCache(None, Keys("/t/"))  # type: ignore[arg-type]  # applied by hand, no etcd
    log = EventLog(cache, window=60.0, clock=lambda: clock[0])
    _put(cache, pb.Service(id="s0", spec=pb.ServiceSpec(name="old")), 1)  # the first list
    cache.synced.set()
    return cache, log


def _put(cache: WatchCache, service: pb.Service, revision: int) -> None:
    cache.apply_committed([(Keys("/t/").of(service), service.SerializeToString())], [],
                          revision)


async def _collect(stream: AsyncIterator[list[Record]], count: int) -> list[Record]:
    found: list[Record] = []
    async for batch in stream:
        found.extend(batch)
        if len(found) >= count:
            break
    return found


async def test_replay_window_until_and_live_batches() -> None:
    clock = [1000.0]
    cache, log = _log(clock)
    _put(cache, _service(1, 0), 5)  # at 1000
    clock[0] = 1050.0
    _put(cache, _service(2, 0), 6)  # at 1050
    clock[0] = 1070.0  # the first is now outside the 60 s window

    replayed = [r async for batch in log.stream(EventFilter(since=0.0, until=1069.0))
                for r in batch]
    # Not the first list's load, nor what fell out of the window.
    assert [(r.action, r.attributes.get("replicas.new")) for r in replayed] == [("update", "2")]

    live = log.stream(EventFilter())
    first = asyncio.ensure_future(_collect(live, 3))
    await asyncio.sleep(0)  # subscribed
    for replicas, revision in ((3, 7), (4, 8), (5, 9)):
        _put(cache, _service(replicas, 0), revision)
    records = await asyncio.wait_for(first, 1)
    assert [r.revision for r in records] == [7, 8, 9]
    assert log.delivered == 3
    await live.aclose()  # type: ignore[attr-defined]
    assert log.subscribers == 0
