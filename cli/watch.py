"""A client-side view of some services, their tasks and the nodes, kept current
from the controller's event stream (Control.Events) instead of polling.

Order of things, so that nothing is missed and nothing applied twice: the
stream is opened first (asking for the "sync" marker, which the controller
sends once this subscriber is registered), then the objects are read once
(GetService, ListTasks, ListNodes), then every event is applied on top. An
object's meta.version is its etcd revision, so an event no newer than what
the read returned is skipped.

The stream is read by a daemon thread into a queue, so that the waiting
thread can wait with a timeout (and be interrupted by Ctrl-C); closing the
feed cancels the call, which ends the thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb

from .client import Controller, RpcFailure, describe_rpc_error

SYNC = "sync"


class EventsUnavailable(Exception):
    """The controller has no event stream (an older one): poll instead."""


_END = object()


class EventFeed:
    """The events of one Control.Events call, handed over through a queue."""

    def __init__(self, ctl: Controller, request: cpb.EventsRequest) -> None:
        self._ctl = ctl
        self._queue: queue.Queue[object] = queue.Queue()
        self._call: Any = ctl.stub.Events(request)  # a grpc.Call too: cancel()
        self._thread = threading.Thread(target=self._read, name="swarmctl-events", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for batch in self._call:
                for event in batch.events:
                    self._queue.put(event)
        except grpc.RpcError as error:
            self._queue.put(error)
        finally:
            self._queue.put(_END)

    def next(self, timeout: float) -> cpb.Event | None:
        """The next event, or None when none came within timeout. Raises
        EventsUnavailable for a controller without events, RpcFailure when the
        stream failed or ended."""
        try:
            item = self._queue.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None
        if isinstance(item, cpb.Event):
            return item
        if isinstance(item, grpc.RpcError):
            if item.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise EventsUnavailable
            raise describe_rpc_error(item, self._ctl.target, self._ctl.timeout)
        raise RpcFailure(f"controller at {self._ctl.target} ended the events stream",
                         grpc.StatusCode.UNAVAILABLE)

    def drain(self) -> list[cpb.Event]:
        """Every event already queued (without waiting)."""
        found: list[cpb.Event] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return found
            if isinstance(item, cpb.Event):
                found.append(item)
            else:
                self._queue.put(item)  # an error or the end: for next() to report
                return found

    def wait_synced(self, timeout: float) -> None:
        """Until the controller has registered this subscriber."""
        while True:
            event = self.next(timeout)
            if event is None:
                raise RpcFailure(f"controller at {self._ctl.target} did not start the events "
                                 f"stream within {timeout:g}s", grpc.StatusCode.DEADLINE_EXCEEDED)
            if event.type == SYNC:
                return

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(5)


def watch_request() -> cpb.EventsRequest:
    """What a view of services, tasks and nodes needs: whole objects, live only."""
    return cpb.EventsRequest(types=["service", "task", "node"], with_objects=True,
                             sync_marker=True)


@dataclass
class View:
    """Services (those watched), their tasks, and every node."""

    service_ids: frozenset[str]
    services: dict[str, pb.Service] = field(default_factory=dict)
    tasks: dict[str, pb.Task] = field(default_factory=dict)
    nodes: dict[str, pb.Node] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)  # watched services that were removed

    def load(self, services: Iterable[pb.Service], tasks: Iterable[pb.Task],
             nodes: Iterable[pb.Node]) -> None:
        self.services.update((s.id, s) for s in services)
        self.tasks.update((t.id, t) for t in tasks if t.service_id in self.service_ids)
        self.nodes.update((n.id, n) for n in nodes)

    def apply(self, event: cpb.Event) -> bool:
        """Apply one event; whether it changed the view."""
        kind = event.WhichOneof("object")
        if kind == "service":
            if event.id not in self.service_ids:
                return False
            if event.action == "remove":
                self.removed.add(event.id)
                return True
            return _put(self.services, event.service)
        if kind == "task":
            if event.task.service_id not in self.service_ids:
                return False
            if event.action == "remove":
                return self.tasks.pop(event.id, None) is not None
            return _put(self.tasks, event.task)
        if kind == "node":
            if event.action == "remove":
                return self.nodes.pop(event.id, None) is not None
            return _put(self.nodes, event.node)
        return False

    def apply_all(self, events: Sequence[cpb.Event]) -> bool:
        changed = False
        for event in events:
            changed = self.apply(event) or changed
        return changed


def _put(objects: dict[str, pb.Service] | dict[str, pb.Task] | dict[str, pb.Node],
         obj: pb.Service | pb.Task | pb.Node) -> bool:
    current = objects.get(obj.id)
    if current is not None and current.meta.version >= obj.meta.version:
        return False  # the read already had this change (or a later one)
    objects[obj.id] = obj  # type: ignore[assignment]
    return True
