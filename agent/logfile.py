"""Reading the container logs conmon writes: pure parsing, tail selection, and
an incremental reader of one file.

conmon's k8s-file format (the CRI log format) is one record per line:

    2026-11-29T03:23:32.123456789+00:00 stdout F hello world
    <RFC 3339 time, nanoseconds, local offset> <stdout|stderr> <P|F> <bytes>

A record tagged P is a partial line: conmon flushed its buffer (8 KiB) before
the container wrote a newline; the line goes on in the next records of the
same stream, the last of which is tagged F. The stream's own newline is not
in the record. Records of stdout and stderr interleave, so partial lines are
joined per stream. A line longer than `max_line` bytes is cut into pieces
(all but the last flagged partial), so one message never exceeds the limit.
"""

from __future__ import annotations

import calendar
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

STDOUT = 1  # the LogStream enum values of logs.proto
STDERR = 2
_STREAMS = {b"stdout": STDOUT, b"stderr": STDERR}
MAX_LINE = 16 * 1024  # bytes of one message's data (docker cuts lines at 16 KiB too)
_HEADER_MAX = 64  # a record's timestamp, stream and tag fit in this many bytes
_NS = 1_000_000_000


class BadRecord(ValueError):
    """Not a k8s-file record."""


def parse_timestamp(text: bytes | str) -> int:
    """RFC 3339 (as conmon writes it: `2026-11-29T03:23:32.123456789+01:00`, or
    with `Z`, any number of fraction digits) to nanoseconds since the epoch."""
    value = text.decode("ascii") if isinstance(text, bytes) else text
    try:
        date, time_part = value.split("T", 1)
        if time_part.endswith(("Z", "z")):
            clock, offset = time_part[:-1], 0
        else:
            sign_at = max(time_part.rfind("+"), time_part.rfind("-"))
            if sign_at < 0:
                raise BadRecord(f"no UTC offset in {value!r}")
            clock, zone = time_part[:sign_at], time_part[sign_at:]
            hours, _, minutes = zone[1:].partition(":")
            offset = (int(hours) * 3600 + int(minutes or 0) * 60) * (-1 if zone[0] == "-" else 1)
        whole, _, fraction = clock.partition(".")
        year, month, day = (int(part) for part in date.split("-"))
        hour, minute, second = (int(part) for part in whole.split(":"))
        if fraction and not fraction.isdigit():
            raise BadRecord(f"bad fraction in {value!r}")
        nanos = int((fraction + "000000000")[:9]) if fraction else 0
        seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - offset
    except (ValueError, IndexError) as error:
        if isinstance(error, BadRecord):
            raise
        raise BadRecord(f"bad timestamp {value!r}") from None
    return seconds * _NS + nanos


@dataclass(frozen=True)
class Record:
    """One k8s-file record."""

    timestamp: int  # nanoseconds since the epoch
    stream: int  # STDOUT or STDERR
    partial: bool  # tagged P: the line goes on in the next record of the stream
    data: bytes


def parse_record(line: bytes) -> Record:
    """One record, without its trailing newline. Raises BadRecord."""
    parts = line.split(b" ", 3)
    if len(parts) < 3:
        raise BadRecord(f"not a log record: {line[:80]!r}")
    stream = _STREAMS.get(parts[1])
    if stream is None:
        raise BadRecord(f"unknown stream {parts[1][:20]!r}")
    tag = parts[2]
    if tag not in (b"P", b"F"):
        raise BadRecord(f"unknown tag {tag[:20]!r}")
    return Record(parse_timestamp(parts[0]), stream, tag == b"P",
                  parts[3] if len(parts) == 4 else b"")


def is_full_record(line: bytes) -> bool:
    """Whether a record (or just its first bytes) is tagged F: it ends a line."""
    parts = line[:_HEADER_MAX].split(b" ", 3)
    return len(parts) >= 3 and parts[2] == b"F"


@dataclass(frozen=True)
class Line:
    """A line of the container's output, ready to send."""

    timestamp: int  # of its first record
    stream: int
    data: bytes
    partial: bool = False  # a piece of a line longer than the limit; more follows


@dataclass
class LineAssembler:
    """Joins partial records into lines, per stream; cuts lines at max_line."""

    max_line: int = MAX_LINE
    _pending: dict[int, tuple[int, bytearray]] = field(default_factory=dict)

    def feed(self, record: Record) -> list[Line]:
        started, buffer = self._pending.pop(record.stream, (record.timestamp, bytearray()))
        buffer += record.data
        lines = []
        while len(buffer) > self.max_line:
            lines.append(Line(started, record.stream, bytes(buffer[: self.max_line]), partial=True))
            del buffer[: self.max_line]
        if record.partial:
            self._pending[record.stream] = (started, buffer)
        else:
            lines.append(Line(started, record.stream, bytes(buffer)))
        return lines


ReadAt = Callable[[int, int], bytes]  # (offset, length) -> bytes (fewer at the end)


def _newlines_backwards(read_at: ReadAt, end: int, block: int) -> Iterator[int]:
    """Offsets of the newlines before `end`, last first."""
    while end > 0:
        start = max(0, end - block)
        chunk = read_at(start, end - start)
        index = len(chunk)
        while True:
            index = chunk.rfind(b"\n", 0, index)
            if index < 0:
                break
            yield start + index
        end = start


def tail_offset(read_at: ReadAt, size: int, lines: int, block: int = 64 * 1024) -> int:
    """Where to start reading a log of `size` bytes to get its last `lines`
    complete lines: just after the (lines+1)-th F record from the end, or 0
    when there are not that many. An unterminated last record (being
    written) does not count; partial records before an F belong to its line."""
    if lines < 0:
        raise ValueError("lines must not be negative")
    found = 0
    newlines = _newlines_backwards(read_at, size, block)
    record_end = next(newlines, None)
    while record_end is not None:
        previous = next(newlines, None)
        start = 0 if previous is None else previous + 1
        if is_full_record(read_at(start, min(_HEADER_MAX, record_end - start))):
            found += 1
            if found > lines:
                return record_end + 1
        record_end = previous
    return 0


def split_records(data: bytes) -> tuple[list[bytes], int]:
    """The complete records (newline-terminated, newline removed) at the start
    of data, and how many bytes they took."""
    end = data.rfind(b"\n")
    if end < 0:
        return [], 0
    return data[:end].split(b"\n"), end + 1


@dataclass
class LogFile:
    """Reads one container's log from an offset on, record by record; notices
    when the file was truncated or replaced (conmon's --log-size-max) and
    starts again at the beginning of the new one."""

    path: str
    offset: int = 0
    since: int = 0  # nanoseconds; earlier lines are skipped
    chunk: int = 64 * 1024
    assembler: LineAssembler = field(default_factory=LineAssembler)
    bad_records: int = 0
    _inode: int | None = None

    def size(self) -> int | None:
        """The file's size now, or None when it is gone."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        if self._inode is not None and stat.st_ino != self._inode:
            self.offset = 0  # replaced
            self.assembler = LineAssembler(self.assembler.max_line)
        elif stat.st_size < self.offset:
            self.offset = 0  # truncated
        self._inode = stat.st_ino
        return stat.st_size

    def read(self, until: int, max_bytes: int) -> list[Line]:
        """The lines of the complete records from the offset up to `until`
        (a size seen earlier), reading at most about max_bytes; advances."""
        lines: list[Line] = []
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return lines
        try:
            budget = max_bytes
            while self.offset < until and budget > 0:
                data = os.pread(fd, min(self.chunk, until - self.offset), self.offset)
                if not data:
                    break
                records, used = split_records(data)
                if used == 0:
                    if len(data) < self.chunk:
                        break  # an unterminated record: it is still being written
                    # One record longer than a chunk (conmon never writes one): skip it.
                    self.bad_records += 1
                    self.offset += len(data)
                    continue
                self.offset += used
                budget -= used
                for raw in records:
                    try:
                        record = parse_record(raw)
                    except BadRecord:
                        self.bad_records += 1
                        continue
                    lines.extend(line for line in self.assembler.feed(record)
                                 if line.timestamp >= self.since)
        finally:
            os.close(fd)
        return lines
