"""`swarmctl service logs`: the pure parts (flag parsing, line formatting) and
the streaming loop.

Each line is printed as `docker service logs` prints it:

    web.1.0c5s2x4mq2kh@node-a | hello

(`--no-task-ids`: `web.1@node-a`; `--raw`: the line alone; `--timestamps`:
the container's RFC 3339 time, nanoseconds, UTC, first). The container's
stdout lines go to stdout, its stderr lines to stderr.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

import grpc

from swarm.api import units
from swarm.api.naming import slot_name
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import logs_pb2 as lpb
from swarm.api.v1 import objects_pb2 as pb

from . import client, render
from .errors import EXIT_FAILURE, EXIT_INTERRUPTED, BadFlag, CliError

_NS = 1_000_000_000
_UNIX_RE = re.compile(r"^\d+(\.\d{1,9})?$")


# ---------------------------------------------------------------- flags


def parse_tail(flag: str, text: str) -> int | None:
    """'all' -> None (every line); 'N' -> N (the last N lines of each task)."""
    value = text.strip().lower()
    if value == "all":
        return None
    if not value.isdigit():
        raise BadFlag(flag, f"expected a number of lines or 'all', got {text!r}")
    return int(value)


def parse_since(flag: str, text: str, now_ns: int) -> int:
    """A point in time, in nanoseconds since the epoch, as docker takes it: an
    RFC 3339 time ('2026-11-29T03:00:00Z', '2026-11-29T04:00:00.5+01:00'; a
    time without a zone is UTC), a date ('2026-11-29'), a Unix time
    ('1764385200', '1764385200.5'), or a duration before now ('10m', '1h30m')."""
    value = text.strip()
    if not value:
        raise BadFlag(flag, "must not be empty")
    if _UNIX_RE.match(value):
        whole, _, fraction = value.partition(".")
        return int(whole) * _NS + int((fraction + "000000000")[:9])
    if value[:1].isdigit() and ("T" in value or value.count("-") == 2):
        return _rfc3339(flag, value)
    try:
        ago = units.parse_duration(value)
    except ValueError:
        raise BadFlag(flag, f"expected a time (RFC 3339 or Unix) or a duration such as 10m, "
                            f"got {text!r}") from None
    return now_ns - ago


def _rfc3339(flag: str, value: str) -> int:
    text = value.replace("z", "Z").replace("t", "T")
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    head, dot, rest = text.partition(".")
    fraction = ""
    if dot:
        digits = re.match(r"\d*", rest)
        assert digits is not None
        fraction, text = digits.group(0), head + rest[len(digits.group(0)):]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadFlag(flag, f"not a valid time: {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * _NS + int((fraction + "000000000")[:9])


def format_timestamp(nanos: int) -> str:
    """RFC 3339 in UTC with nine fraction digits (docker's fixed RFC3339Nano)."""
    seconds, fraction = divmod(nanos, _NS)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


# ---------------------------------------------------------------- formatting


@dataclass(frozen=True)
class Format:
    timestamps: bool = False
    task_ids: bool = True
    no_trunc: bool = False
    raw: bool = False


@dataclass
class Names:
    """Task and node names for the prefixes: known at the start, looked up
    (once each) when a new task or node shows up."""

    tasks: dict[str, pb.Task] = field(default_factory=dict)
    hostnames: dict[str, str] = field(default_factory=dict)
    lookup_task: Callable[[str], pb.Task | None] = lambda task_id: None
    lookup_hostname: Callable[[str], str | None] = lambda node_id: None

    def task(self, task_id: str) -> pb.Task | None:
        if task_id not in self.tasks:
            found = self.lookup_task(task_id)
            self.tasks[task_id] = found if found is not None else pb.Task(id=task_id)
        task = self.tasks[task_id]
        return task if task.service_name else None

    def hostname(self, node_id: str) -> str:
        if node_id not in self.hostnames:
            self.hostnames[node_id] = self.lookup_hostname(node_id) or node_id
        return self.hostnames[node_id]


def context_name(context: lpb.LogContext, names: Names, fmt: Format) -> str:
    """'web.1.<task id>@node-a' (docker's), or 'web.1@node-a' without task IDs."""
    task = names.task(context.task_id)
    name = slot_name(task) if task is not None else render.short_id(context.task_id,
                                                                           fmt.no_trunc)
    if fmt.task_ids and task is not None:
        name += "." + render.short_id(context.task_id, fmt.no_trunc)
    return f"{name}@{names.hostname(context.node_id)}"


@dataclass
class Printer:
    """Writes messages as lines; keeps the prefix column aligned on the widest
    seen, and a line cut into pieces (partial) on one output line."""

    names: Names
    fmt: Format
    stdout: IO[bytes]
    stderr: IO[bytes]
    width: int = 0
    _open: set[tuple[str, int]] = field(default_factory=set)  # (task, stream) mid-line

    def line(self, message: lpb.LogMessage) -> bytes:
        key = (message.context.task_id, int(message.stream))
        head = b""
        if key not in self._open:  # a continuation of a partial line has no prefix
            parts = []
            if self.fmt.timestamps:
                parts.append(format_timestamp(message.timestamp.ToNanoseconds()) + " ")
            if not self.fmt.raw:
                prefix = context_name(message.context, self.names, self.fmt)
                self.width = max(self.width, len(prefix))
                parts.append(f"{prefix:<{self.width}} | ")
            head = "".join(parts).encode()
        if message.partial:
            self._open.add(key)
            return head + message.data
        self._open.discard(key)
        return head + message.data + b"\n"

    def write(self, messages: Iterable[lpb.LogMessage]) -> None:
        out = bytearray()
        err = bytearray()
        for message in messages:
            (err if message.stream == lpb.LOG_STREAM_STDERR else out).extend(self.line(message))
        for stream, data in ((self.stdout, out), (self.stderr, err)):
            if data:
                stream.write(bytes(data))
                stream.flush()


def node_warning(error: lpb.NodeLogError, names: Names) -> str:
    hostname = names.hostname(error.node_id)
    node = hostname if hostname == error.node_id else f"{hostname} ({render.short_id(error.node_id)})"
    return f"swarmctl: warning: node {node}: {error.message}"


# ---------------------------------------------------------------- streaming


def binary(stream: Any) -> IO[bytes]:
    """The byte stream under a text stream (sys.stdout), or the stream itself."""
    return getattr(stream, "buffer", stream)  # type: ignore[no-any-return]


def _initial_names(ctl: client.Controller, service: pb.Service) -> Names:
    request = cpb.ListTasksRequest()
    request.filters.service_ids.append(service.id)
    tasks = ctl.call(ctl.stub.ListTasks, request).tasks
    nodes = ctl.call(ctl.stub.ListNodes, cpb.ListNodesRequest()).nodes

    def lookup_task(task_id: str) -> pb.Task | None:
        try:
            return ctl.call(ctl.stub.GetTask, cpb.GetRequest(ref=task_id)).task
        except CliError:
            return None

    def lookup_hostname(node_id: str) -> str | None:
        try:
            return ctl.call(ctl.stub.GetNode, cpb.GetRequest(ref=node_id)).node.description.hostname
        except CliError:
            return None

    return Names(tasks={t.id: t for t in tasks},
                 hostnames={n.id: n.description.hostname for n in nodes},
                 lookup_task=lookup_task, lookup_hostname=lookup_hostname)


def _messages(ctl: client.Controller, request: lpb.ServiceLogsRequest,
              calls: list[Any]) -> Iterator[lpb.ServiceLogsMessage]:
    """The stream (any controller serves it: a follower relays it from the leader)."""
    call = ctl.stub.ServiceLogs(request)
    calls.append(call)
    try:
        yield from call
    except grpc.RpcError as error:
        raise client.describe_rpc_error(error, ctl.target, ctl.timeout) from None


def stream_logs(ctl: client.Controller, ref: str, options: lpb.LogOptions, fmt: Format,
                stdout: IO[bytes], stderr: IO[bytes], warn: Callable[[str], None]) -> None:
    """Print the service's logs until the controller ends the stream (or,
    following, until interrupted: exit 130)."""
    service = ctl.call(ctl.stub.GetService, cpb.GetRequest(ref=ref)).service
    names = _initial_names(ctl, service) if not fmt.raw else Names()
    printer = Printer(names, fmt, stdout, stderr)
    request = lpb.ServiceLogsRequest(service=service.id, options=options)
    calls: list[Any] = []
    try:
        for message in _messages(ctl, request, calls):
            printer.write(message.messages)
            for error in message.node_errors:
                warn(node_warning(error, names))
    except KeyboardInterrupt:
        for call in calls:
            call.cancel()
        raise SystemExit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        # `swarmctl service logs web | head`: the reader left; so do we, quietly.
        for call in calls:
            call.cancel()
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (stdout, stderr):
            with contextlib.suppress(AttributeError, OSError, ValueError):
                os.dup2(devnull, stream.fileno())
        raise SystemExit(EXIT_FAILURE) from None
