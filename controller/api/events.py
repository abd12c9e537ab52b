"""The event stream (Control.Events, `swarmctl events`): every change of the
cluster's objects as the controller's watch cache sees it.

The watch cache already hears every change (snapshot, then watch; a re-list
after a lost watch emits the difference), so the events are its changes,
described as `docker events` shows them: TYPE ACTION ID (attributes). Any
controller, leader or not, serves them from its own cache.

Replay: the EventLog keeps the changes of the last `window` seconds (at most
`capacity` of them) in a ring, so that `--since 10m` can show what happened
before the command ran. A record holds references to the cache's objects
before and after the change (never mutated, see store/cache.py; one record's
"after" is the next one's "before"), so the ring costs little more than the
objects since replaced; the attributes and the proto Event are worked out when
sent, so a write costs the cache a few attribute reads when nobody watches.

A subscriber is registered and the ring copied in one step (no await in
between), so that replay and live events neither overlap nor leave a gap. A
subscriber that cannot keep up (its queue over `queue_limit`) is cut off with
RESOURCE_EXHAUSTED rather than slowing the cache (which calls listeners
synchronously) or growing without bound.

Events are sent in batches: whatever a subscriber has queued when its stream
is written goes in one message. Under a burst (a thousand tasks changing while
the leader's loops keep the event loop busy) one write per event would need a
turn of the loop each, and the stream would fall behind by seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb

from ..store.cache import (
    Change,
    ClusterChange,
    ConfigChange,
    NetworkChange,
    NodeChange,
    SecretChange,
    ServiceChange,
    TaskChange,
    WatchCache,
)
from .errors import Context, Exhausted, InvalidArgument, Unavailable

DEFAULT_WINDOW = 15 * 60.0  # seconds of events kept for --since
DEFAULT_CAPACITY = 50_000  # events kept at most, whatever the window
DEFAULT_QUEUE_LIMIT = 100_000  # events one subscriber may be behind before it is cut off
DEFAULT_BATCH = 500  # events in one stream message at most
# The types a client may filter by; kinds the cache does not hold yet (secret,
# config) are accepted so that clients need not know this controller's age.
EVENT_TYPES = ("service", "task", "node", "network", "cluster", "secret", "config")
SYNC = "sync"


@dataclass(eq=False)  # not frozen: made on every write, and a frozen init costs twice
class Record:
    """One change as kept in the ring: what an Event is built from. Only what
    filtering needs is worked out when the change happens (it happens on every
    write, subscribers or not); the rest when the event is sent."""

    time: float  # time.time() when the cache applied it
    type: str
    action: str
    id: str
    old: object | None
    new: object | None

    @property
    def obj(self) -> object | None:
        """The object after the change (before it, for a remove)."""
        return self.new if self.new is not None else self.old

    @cached_property
    def name(self) -> str:
        return object_name(self.obj) if self.obj is not None else ""

    @property
    def service(self) -> str:
        """A task's service name (the name filter matches it)."""
        obj = self.obj
        return obj.service_name if isinstance(obj, pb.Task) else ""

    @property
    def revision(self) -> int:
        """The etcd revision of the change (of the object's last write, for a remove)."""
        version = getattr(getattr(self.obj, "meta", None), "version", 0)
        return version if isinstance(version, int) else 0

    @cached_property
    def attributes(self) -> Mapping[str, str]:
        return attributes_of(self.old, self.new)


# ---------------------------------------------------------------- describing a change


def _enum(enum_name: Callable[[Any], str], value: int) -> str:
    return enum_name(value).lower()


def _task_name(task: pb.Task) -> str:
    return f"{task.service_name}.{task.slot}" if task.slot else \
        f"{task.service_name}.{task.node_id}"


def object_name(obj: object) -> str:
    """The name an operator knows an object by."""
    if isinstance(obj, pb.Task):
        return _task_name(obj)
    if isinstance(obj, pb.Node):
        return obj.description.hostname
    spec = getattr(obj, "spec", None)
    name = getattr(spec, "name", "")
    return name if isinstance(name, str) else ""


def _changed(attributes: dict[str, str], key: str, old: str | None, new: str) -> None:
    """key=new always; key.old/key.new as docker does when it changed."""
    if old is not None and old != new:
        attributes[f"{key}.old"] = old
        attributes[f"{key}.new"] = new
    else:
        attributes[key] = new


def _replicas(service: pb.Service) -> str:
    mode = service.spec.WhichOneof("mode")
    if mode in ("global", "global_job"):
        return "global"
    if mode == "replicated_job":
        return str(service.spec.replicated_job.total_completions)
    return str(service.spec.replicated.replicas)


def attributes_of(old: object | None, new: object | None) -> dict[str, str]:
    """What an event says about the change (docker's attribute names where it has them)."""
    obj = new if new is not None else old
    attributes: dict[str, str] = {}
    if isinstance(obj, pb.Service):
        was = old if isinstance(old, pb.Service) and new is not None else None
        _changed(attributes, "image", was.spec.task.container.image if was else None,
                 obj.spec.task.container.image)
        _changed(attributes, "replicas", _replicas(was) if was else None, _replicas(obj))
        state = _enum(pb.UpdateStatus.State.Name, obj.update_status.state)
        if was is not None and was.update_status.state != obj.update_status.state:
            attributes["updatestate.old"] = _enum(pb.UpdateStatus.State.Name,
                                                  was.update_status.state)
            attributes["updatestate.new"] = state
    elif isinstance(obj, pb.Task):
        was_task = old if isinstance(old, pb.Task) and new is not None else None
        attributes["service"] = obj.service_name
        if obj.node_id:
            attributes["node"] = obj.node_id
        _changed(attributes, "state",
                 _enum(pb.TaskState.Name, was_task.status.state) if was_task else None,
                 _enum(pb.TaskState.Name, obj.status.state))
        _changed(attributes, "desired",
                 _enum(pb.TaskState.Name, was_task.desired_state) if was_task else None,
                 _enum(pb.TaskState.Name, obj.desired_state))
        if obj.status.err:
            attributes["error"] = obj.status.err
        elif obj.status.message:
            attributes["message"] = obj.status.message
    elif isinstance(obj, pb.Node):
        was_node = old if isinstance(old, pb.Node) and new is not None else None
        _changed(attributes, "state",
                 _enum(pb.NodeStatus.State.Name, was_node.status.state) if was_node else None,
                 _enum(pb.NodeStatus.State.Name, obj.status.state))
        _changed(attributes, "availability",
                 _enum(pb.NodeSpec.Availability.Name, was_node.spec.availability)
                 if was_node else None,
                 _enum(pb.NodeSpec.Availability.Name, obj.spec.availability))
        _changed(attributes, "role",
                 _enum(pb.NodeSpec.Role.Name, was_node.spec.role) if was_node else None,
                 _enum(pb.NodeSpec.Role.Name, obj.spec.role))
    elif isinstance(obj, pb.Network):
        attributes["driver"] = obj.spec.driver or "overlay"
    return attributes


def describe(change: Change, now: float) -> Record:
    """The event for one change of the watch cache."""
    action = "create" if change.old is None else "remove" if change.new is None else "update"
    return Record(time=now, type=_TYPE_OF[type(change)], action=action, id=change.object_id,
                  old=change.old, new=change.new)


# The event type of each change record, as docker names them.
_TYPE_OF: dict[type[Change], str] = {
    NodeChange: "node", ServiceChange: "service", TaskChange: "task", NetworkChange: "network",
    ClusterChange: "cluster", SecretChange: "secret", ConfigChange: "config",
}


# ---------------------------------------------------------------- filtering


@dataclass(frozen=True)
class EventFilter:
    types: frozenset[str] = frozenset()
    names: tuple[str, ...] = ()
    since: float | None = None
    until: float | None = None

    def matches(self, record: Record) -> bool:
        if self.types and record.type not in self.types:
            return False
        if self.names and not any(
                wanted in (record.name, record.service) or record.id.startswith(wanted)
                for wanted in self.names):
            return False
        return self.since is None or record.time >= self.since


def _seconds(stamp: Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


def parse_request(request: cpb.EventsRequest) -> EventFilter:
    """The request's filter; raises ValueError naming the bad field."""
    unknown = sorted(set(request.types) - set(EVENT_TYPES))
    if unknown:
        raise ValueError(f"types: unknown type {unknown[0]!r} (one of {', '.join(EVENT_TYPES)})")
    if any(not name for name in request.names):
        raise ValueError("names: must not be empty")
    since = _seconds(request.since) if request.HasField("since") else None
    until = _seconds(request.until) if request.HasField("until") else None
    if since is not None and until is not None and until < since:
        raise ValueError("until: must not be before since")
    return EventFilter(types=frozenset(request.types), names=tuple(request.names),
                       since=since, until=until)


def to_event(record: Record, *, with_object: bool) -> cpb.Event:
    event = cpb.Event(type=record.type, action=record.action, id=record.id, name=record.name,
                      attributes=record.attributes, revision=record.revision)
    event.time.FromNanoseconds(int(record.time * 1e9))
    if with_object:
        obj = record.obj
        if isinstance(obj, pb.Service):
            event.service.CopyFrom(obj)
        elif isinstance(obj, pb.Task):
            event.task.CopyFrom(obj)
        elif isinstance(obj, pb.Node):
            event.node.CopyFrom(obj)
        elif isinstance(obj, pb.Network):
            event.network.CopyFrom(obj)
    return event


# ---------------------------------------------------------------- the log


class SubscriberTooSlow(Exception):
    pass


@dataclass(eq=False)
class _Subscriber:
    queue: deque[Record] = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    overflowed: bool = False


class EventLog:
    """The ring of recent events and the live subscribers; fed by the watch cache."""

    def __init__(self, cache: WatchCache, *, window: float = DEFAULT_WINDOW,
                 capacity: int = DEFAULT_CAPACITY, queue_limit: int = DEFAULT_QUEUE_LIMIT,
                 clock: Callable[[], float] = time.time) -> None:
        self._window = window
        self._ring: deque[Record] = deque(maxlen=capacity)
        self._subscribers: set[_Subscriber] = set()
        self._queue_limit = queue_limit
        self._clock = clock
        self.delivered = 0  # events handed to subscribers, for metrics
        self._synced = cache.synced
        self._unsubscribe = cache.subscribe(self._on_change)

    def close(self) -> None:
        self._unsubscribe()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def _on_change(self, change: Change) -> None:
        if not self._synced.is_set():
            return  # the first list loads what exists: no event happened
        now = self._clock()
        record = describe(change, now)
        ring = self._ring
        ring.append(record)
        horizon = now - self._window
        while ring and ring[0].time < horizon:
            ring.popleft()
        for subscriber in self._subscribers:
            if subscriber.overflowed:
                continue
            if len(subscriber.queue) >= self._queue_limit:
                subscriber.overflowed = True
            else:
                subscriber.queue.append(record)
            subscriber.ready.set()

    def recent(self) -> list[Record]:
        horizon = self._clock() - self._window
        return [record for record in self._ring if record.time >= horizon]

    async def stream(self, wanted: EventFilter, *, sync_marker: bool = False,
                     batch: int = DEFAULT_BATCH) -> AsyncIterator[list[Record]]:
        """Replayed then live records matching `wanted`, until its `until`, in
        batches of at most `batch` (whatever is ready at once)."""
        subscriber = _Subscriber()
        self._subscribers.add(subscriber)
        until = wanted.until
        try:
            replay = self.recent() if wanted.since is not None else []
            if until is not None:
                replay = [record for record in replay if record.time <= until]
            matching = [record for record in replay if wanted.matches(record)]
            for start in range(0, len(matching), batch):
                yield matching[start:start + batch]
            if until is not None and until <= self._clock():
                return
            if sync_marker:
                yield [Record(time=self._clock(), type=SYNC, action="", id="", old=None,
                              new=None)]
            while True:
                found: list[Record] = []
                ended = False
                while subscriber.queue and len(found) < batch:
                    record = subscriber.queue.popleft()
                    if until is not None and record.time > until:
                        ended = True
                        break
                    if wanted.matches(record):
                        found.append(record)
                if found:
                    self.delivered += len(found)
                    yield found
                if ended:
                    return
                if subscriber.queue:
                    continue
                if subscriber.overflowed:
                    raise SubscriberTooSlow
                subscriber.ready.clear()
                if until is None:
                    await subscriber.ready.wait()
                else:
                    left = until - self._clock()
                    if left <= 0:
                        return
                    try:
                        async with asyncio.timeout(left):
                            await subscriber.ready.wait()
                    except TimeoutError:
                        return
        finally:
            self._subscribers.discard(subscriber)


async def serve_events(log: EventLog | None, request: cpb.EventsRequest,
                       context: Context) -> AsyncIterator[cpb.EventsResponse]:
    """Control.Events: validate, then stream until `until` or the caller hangs up."""
    if log is None:
        raise Unavailable("this controller keeps no events")
    try:
        wanted = parse_request(request)
    except ValueError as error:
        raise InvalidArgument(str(error)) from None
    try:
        async for records in log.stream(wanted, sync_marker=request.sync_marker):
            yield cpb.EventsResponse(events=[to_event(record, with_object=request.with_objects)
                                             for record in records])
    except SubscriberTooSlow:
        raise Exhausted("this events stream fell too far behind and was closed; reconnect "
                        "(with --since to replay what was missed)") from None



class Events:
    """The control API's Events RPC, a mixin of ControlServicer; the server
    sets `events` (its EventLog)."""

    events: EventLog | None = None

    async def Events(self, request: cpb.EventsRequest,
                     context: Context) -> AsyncIterator[cpb.EventsResponse]:
        async for event in serve_events(self.events, request, context):
            yield event
