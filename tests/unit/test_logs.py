"""The pure parts of service logs: conmon's k8s-file records, tail selection,
the incremental file reader (agent/logfile.py), and swarmctl's flags and
line formatting (cli/logs.py)."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.agent.logfile import (
    STDERR,
    STDOUT,
    BadRecord,
    Line,
    LineAssembler,
    LogFile,
    parse_record,
    parse_timestamp,
    tail_offset,
)
from swarm.api.v1 import logs_pb2 as lpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli import logs as cli_logs
from swarm.cli.errors import BadFlag

NS = 1_000_000_000
T0 = 1_795_922_612  # 2026-11-29T03:23:32Z


def record(stream: str, tag: str, text: str, second: int = 0, nanos: int = 0) -> bytes:
    stamp = f"2026-11-29T03:23:{32 + second:02d}.{nanos:09d}+00:00"
    return f"{stamp} {stream} {tag} {text}\n".encode()


# ---------------------------------------------------------------- records


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-29T03:23:32.123456789+00:00", T0 * NS + 123456789),
    ("2026-11-29T04:23:32.123456789+01:00", T0 * NS + 123456789),
    ("2026-11-28T21:53:32.5-05:30", T0 * NS + 500_000_000),
    ("2026-11-29T03:23:32Z", T0 * NS),
    ("2026-11-29T03:23:32.000000001Z", T0 * NS + 1),
])
def test_timestamps(text: str, expected: int) -> None:
    assert parse_timestamp(text) == expected
    assert parse_timestamp(text.encode()) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2026-11-29", "2026-11-29T03:23:32",
                                  "2026-11-29T03:23:32.12x+00:00", "2026-13-29T03:23:32Z"])
def test_bad_timestamps(text: str) -> None:
    with pytest.raises(BadRecord):
        parse_timestamp(text)


def test_records() -> None:
    full = parse_record(record("stdout", "F", "hello world")[:-1])
    assert (full.timestamp, full.stream, full.partial, full.data) == (
        T0 * NS, STDOUT, False, b"hello world")
    part = parse_record(record("stderr", "P", "a  b ")[:-1])
    assert (part.stream, part.partial, part.data) == (STDERR, True, b"a  b ")
    assert parse_record(b"2026-11-29T03:23:32Z stdout F").data == b""
    for bad in (b"", b"garbage", b"2026-11-29T03:23:32Z stdin F x",
                b"2026-11-29T03:23:32Z stdout X x", b"yesterday stdout F x"):
        with pytest.raises(BadRecord):
            parse_record(bad)


def test_partial_records_join_per_stream_and_long_lines_are_cut() -> None:
    assembler = LineAssembler(max_line=8)
    out = [parse_record(r[:-1]) for r in (
        record("stdout", "P", "abc", 0), record("stderr", "F", "err", 1),
        record("stdout", "P", "def", 2), record("stdout", "F", "gh", 3))]
    lines = [line for r in out for line in assembler.feed(r)]
    assert lines == [Line(T0 * NS + NS, STDERR, b"err"), Line(T0 * NS, STDOUT, b"abcdefgh")]
    long = parse_record(record("stdout", "F", "x" * 20)[:-1])
    assert [(line.data, line.partial) for line in assembler.feed(long)] == [
        (b"x" * 8, True), (b"x" * 8, True), (b"x" * 4, False)]


# ---------------------------------------------------------------- tail


def _reader(data: bytes) -> Callable[[int, int], bytes]:
    return lambda offset, length: data[offset:offset + length]


def _naive_tail(data: bytes, lines: int) -> int:
    """Start of the record after the (lines+1)-th F record from the end."""
    complete = data[: data.rfind(b"\n") + 1]
    ends = []
    offset = 0
    for raw in complete.split(b"\n")[:-1]:
        offset += len(raw) + 1
        if raw.split(b" ")[2] == b"F":
            ends.append(offset)
    return ends[-(lines + 1)] if len(ends) > lines else 0


def test_tail_offset() -> None:
    data = b"".join([record("stdout", "F", "one"), record("stdout", "P", "tw"),
                     record("stderr", "F", "err"), record("stdout", "F", "o"),
                     record("stdout", "F", "three")])
    starts = [0]
    for piece in data.split(b"\n")[:-1]:
        starts.append(starts[-1] + len(piece) + 1)
    assert tail_offset(_reader(data), len(data), 0) == len(data)
    assert tail_offset(_reader(data), len(data), 1) == starts[4]
    assert tail_offset(_reader(data), len(data), 2) == starts[3]
    assert tail_offset(_reader(data), len(data), 3) == starts[1]  # "tw" belongs to "two"
    assert tail_offset(_reader(data), len(data), 4) == 0
    assert tail_offset(_reader(data), len(data), 100) == 0
    assert tail_offset(_reader(b""), 0, 3) == 0
    # An unterminated last record (being written) is not a line yet.
    cut = data + record("stdout", "F", "four")[:-3]
    assert tail_offset(_reader(cut), len(cut), 1) == starts[4]
    with pytest.raises(ValueError, match="negative"):
        tail_offset(_reader(data), len(data), -1)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["stdout", "stderr"]), st.sampled_from(["P", "F"]),
                          st.text(alphabet="ab \t", max_size=12)), max_size=25),
       st.integers(0, 30), st.integers(1, 64), st.booleans())
def test_tail_offset_matches_a_naive_scan(records: list[tuple[str, str, str]], lines: int,
                                          block: int, cut: bool) -> None:
    data = b"".join(record(stream, tag, text) for stream, tag, text in records)
    if cut and data:
        data = data[:-1]
    assert tail_offset(_reader(data), len(data), lines, block=block) == _naive_tail(data, lines)


# ---------------------------------------------------------------- the file reader


def _texts(lines: list[Line]) -> list[bytes]:
    return [line.data for line in lines]


def test_log_file_reads_new_records_and_waits_for_unterminated_ones(tmp_path: Path) -> None:
    path = tmp_path / "task.log"
    path.write_bytes(record("stdout", "F", "one") + record("stdout", "F", "two")[:-3])
    logfile = LogFile(str(path))
    size = logfile.size()
    assert size is not None
    assert _texts(logfile.read(size, 1 << 20)) == [b"one"]
    with path.open("ab") as file:
        file.write(b"wo\n" + record("stderr", "F", "err") + b"garbage\n")
    size = logfile.size()
    assert size is not None
    assert _texts(logfile.read(size, 1 << 20)) == [b"two", b"err"]
    assert logfile.bad_records == 1
    assert logfile.read(size, 1 << 20) == []


def test_log_file_starts_over_when_truncated_or_replaced(tmp_path: Path) -> None:
    path = tmp_path / "task.log"
    path.write_bytes(record("stdout", "F", "a long first line") * 3)
    logfile = LogFile(str(path))
    size = logfile.size()
    assert size is not None
    assert len(logfile.read(size, 1 << 20)) == 3
    path.write_bytes(record("stdout", "F", "after truncation"))
    size = logfile.size()
    assert size is not None
    assert _texts(logfile.read(size, 1 << 20)) == [b"after truncation"]
    replacement = tmp_path / "new.log"
    replacement.write_bytes(record("stdout", "F", "rotated") * 2)
    os.replace(replacement, path)
    size = logfile.size()
    assert size is not None
    assert _texts(logfile.read(size, 1 << 20)) == [b"rotated", b"rotated"]
    path.unlink()
    assert logfile.size() is None


def test_log_file_since_and_read_budget(tmp_path: Path) -> None:
    path = tmp_path / "task.log"
    path.write_bytes(b"".join(record("stdout", "F", f"line {i}", second=i) for i in range(5)))
    logfile = LogFile(str(path), since=(T0 + 3) * NS, chunk=64)
    size = logfile.size()
    assert size is not None
    first = logfile.read(size, 1)  # the budget stops it after the first chunk
    assert 0 < logfile.offset < size
    rest = logfile.read(size, 1 << 20)
    assert _texts(first + rest) == [b"line 3", b"line 4"]


# ---------------------------------------------------------------- swarmctl


def test_tail_flag() -> None:
    assert cli_logs.parse_tail("--tail", "all") is None
    assert cli_logs.parse_tail("--tail", " 7 ") == 7
    assert cli_logs.parse_tail("--tail", "0") == 0
    for bad in ("-1", "ten", ""):
        with pytest.raises(BadFlag, match="--tail"):
            cli_logs.parse_tail("--tail", bad)


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-29T03:23:32Z", T0 * NS),
    ("2026-11-29T03:23:32.123456789Z", T0 * NS + 123456789),
    ("2026-11-29T04:23:32.5+01:00", T0 * NS + NS // 2),
    ("2026-11-29T03:23:32", T0 * NS),
    ("2026-11-29", (T0 - 3 * 3600 - 23 * 60 - 32) * NS),
    (str(T0), T0 * NS),
    (f"{T0}.25", T0 * NS + NS // 4),
    ("10m", (T0 + 3600) * NS - 600 * NS),
    ("1h30m", (T0 + 3600) * NS - 5400 * NS),
])
def test_since_flag(text: str, expected: int) -> None:
    assert cli_logs.parse_since("--since", text, (T0 + 3600) * NS) == expected


@pytest.mark.parametrize("text", ["", "soon", "2026-11-32", "2026-11-29T25:00:00Z", "-5m"])
def test_bad_since_flag(text: str) -> None:
    with pytest.raises(BadFlag, match="--since"):
        cli_logs.parse_since("--since", text, T0 * NS)


def test_timestamps_are_printed_as_rfc3339_nano_utc() -> None:
    assert cli_logs.format_timestamp(T0 * NS + 5) == "2026-11-29T03:23:32.000000005Z"
    assert cli_logs.format_timestamp(T0 * NS) == "2026-11-29T03:23:32.000000000Z"


TASK_A = "a1b2c3d4e5f6g7h8i9j0k1l2m"
TASK_B = "zz9y8x7w6v5u4t3s2r1q0p9o8"


def _names() -> cli_logs.Names:
    tasks = {TASK_A: pb.Task(id=TASK_A, service_name="web", slot=1, node_id="n1"),
             TASK_B: pb.Task(id=TASK_B, service_name="web", slot=12, node_id="n2")}
    return cli_logs.Names(tasks=tasks, hostnames={"n1": "node-a", "n2": "node-bbb"})


def _message(task_id: str, node_id: str, text: bytes, *, stderr: bool = False,
             partial: bool = False, nanos: int = T0 * NS) -> lpb.LogMessage:
    message = lpb.LogMessage(
        context=lpb.LogContext(service_id="s", node_id=node_id, task_id=task_id),
        stream=lpb.LOG_STREAM_STDERR if stderr else lpb.LOG_STREAM_STDOUT,
        data=text, partial=partial)
    message.timestamp.FromNanoseconds(nanos)
    return message


def _print(fmt: cli_logs.Format, *messages: lpb.LogMessage,
           names: cli_logs.Names | None = None) -> tuple[str, str]:
    out, err = io.BytesIO(), io.BytesIO()
    printer = cli_logs.Printer(names or _names(), fmt, out, err)
    for message in messages:
        printer.write([message])
    return out.getvalue().decode(), err.getvalue().decode()


def test_lines_are_prefixed_with_task_and_node_and_stderr_goes_to_stderr() -> None:
    out, err = _print(cli_logs.Format(),
                      _message(TASK_A, "n1", b"hello"),
                      _message(TASK_B, "n2", b"oops", stderr=True),
                      _message(TASK_A, "n1", b"again"))
    assert out == ("web.1.a1b2c3d4e5f6@node-a | hello\n"
                   "web.1.a1b2c3d4e5f6@node-a    | again\n")
    assert err == "web.12.zz9y8x7w6v5u@node-bbb | oops\n"


def test_prefix_options() -> None:
    message = _message(TASK_A, "n1", b"hi", nanos=T0 * NS + 42)
    assert _print(cli_logs.Format(task_ids=False), message)[0] == "web.1@node-a | hi\n"
    assert _print(cli_logs.Format(no_trunc=True), message)[0] == f"web.1.{TASK_A}@node-a | hi\n"
    assert _print(cli_logs.Format(raw=True), message)[0] == "hi\n"
    assert _print(cli_logs.Format(timestamps=True, raw=True), message)[0] == \
        "2026-11-29T03:23:32.000000042Z hi\n"
    assert _print(cli_logs.Format(timestamps=True), message)[0] == \
        "2026-11-29T03:23:32.000000042Z web.1.a1b2c3d4e5f6@node-a | hi\n"


def test_unknown_tasks_and_nodes_are_looked_up_once() -> None:
    asked: list[str] = []

    def lookup_task(task_id: str) -> pb.Task | None:
        asked.append(task_id)
        return pb.Task(id=task_id, service_name="web", slot=3) if task_id == "new" else None

    def lookup_hostname(node_id: str) -> str | None:
        asked.append(node_id)
        return None

    names = cli_logs.Names(lookup_task=lookup_task, lookup_hostname=lookup_hostname)
    out, _ = _print(cli_logs.Format(), _message("new", "n9", b"x"), _message("new", "n9", b"y"),
                    _message("gone", "n9", b"z"), names=names)
    assert out == "web.3.new@n9 | x\nweb.3.new@n9 | y\ngone@n9      | z\n"
    assert asked == ["new", "n9", "gone"]


def test_a_long_line_in_pieces_is_printed_as_one_line() -> None:
    out, _ = _print(cli_logs.Format(),
                    _message(TASK_A, "n1", b"abc", partial=True),
                    _message(TASK_A, "n1", b"def", partial=True),
                    _message(TASK_A, "n1", b"gh"),
                    _message(TASK_A, "n1", b"next"))
    assert out == "web.1.a1b2c3d4e5f6@node-a | abcdefgh\nweb.1.a1b2c3d4e5f6@node-a | next\n"


def test_node_warning() -> None:
    names = _names()
    names.hostnames["n3"] = "n3"
    assert cli_logs.node_warning(lpb.NodeLogError(node_id="n1", message="down"), names) == \
        "swarmctl: warning: node node-a (n1): down"
    assert cli_logs.node_warning(lpb.NodeLogError(node_id="n3", message="down"), names) == \
        "swarmctl: warning: node n3: down"
