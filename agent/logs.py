"""Log subscriptions on the agent: the leader asks for the output of some of
this node's tasks; the agent reads their conmon log files and sends the lines.

While a session is open, `LogPublisher.serve` keeps the session's
ListenSubscriptions stream open. Each subscription it receives gets one
asyncio task and one PublishLogs stream to the leader:

- the log file of each named task is read from the start, or from where its
  last `tail` lines begin; lines older than `since` are skipped;
- without `follow`, what the files hold at that moment is sent, then a last
  message with `close`, and the stream ends;
- with `follow`, the files are polled every `poll_interval` for new records
  (no inotify: cheap, and it works on any filesystem), tasks the leader adds
  later are read from their first line, a truncated or replaced file is read
  again from its start, a deleted one (its container was removed) is dropped;
  it runs until the leader closes the subscription (its caller went away) or
  the session ends.

Bounded: lines are cut at 16 KiB, batches at `batch_bytes`; each write waits
for the stream (gRPC flow control), so a slow reader at the far end slows the
file reading down instead of filling memory; at most `max_subscriptions` run
at once (more are answered with an error, which the caller sees as a warning).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from swarm.api.loops import cancel_all
from swarm.api.v1 import dispatcher_pb2_grpc as dgrpc
from swarm.api.v1 import logs_pb2 as lpb

from .logfile import MAX_LINE, Line, LineAssembler, LogFile

log = logging.getLogger(__name__)

_TASK_ID_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$")
_NS = 1_000_000_000


@dataclass(frozen=True)
class LogSettings:
    poll_interval: float = 0.2  # follow: how often the files are checked
    batch_bytes: int = 256 * 1024  # of line data per PublishLogs message
    batch_lines: int = 1000
    max_line: int = MAX_LINE
    max_subscriptions: int = 64
    retry_initial: float = 0.5  # reopening a failed ListenSubscriptions stream
    retry_max: float = 10.0


@dataclass
class _Subscription:
    id: str
    service_id: str
    options: lpb.LogOptions
    task_ids: set[str]
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    runner: asyncio.Task[None] | None = None


def _valid_tasks(task_ids: Any) -> set[str]:
    return {task_id for task_id in task_ids if _TASK_ID_RE.match(task_id)}


class _Batch:
    def __init__(self, settings: LogSettings, node_id: str, service_id: str) -> None:
        self.settings = settings
        self.node_id = node_id
        self.service_id = service_id
        self.messages: list[lpb.LogMessage] = []
        self.size = 0

    def add(self, task_id: str, line: Line) -> None:
        stamp = Timestamp(seconds=line.timestamp // _NS, nanos=line.timestamp % _NS)
        self.messages.append(lpb.LogMessage(
            context=lpb.LogContext(service_id=self.service_id, node_id=self.node_id,
                                   task_id=task_id),
            timestamp=stamp, stream=line.stream,  # type: ignore[arg-type]
            data=line.data, partial=line.partial))
        self.size += len(line.data) + 64

    def full(self) -> bool:
        return self.size >= self.settings.batch_bytes or \
            len(self.messages) >= self.settings.batch_lines

    def take(self) -> list[lpb.LogMessage]:
        messages, self.messages, self.size = self.messages, [], 0
        return messages


class _Ended(Exception):
    """The leader ended the PublishLogs stream (the subscription is over)."""


class LogPublisher:
    """Serves the leader's log subscriptions from conmon's log files; `log_path`
    maps a task ID to its container's log file."""

    def __init__(self, log_path: Callable[[str], Path], settings: LogSettings | None = None,
                 ) -> None:
        self._log_path = log_path
        self.settings = settings or LogSettings()
        self._subscriptions: dict[str, _Subscription] = {}

    @property
    def active(self) -> int:
        return len(self._subscriptions)

    # ------------------------------------------------------------ subscriptions

    async def serve(self, stub: dgrpc.DispatcherAsyncStub, node_id: str, session_id: str) -> None:
        """Follow the subscription stream of this session until cancelled; a
        failed stream is opened again after a growing, jittered delay."""
        settings = self.settings
        backoff = settings.retry_initial
        try:
            while True:
                stream = stub.ListenSubscriptions(
                    lpb.ListenSubscriptionsRequest(node_id=node_id, session_id=session_id))
                try:
                    while True:
                        message = await stream.read()
                        if message is grpc.aio.EOF:  # type: ignore[attr-defined]
                            break
                        assert isinstance(message, lpb.SubscriptionMessage)
                        backoff = settings.retry_initial
                        self._on_message(stub, node_id, session_id, message)
                except grpc.aio.AioRpcError as error:
                    log.warning("log subscriptions stream failed: %s %s", error.code().name,
                                error.details())
                finally:
                    stream.cancel()
                await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, settings.retry_max)
        finally:
            runners = [s.runner for s in self._subscriptions.values() if s.runner is not None]
            self._subscriptions.clear()
            await cancel_all(runners)

    def _on_message(self, stub: dgrpc.DispatcherAsyncStub, node_id: str, session_id: str,
                    message: lpb.SubscriptionMessage) -> None:
        current = self._subscriptions.get(message.id)
        if message.close:
            if current is not None:
                log.info("log subscription %s closed by the controller", message.id)
                del self._subscriptions[message.id]
                if current.runner is not None:
                    current.runner.cancel()
            return
        tasks = _valid_tasks(message.task_ids)
        if current is not None:
            current.task_ids = tasks
            current.changed.set()
            return
        subscription = _Subscription(message.id, message.service_id, message.options, tasks)
        refused = len(self._subscriptions) >= self.settings.max_subscriptions
        if refused:
            log.warning("log subscription %s refused: %d are running already", message.id,
                        len(self._subscriptions))
        else:
            self._subscriptions[message.id] = subscription

        async def run() -> None:
            try:
                await self._publish(stub, node_id, session_id, subscription, refused=refused)
            except asyncio.CancelledError:
                raise
            except (_Ended, asyncio.InvalidStateError):
                log.info("log subscription %s ended by the controller", subscription.id)
            except grpc.aio.AioRpcError as error:
                log.info("log subscription %s: stream ended: %s %s", subscription.id,
                         error.code().name, error.details())
            except Exception:
                log.exception("log subscription %s failed", subscription.id)
            finally:
                if self._subscriptions.get(subscription.id) is subscription:
                    del self._subscriptions[subscription.id]

        subscription.runner = asyncio.create_task(run(), name=f"logs-{message.id}")
        log.info("log subscription %s: %d task(s)%s", message.id, len(tasks),
                 ", following" if message.options.follow else "")

    # ------------------------------------------------------------ publishing

    async def _publish(self, stub: dgrpc.DispatcherAsyncStub, node_id: str, session_id: str,
                       subscription: _Subscription, *, refused: bool = False) -> None:
        call = stub.PublishLogs()  # type: ignore[call-arg]  # written to with call.write
        try:
            await self._write(call, lpb.PublishLogsMessage(
                node_id=node_id, session_id=session_id, subscription_id=subscription.id,
                error=f"too many log streams on this node (at most "
                      f"{self.settings.max_subscriptions})" if refused else ""))
            if refused:
                await call.done_writing()
                # Wait for the controller's answer: cancelling the call (below)
                # before it has read the refusal would lose it.
                await call
                return
            try:
                await self._stream(call, node_id, subscription)
            except OSError as error:
                log.warning("log subscription %s: %s", subscription.id, error)
                await self._write(call, lpb.PublishLogsMessage(
                    error=f"cannot read the logs: {error.strerror or error}"))
                await call.done_writing()
                await call  # as above: the error must reach the controller
        finally:
            if not call.done():
                call.cancel()

    async def _write(self, call: Any, message: lpb.PublishLogsMessage) -> None:
        if call.done():
            raise _Ended
        await call.write(message)

    async def _stream(self, call: Any, node_id: str, subscription: _Subscription) -> None:
        options = subscription.options
        settings = self.settings
        since = options.since.ToNanoseconds() if options.HasField("since") else 0
        tail = options.tail if options.HasField("tail") else None
        batch = _Batch(settings, node_id, subscription.service_id)
        files: dict[str, LogFile] = {}
        try:
            await self._stream_files(call, subscription, files, batch, since, tail)
        finally:
            for logfile in files.values():
                logfile.close()

    async def _stream_files(self, call: Any, subscription: _Subscription,
                            files: dict[str, LogFile], batch: _Batch, since: int,
                            tail: int | None) -> None:
        options = subscription.options
        settings = self.settings
        seen: set[str] = set()  # tasks whose file existed once

        def new_file(task_id: str) -> LogFile:
            return LogFile(str(self._log_path(task_id)), since=since,
                           assembler=LineAssembler(settings.max_line))

        for task_id in sorted(subscription.task_ids):
            logfile = new_file(task_id)
            files[task_id] = logfile
            if not await asyncio.to_thread(logfile.start, tail):
                if not options.follow:
                    del files[task_id]
                continue  # not created yet: read it all once it is
            seen.add(task_id)
            await self._drain(call, task_id, logfile, batch)
        if not options.follow:
            await self._write(call, lpb.PublishLogsMessage(messages=batch.take(), close=True))
            await call.done_writing()
            await call
            return
        await self._flush(call, batch)
        known = set(subscription.task_ids)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(subscription.changed.wait(), settings.poll_interval)
            subscription.changed.clear()
            if call.done():
                raise _Ended
            for task_id in sorted(subscription.task_ids - known):
                files[task_id] = new_file(task_id)  # new since the start: all of it is new
            for task_id in known - subscription.task_ids:
                gone = files.pop(task_id, None)
                if gone is not None:
                    gone.close()
            known = set(subscription.task_ids)
            for task_id, logfile in list(files.items()):
                if not await self._drain(call, task_id, logfile, batch):
                    if task_id in seen:
                        del files[task_id]  # the container was removed, and its log
                        logfile.close()
                    continue
                seen.add(task_id)
            await self._flush(call, batch)

    async def _drain(self, call: Any, task_id: str, logfile: LogFile, batch: _Batch) -> bool:
        """Send the lines of `logfile` written so far, a batch at a time, across
        its rotated files; False when the log is not there (gone, or not yet)."""
        while True:
            size = await asyncio.to_thread(logfile.size)
            if size is None:
                return False
            live = logfile.live
            while logfile.offset < size:
                before = logfile.offset
                lines = await asyncio.to_thread(logfile.read, size, self.settings.batch_bytes)
                for line in lines:
                    batch.add(task_id, line)
                    if batch.full():
                        await self._flush(call, batch)
                if logfile.offset == before:
                    break  # an unterminated last record: the rest next time
            if live:
                return True
            if logfile.offset < size:
                logfile.skip_rest()  # a finished file never gets the rest of its record

    async def _flush(self, call: Any, batch: _Batch) -> None:
        if batch.messages:
            await self._write(call, lpb.PublishLogsMessage(messages=batch.take()))

