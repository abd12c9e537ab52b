"""Reading the container logs conmon writes: pure parsing, tail selection,
the rotation of a task's log files, and an incremental reader across them.

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
import contextlib
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
    return tail_start(read_at, size, lines, block)[0]


def tail_start(read_at: ReadAt, size: int, lines: int,
               block: int = 64 * 1024) -> tuple[int, int]:
    """tail_offset, and how many complete lines there are from it on (fewer
    than `lines` when the file has fewer: the rest is in older files)."""
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
                return record_end + 1, lines
        record_end = previous
    return 0, found


def split_records(data: bytes) -> tuple[list[bytes], int]:
    """The complete records (newline-terminated, newline removed) at the start
    of data, and how many bytes they took."""
    end = data.rfind(b"\n")
    if end < 0:
        return [], 0
    return data[:end].split(b"\n"), end + 1




# ---------------------------------------------------------------- rotation
#
# conmon bounds a log itself (--log-size-max): past the size it writes on in a
# new file renamed over the log's path, and the old file is unlinked. To keep
# the old files, the agent holds a hard link PATH.0 to the current file; when
# PATH is another file, PATH.0 is the one just finished: it becomes PATH.1
# (PATH.1 becomes PATH.2, ..., the oldest beyond max_file is deleted), and
# PATH.0 is linked to the new current file. Each file stays under the size
# whether the agent keeps up or not (conmon enforces it); an agent that falls
# more than a whole file behind (down, or a task writing max-size between two
# of its passes) loses that file's lines, never the bound.

HOLD_SUFFIX = ".0"


def rotated_path(path: str, number: int) -> str:
    return f"{path}.{number}"


def rotated_numbers(path: str) -> list[int]:
    """The N of the PATH.N files there are (PATH.0 included), ascending."""
    directory, name = os.path.split(path)
    prefix = name + "."
    try:
        entries = os.listdir(directory or ".")
    except FileNotFoundError:
        return []
    return sorted(int(entry[len(prefix):]) for entry in entries
                  if entry.startswith(prefix) and entry[len(prefix):].isdigit())


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def keep_rotated(path: str, max_file: int) -> bool:
    """One pass of the rotation above for the log at `path`, keeping at most
    `max_file` files (the current one included). Returns whether a finished
    file was kept (or dropped, with max_file 1)."""
    current = _inode(path)
    if current is None:
        return False
    hold = path + HOLD_SUFFIX
    held = _inode(hold)
    if held == current:
        return False
    rotated = held is not None
    if rotated:
        keep = max_file - 1
        for number in rotated_numbers(path):
            if number >= max(keep, 1):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(rotated_path(path, number))
        if keep < 1:
            os.unlink(hold)
        else:
            for number in range(keep - 1, 0, -1):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(rotated_path(path, number), rotated_path(path, number + 1))
            os.rename(hold, rotated_path(path, 1))
    with contextlib.suppress(FileNotFoundError, FileExistsError):
        os.link(path, hold)
    return rotated


def log_chain(path: str) -> list[str]:
    """The files of a task's log, oldest first: PATH.N ... PATH.1, PATH.0
    when it is not the current file (finished, not yet renamed), PATH."""
    numbers = rotated_numbers(path)
    chain = [rotated_path(path, n) for n in reversed(numbers) if n > 0]
    current = _inode(path)
    if 0 in numbers and _inode(path + HOLD_SUFFIX) not in (current, None):
        chain.append(path + HOLD_SUFFIX)
    if current is not None:
        chain.append(path)
    return chain


def log_files(path: str) -> list[str]:
    """Every file of a task's log, to remove them."""
    return [path] + [rotated_path(path, n) for n in rotated_numbers(path)]


# ---------------------------------------------------------------- the reader


def _tail_in(path: str, lines: int) -> tuple[int, int]:
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size

        def read_at(offset: int, length: int) -> bytes:
            file.seek(offset)
            return file.read(length)

        return tail_start(read_at, size, lines)


@dataclass
class LogFile:
    """Reads one task's log record by record: its rotated files first (see
    `start`), then the current one, following it. A rotation is followed: the
    file being read is kept open, read to its end once the log's path names
    another file, then the next one is read; a file truncated in place is
    read again from its start."""

    path: str
    offset: int = 0
    since: int = 0  # nanoseconds; earlier lines are skipped
    chunk: int = 64 * 1024
    assembler: LineAssembler = field(default_factory=LineAssembler)
    bad_records: int = 0
    live: bool = False  # the open file is the log's current one (set by size())
    _fd: int | None = None
    _inode: int | None = None
    _queue: list[str] | None = None  # files still to read, oldest first; None: not started

    def start(self, tail: int | None = None) -> bool:
        """Begin where the last `tail` complete lines begin (None: at the
        oldest kept line), going back into rotated files as far as needed.
        False when there is no log (yet)."""
        chain = log_chain(self.path)
        self._queue = []
        if not chain:
            return False
        first, offset = 0, 0
        if tail is not None:
            remaining = tail
            first, offset = len(chain) - 1, 0
            for index in range(len(chain) - 1, -1, -1):
                try:
                    offset, found = _tail_in(chain[index], remaining)
                except FileNotFoundError:
                    continue
                first = index
                if found >= remaining:
                    break
                remaining -= found
                offset = 0
        self._queue = chain[first:]
        self._open_next(offset)
        return True

    def _open_next(self, offset: int = 0) -> None:
        self.close()
        while self._queue:
            name = self._queue.pop(0)
            try:
                self._fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            self._inode = os.fstat(self._fd).st_ino
            self.offset = offset
            return

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def size(self) -> int | None:
        """How far the open file can be read now (moving on to the next file
        when it is finished), or None when the log is gone or not there yet."""
        if self._queue is None:
            self.start()
        while True:
            current = _inode(self.path)
            if self._fd is None:
                if self._queue:
                    self._open_next()
                    continue
                if current is None:
                    return None
                self._queue = [self.path]
                self._open_next()
                continue
            self.live = current == self._inode
            size = os.fstat(self._fd).st_size
            if self.live:
                if size < self.offset:  # truncated in place
                    self.offset = 0
                return size
            if self.offset < size:
                return size  # a finished file, not read to its end yet
            self.close()  # finished and read: on to the next (or the current) one

    def skip_rest(self) -> None:
        """Give up on the open (finished) file: an unterminated last record."""
        self.bad_records += 1
        self.close()

    def read(self, until: int, max_bytes: int) -> list[Line]:
        """The lines of the complete records of the open file from the offset
        up to `until` (a size() seen earlier), reading at most about
        max_bytes; advances."""
        lines: list[Line] = []
        fd = self._fd
        if fd is None:
            return lines
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
        return lines
