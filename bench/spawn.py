"""The agent's cost of spawning a process through asyncio, by child watcher.

    python -m bench.spawn --count 50 --rounds 3

N concurrent `runc --version` (a Go binary, as the agent spawns for every
`runc start`) through asyncio.create_subprocess_exec with pipes, as
RuncRuntime._runc does, with Python 3.11's default ThreadedChildWatcher (a
thread per child blocked in waitpid) and with the PidfdChildWatcher the agent
now uses (3.12's default). Prints one JSON line: for each, the best wall time
and the best CPU time of this process (user + system, the children not
included) over the rounds. No root, no containers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import sys
import time
import warnings


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _one(binary: str) -> None:
    process = await asyncio.create_subprocess_exec(
        binary, "--version", stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    await process.communicate()


async def _burst(binary: str, count: int) -> tuple[float, float]:
    cpu, started = _cpu(), time.perf_counter()
    await asyncio.gather(*(_one(binary) for _ in range(count)))
    return time.perf_counter() - started, _cpu() - cpu


def measure(binary: str, count: int, rounds: int, watcher: str) -> dict[str, float]:
    with warnings.catch_warnings():  # child watchers are deprecated from 3.12
        warnings.simplefilter("ignore", DeprecationWarning)
        policy = asyncio.get_event_loop_policy()
        policy.set_child_watcher(asyncio.PidfdChildWatcher() if watcher == "pidfd"
                                 else asyncio.ThreadedChildWatcher())
    results = [asyncio.run(_burst(binary, count)) for _ in range(rounds)]
    return {f"{watcher}_wall_ms": round(min(r[0] for r in results) * 1000, 1),
            f"{watcher}_cpu_ms": round(min(r[1] for r in results) * 1000, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.spawn")
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--binary", default=shutil.which("runc") or "/usr/sbin/runc")
    args = parser.parse_args()
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        sys.exit("bench.spawn compares Python 3.11's child watchers on Linux")
    figures: dict[str, object] = {"bench": "spawn", "count": args.count}
    for watcher in ("threaded", "pidfd", "threaded", "pidfd"):  # ABAB: drift weighs on both
        for key, value in measure(args.binary, args.count, args.rounds, watcher).items():
            previous = figures.get(key)
            figures[key] = value if not isinstance(previous, float) else min(previous, value)
    figures["load_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
