"""Long-lived processes the local cluster starts and a later `swarmctl`
invocation stops: recorded by pid AND start time, so a pid the kernel has
since handed to another process is never signalled."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Daemon:
    role: str  # "etcd", "controller", "registry", "agent h1"...
    pid: int
    started: int  # start time in clock ticks since boot (/proc/PID/stat field 22)
    argv: list[str] = field(default_factory=list)
    log: str = ""


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return text[text.rindex(")") + 2:].split()


def start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None  # field 22 overall


def alive(daemon: Daemon) -> bool:
    fields = _stat_fields(daemon.pid)
    if fields is None or int(fields[19]) != daemon.started:
        return False
    return fields[0] not in ("Z", "X")  # a zombie has ended


def spawn(role: str, argv: Sequence[str], log_path: Path,
          env: Mapping[str, str] | None = None) -> Daemon:
    """Start argv detached from the caller's session (it outlives swarmctl),
    output appended to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   env=dict(env) if env is not None else None)
    started = start_time(process.pid)
    if started is None:  # ended at once: report it with its log
        process.wait()
        raise RuntimeError(f"{role} exited at once ({process.returncode}); see {log_path}")
    # Popen's object is dropped: the daemon is found by pid from now on.
    process.returncode = 0  # silence "still running" warnings at interpreter exit
    return Daemon(role, process.pid, started, list(argv), str(log_path))


def _reap(pid: int) -> None:
    # Our own child (same swarmctl process, as in tests) must be reaped or it
    # stays a zombie; another process's child is not ours to wait for.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop(daemon: Daemon, timeout: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after timeout. False when it was not running."""
    if not alive(daemon):
        _reap(daemon.pid)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(daemon.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(daemon):
        _reap(daemon.pid)
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(daemon.pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
        time.sleep(0.05)
    _reap(daemon.pid)
    return True


def stop_child(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop a child this process started and still holds: SIGTERM, SIGKILL
    after timeout, reaped either way. Idempotent."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait()
