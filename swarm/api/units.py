"""Parsing and formatting of the values operators type: memory sizes, CPU
counts and durations, with docker's meanings (sizes are binary: 1g = 1 GiB).

Each parser raises ValueError with a message that says what was expected; the
caller prefixes the field name.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}

_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_NANOS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}

NANO_CPUS_PER_CPU = 1_000_000_000


def parse_memory(text: str) -> int:
    """'512Mi', '512m', '1g', '100M', '1024' (bytes) -> bytes."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"invalid size {text!r}: expected a number with an optional unit "
                         "b, k, m, g, t or p (e.g. 512M, 1g, 100Mi)")
    number, unit, _suffix = match.groups()
    value = Decimal(number) * (1024 ** _SIZE_POWERS[unit.lower()])
    if value != value.to_integral_value():
        raise ValueError(f"invalid size {text!r}: not a whole number of bytes")
    return int(value)


def format_memory(num_bytes: int) -> str:
    """Bytes -> the shortest exact docker-style size (1073741824 -> '1GiB')."""
    for unit, power in (("PiB", 5), ("TiB", 4), ("GiB", 3), ("MiB", 2), ("KiB", 1)):
        step = 1024**power
        if num_bytes and num_bytes % step == 0:
            return f"{num_bytes // step}{unit}"
    return f"{num_bytes}B"


def parse_cpus(text: str) -> int:
    """'0.5' -> 500_000_000 nano CPUs, as docker's --cpus / --limit-cpu."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"invalid CPU count {text!r}: expected a number such as 0.5 or 2") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"invalid CPU count {text!r}: expected a number such as 0.5 or 2")
    nanos = value * NANO_CPUS_PER_CPU
    if nanos != nanos.to_integral_value():
        raise ValueError(f"invalid CPU count {text!r}: more than 9 decimal places")
    return int(nanos)


def format_cpus(nano_cpus: int) -> str:
    return f"{Decimal(nano_cpus) / NANO_CPUS_PER_CPU:f}".rstrip("0").rstrip(".") or "0"


def parse_duration(text: str) -> int:
    """Go-style durations as docker takes them: '1m30s', '500ms', '10s', '0' -> nanoseconds."""
    stripped = text.strip()
    if stripped == "0":
        return 0
    pos = 0
    total = Decimal(0)
    for match in _DURATION_PART_RE.finditer(stripped):
        if match.start() != pos:
            break
        total += Decimal(match.group(1)) * _DURATION_NANOS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(stripped):
        raise ValueError(f"invalid duration {text!r}: expected e.g. 10s, 1m30s, 500ms")
    return int(total)


def format_duration(nanos: int) -> str:
    """Nanoseconds -> '1m30s', '500ms', '0s'."""
    if nanos == 0:
        return "0s"
    if nanos % 1_000_000_000:
        if nanos < 1_000_000_000:
            return f"{nanos / 1_000_000:g}ms"
        return f"{nanos / 1_000_000_000:g}s"
    seconds = nanos // 1_000_000_000
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return "".join(parts)


def to_seconds(value: Timestamp | Duration) -> float:
    return value.seconds + value.nanos / 1e9


def timestamp(seconds: float) -> Timestamp:
    result = Timestamp()
    result.FromNanoseconds(round(seconds * 1e9))
    return result
