"""A task's log options (`--log-opt`, compose `logging.options`): how big a
task's log file grows before it is rotated, and how many files are kept.

Default 10 MiB x 3 files (the current one and two rotated), at most 30 MiB
per task. Docker's json-file default is unlimited, the classic way a chatty
container fills a node's disk; the kubelet keeps 10 MiB x 5. Three files
keep enough history for `service logs` to show what happened before a crash
loop while bounding a node of 100 tasks to 3 GiB of logs, and the rotated
files are read back by `service logs` like the current one.

Only the node's rotated files are offered as a log driver: the compose
drivers that mean the same (json-file, local, k8s-file) are accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

from swarm.api import units
from swarm.api.v1 import objects_pb2 as pb

MAX_SIZE = "max-size"
MAX_FILE = "max-file"
DEFAULT_MAX_SIZE = 10 * 1024 * 1024
DEFAULT_MAX_FILE = 3
MIN_MAX_SIZE = 64 * 1024  # a few of conmon's 8 KiB records
MAX_MAX_FILE = 100
FILE_DRIVERS = frozenset({"", "json-file", "local", "k8s-file"})


@dataclass(frozen=True)
class LogLimits:
    max_size: int = DEFAULT_MAX_SIZE  # bytes of one file
    max_file: int = DEFAULT_MAX_FILE  # files kept, the current one included


def check_option(key: str, value: str) -> str:
    """The option's value, normalised; raises ValueError (one line)."""
    if key == MAX_SIZE:
        try:
            size = units.parse_memory(value)
        except ValueError as error:
            raise ValueError(f"{MAX_SIZE}: {error}") from None
        if size < MIN_MAX_SIZE:
            raise ValueError(f"{MAX_SIZE}: {value!r} is below the minimum of "
                             f"{units.format_memory(MIN_MAX_SIZE)}")
        return str(size)
    if key == MAX_FILE:
        text = value.strip()
        if not text.isdigit() or not 1 <= int(text) <= MAX_MAX_FILE:
            raise ValueError(f"{MAX_FILE}: expected a number of files from 1 to "
                             f"{MAX_MAX_FILE}, got {value!r}")
        return str(int(text))
    raise ValueError(f"unknown log option {key!r} (expected {MAX_SIZE} or {MAX_FILE})")


def apply_log_opt(driver: pb.Driver, text: str) -> None:
    """One KEY=VALUE `--log-opt` applied to `driver`; raises ValueError."""
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"expected KEY=VALUE ({MAX_SIZE}=10m, {MAX_FILE}=3), got {text!r}")
    driver.options[key.strip()] = check_option(key.strip(), value)


def limits(driver: pb.Driver, default: LogLimits | None = None) -> LogLimits:
    """The limits a task's driver asks for, over the node's defaults; options
    that do not check (an older or newer client wrote them) are ignored."""
    base = default or LogLimits()
    size, count = base.max_size, base.max_file
    for key, value in driver.options.items():
        try:
            checked = int(check_option(key, value))
        except ValueError:
            continue
        if key == MAX_SIZE:
            size = checked
        else:
            count = checked
    return LogLimits(max_size=size, max_file=count)
