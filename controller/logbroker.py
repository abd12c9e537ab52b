"""The log broker, on the leader: joins `swarmctl service logs` to the agents
that hold the logs (as SwarmKit's logbroker does).

A ServiceLogs call becomes a subscription: the service's tasks, grouped by
the node they were assigned to, and the caller's options (follow, tail,
since). The broker pushes it to each of those nodes' agents over their
ListenSubscriptions stream (an agent connects out to the controller that
serves its session; a follower relays the stream to the leader, see
controller/dispatcher/service.py; the leader never dials agents). Each agent
answers on a PublishLogs stream of its own for that subscription, and the
broker passes the lines on to the caller.

Bounded everywhere:
- one queue of at most `buffer_batches` batches per subscription; a
  publisher waits when it is full, so a slow caller slows the agents down
  (through gRPC flow control) instead of filling the leader's memory;
- at most `max_subscriptions` at once (RESOURCE_EXHAUSTED beyond);
- messages are checked: at most `max_line_bytes` of data per line, only the
  tasks the subscription named for that node.

Without follow, the call ends once every node involved has sent its `close`;
a node that is not connected is reported at once, one that has not started
answering after `answer_timeout` is reported and given up (the caller prints
these as warnings). With follow, the broker also adds the service's new tasks
(a replaced or scaled-up task) to the subscription, and a node that
(re)connects gets the subscription again, resuming after the newest line
already received from it (one time per node, not per task: a line another
of its tasks wrote during the agent's last polling pass, older than that,
can be missed). When the caller goes away (its call is
cancelled), the subscription is closed: the agents are told to stop, and
their publishing streams are ended.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc

from swarm.api.v1 import logs_pb2 as lpb
from swarm.api.v1 import objects_pb2 as pb

from .ids import new_id
from .store import Change, Store, TaskChange

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LogBrokerSettings:
    buffer_batches: int = 8  # per subscription; a batch holds up to about 256 KiB
    max_subscriptions: int = 128
    max_line_bytes: int = 16 * 1024
    max_batch_lines: int = 2000
    answer_timeout: float = 5.0  # without follow: for a node to start answering


class SubscriptionRefused(Exception):
    """The broker cannot take the subscription (not leading, or too many)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class PublishRefused(Exception):
    """A publisher sent something it must not; ends its stream."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _logs_of(task: pb.Task) -> bool:
    """Whether a task may have a container (hence logs) on its node."""
    return bool(task.node_id) and task.status.state >= pb.ASSIGNED


@dataclass
class _Subscription:
    id: str
    service_id: str
    options: lpb.LogOptions
    tasks: dict[str, set[str]]  # node -> its tasks in this subscription
    queue: asyncio.Queue[list[lpb.LogMessage]]
    initial: frozenset[str] = frozenset()  # the nodes at the start
    waiting: set[str] = field(default_factory=set)  # nodes yet to close (without follow)
    started: set[str] = field(default_factory=set)  # nodes whose publishing began
    errors: list[lpb.NodeLogError] = field(default_factory=list)  # not yet given to the caller
    reported: set[str] = field(default_factory=set)  # nodes with an error given already
    newest: dict[str, int] = field(default_factory=dict)  # node -> newest line's time (ns)
    publishers: dict[str, asyncio.Task[object]] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    aborted: str = ""
    received: int = 0  # lines from the agents so far

    @property
    def follow(self) -> bool:
        return self.options.follow

    def wants(self, node_id: str) -> bool:
        """Whether lines from this node are (still) expected."""
        return node_id in self.tasks and (self.follow or node_id in self.waiting)

    def message_for(self, node_id: str) -> lpb.SubscriptionMessage:
        """The subscription as this node's agent is to run it (again)."""
        options = lpb.LogOptions()
        options.CopyFrom(self.options)
        newest = self.newest.get(node_id)
        if newest is not None:
            # A reconnected agent starts again after what it sent already.
            options.ClearField("tail")
            since = max(newest + 1, options.since.ToNanoseconds() if options.HasField("since")
                        else 0)
            options.since.FromNanoseconds(since)
        elif node_id not in self.initial:
            options.ClearField("tail")  # its tasks are new since the call: all of it is new
        return lpb.SubscriptionMessage(id=self.id, service_id=self.service_id,
                                       task_ids=sorted(self.tasks.get(node_id, ())),
                                       options=options)

    def fail(self, node_id: str, message: str) -> None:
        self.waiting.discard(node_id)
        if node_id not in self.reported:
            self.reported.add(node_id)
            self.errors.append(lpb.NodeLogError(node_id=node_id, message=message))
        self.wake.set()

    def finish(self, node_id: str) -> None:
        self.waiting.discard(node_id)
        self.wake.set()


@dataclass
class _Listener:
    node_id: str
    pending: dict[str, lpb.SubscriptionMessage] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    def push(self, message: lpb.SubscriptionMessage) -> None:
        self.pending[message.id] = message  # latest wins: bounded by the subscriptions
        self.wake.set()

    def close(self) -> None:
        self.closed = True
        self.wake.set()


class LogBroker:
    def __init__(self, store: Store, settings: LogBrokerSettings | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self.settings = settings or LogBrokerSettings()
        self._clock = clock
        self._leading = False
        self._subscriptions: dict[str, _Subscription] = {}
        self._listeners: dict[str, _Listener] = {}
        store.cache.subscribe(self._on_change)

    @property
    def subscriptions(self) -> int:
        """How many subscriptions are open (tests and metrics)."""
        return len(self._subscriptions)

    @property
    def leading(self) -> bool:
        return self._leading

    async def serve_as_leader(self) -> None:
        """Accept subscriptions until cancelled (leadership lost): then every
        open one ends, its caller told to ask again."""
        self._leading = True
        try:
            await asyncio.Future()
        finally:
            self._leading = False
            for subscription in list(self._subscriptions.values()):
                subscription.aborted = "this controller stopped leading; run the command again"
                subscription.wake.set()
            for listener in self._listeners.values():
                listener.close()
            self._listeners.clear()

    # ------------------------------------------------------------ the caller's side

    async def subscribe(self, service: pb.Service, options: lpb.LogOptions
                        ) -> AsyncGenerator[lpb.ServiceLogsMessage, None]:
        """The lines of the service's tasks, batch by batch. Raises
        SubscriptionRefused; ends (without follow) once every node answered or
        was given up. Closing the generator closes the subscription."""
        if not self._leading:
            raise SubscriptionRefused(grpc.StatusCode.FAILED_PRECONDITION,
                                      "this controller is not the leader")
        if len(self._subscriptions) >= self.settings.max_subscriptions:
            raise SubscriptionRefused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                      f"too many log streams open ({len(self._subscriptions)}); "
                                      "try again later")
        tasks: dict[str, set[str]] = {}
        for task in self._store.cache.tasks_by_service.get(service.id, {}).values():
            if _logs_of(task):
                tasks.setdefault(task.node_id, set()).add(task.id)
        subscription = _Subscription(id=new_id(), service_id=service.id, options=options,
                                     tasks=tasks, initial=frozenset(tasks),
                                     queue=asyncio.Queue(maxsize=self.settings.buffer_batches))
        self._subscriptions[subscription.id] = subscription
        log.info("log subscription %s opened: service %s, %d task(s) on %d node(s)%s",
                 subscription.id, service.spec.name, sum(len(t) for t in tasks.values()),
                 len(tasks), ", following" if options.follow else "")
        try:
            for node_id in sorted(tasks):
                listener = self._listeners.get(node_id)
                if listener is None:
                    subscription.fail(node_id, "the node is not connected (down?): its logs "
                                               "are missing")
                    if options.follow:
                        subscription.reported.discard(node_id)  # say so again if it fails later
                    continue
                subscription.waiting.add(node_id)
                listener.push(subscription.message_for(node_id))
            async for message in self._stream(subscription):
                yield message
        finally:
            self._close(subscription)

    async def _stream(self, subscription: _Subscription) -> AsyncIterator[lpb.ServiceLogsMessage]:
        deadline = self._clock() + self.settings.answer_timeout
        while True:
            subscription.wake.clear()
            if subscription.errors:
                errors, subscription.errors = subscription.errors, []
                yield lpb.ServiceLogsMessage(node_errors=errors)
                continue
            if not subscription.queue.empty():
                yield lpb.ServiceLogsMessage(messages=subscription.queue.get_nowait())
                continue
            if subscription.aborted:
                raise SubscriptionRefused(grpc.StatusCode.UNAVAILABLE, subscription.aborted)
            silent = subscription.waiting - subscription.started
            if not subscription.follow and not subscription.waiting:
                return
            timeout = max(0.0, deadline - self._clock()) if silent else None
            try:
                await asyncio.wait_for(subscription.wake.wait(), timeout)
            except TimeoutError:
                for node_id in sorted(silent):
                    subscription.fail(node_id, f"the node did not answer within "
                                               f"{self.settings.answer_timeout:g}s: its logs "
                                               "are missing")
                    subscription.waiting.discard(node_id)

    def _close(self, subscription: _Subscription) -> None:
        if self._subscriptions.pop(subscription.id, None) is None:
            return
        for node_id in subscription.tasks:
            listener = self._listeners.get(node_id)
            if listener is not None:
                listener.push(lpb.SubscriptionMessage(id=subscription.id, close=True))
        for publisher in subscription.publishers.values():
            publisher.cancel()
        log.info("log subscription %s closed (%d lines received)", subscription.id,
                 subscription.received)

    # ------------------------------------------------------------ the agents' side

    async def listen(self, node_id: str) -> AsyncGenerator[lpb.SubscriptionMessage, None]:
        """The subscriptions of one node's agent: the open ones now, then new
        ones, updates and closes. A newer stream of the node replaces this one."""
        listener = _Listener(node_id)
        previous = self._listeners.get(node_id)
        if previous is not None:
            previous.close()
        self._listeners[node_id] = listener
        for subscription in self._subscriptions.values():
            if subscription.wants(node_id) and (subscription.follow
                                                or node_id not in subscription.started):
                subscription.reported.discard(node_id)
                listener.push(subscription.message_for(node_id))
        try:
            while True:
                await listener.wake.wait()
                listener.wake.clear()
                if listener.closed:
                    return
                pending, listener.pending = listener.pending, {}
                for message in pending.values():
                    yield message
        finally:
            if self._listeners.get(node_id) is listener:
                del self._listeners[node_id]

    async def publish(self, node_id: str, first: lpb.PublishLogsMessage,
                      rest: AsyncIterator[lpb.PublishLogsMessage]) -> None:
        """One node's lines for one subscription, until its `close`, the end
        of its stream, or the end of the subscription (then cancelled).
        Raises PublishRefused for a message it must not send."""
        subscription = self._subscriptions.get(first.subscription_id)
        if subscription is None or not subscription.wants(node_id):
            return  # closed already (or not this node's): the agent stops
        current = asyncio.current_task()
        assert current is not None
        previous = subscription.publishers.get(node_id)
        if previous is not None and previous is not current:
            previous.cancel()  # the agent started over (a new session)
        subscription.publishers[node_id] = current
        subscription.started.add(node_id)
        subscription.wake.set()
        allowed = subscription.tasks[node_id]  # live: grows when a followed service does
        closed = False
        try:
            message: lpb.PublishLogsMessage | None = first
            while message is not None:
                if message.messages:
                    batch = self._checked(subscription, node_id, allowed, message)
                    await subscription.queue.put(batch)
                    subscription.wake.set()
                if message.error:
                    subscription.fail(node_id, f"the node cannot send its logs: "
                                               f"{message.error[:200]}")
                    break
                if message.close:
                    closed = True
                    break
                message = await anext(rest, None)
        except PublishRefused as error:
            subscription.fail(node_id, f"the node sent bad log messages: {error}")
            raise
        finally:
            if subscription.publishers.get(node_id) is current:
                del subscription.publishers[node_id]
                if closed:
                    subscription.finish(node_id)
                elif not subscription.follow and node_id in subscription.waiting:
                    subscription.fail(node_id, "the node stopped sending before the end: "
                                               "its logs are incomplete")

    def _checked(self, subscription: _Subscription, node_id: str, allowed: set[str],
                 message: lpb.PublishLogsMessage) -> list[lpb.LogMessage]:
        if len(message.messages) > self.settings.max_batch_lines:
            raise PublishRefused(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"{len(message.messages)} lines in one message "
                                 f"(at most {self.settings.max_batch_lines})")
        newest = subscription.newest.get(node_id, 0)
        for line in message.messages:
            if line.context.task_id not in allowed:
                raise PublishRefused(grpc.StatusCode.PERMISSION_DENIED,
                                     f"task {line.context.task_id!r} is not in the subscription "
                                     f"for node {node_id}")
            if len(line.data) > self.settings.max_line_bytes:
                raise PublishRefused(grpc.StatusCode.INVALID_ARGUMENT,
                                     f"a line of {len(line.data)} bytes (at most "
                                     f"{self.settings.max_line_bytes})")
            # What the caller sees of the origin is what the leader knows, not what was claimed.
            line.context.node_id = node_id
            line.context.service_id = subscription.service_id
            newest = max(newest, line.timestamp.ToNanoseconds())
        subscription.newest[node_id] = newest
        subscription.received += len(message.messages)
        return list(message.messages)

    # ------------------------------------------------------------ followed services

    def _on_change(self, change: Change) -> None:
        match change:
            case TaskChange(new=task) if task is not None and self._subscriptions:
                self._follow(task)

    def _follow(self, task: pb.Task) -> None:
        """A followed service's task that has logs: its node is told to send them."""
        if not _logs_of(task):
            return
        for subscription in self._subscriptions.values():
            if not subscription.follow or subscription.service_id != task.service_id:
                continue
            tasks = subscription.tasks.setdefault(task.node_id, set())
            if task.id in tasks:
                continue
            tasks.add(task.id)
            listener = self._listeners.get(task.node_id)
            if listener is not None:
                listener.push(subscription.message_for(task.node_id))
