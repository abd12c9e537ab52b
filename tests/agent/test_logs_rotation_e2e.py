"""Bounded logs end to end: a controller process, a `swarm-agent` process
running runc containers, and the real `swarmctl` as a process.

- A task writing 80 MB to stdout (the default limits, 10 MiB x 3) keeps its
  files under the cap, and `service logs --tail 5` shows its newest lines.
- `service logs -f` follows a task's log through several rotations (64 KiB
  files) and prints every line once, in order.
- `--log-opt` and `--security-opt` with a bad value: one line, exit 2,
  nothing created.

The cluster fixture (tests/agent/test_agent_e2e.py) stops the processes by
PID and removes every container, also when a test fails.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

from swarm.agent.logfile import log_chain
from swarm.api import logopts
from swarm.api.v1 import control_pb2 as cpb
from tests.agent.test_agent_e2e import Cluster, cluster, running, service_spec
from tests.agent.test_logs_e2e import _until, start_swarmctl, swarmctl

__all__ = ["cluster"]  # the fixture, imported for the tests below

LINE = "0123456789" * 10  # with yes' newline: 101 bytes a line
CHATTY = (f"yes {LINE} | head -n 800000; seq 1 5 | sed 's/^/last /'; sleep 1000")
# 1000 numbered lines a second (a pause every 100): a 64 KiB file every second or so.
COUNTER = ("i=0; while [ $i -lt 6000 ]; do echo n=$i; i=$((i+1)); "
           "case $i in *00) usleep 100000;; esac; done; echo done; sleep 1000")


def _sizes(files: list[str]) -> list[int]:
    return [os.path.getsize(name) for name in files]


async def test_80_megabytes_stay_under_the_cap_and_tail_shows_the_newest(
        cluster: Cluster, busybox_ref: str) -> None:
    cluster.start_agent("node-a")
    await cluster.wait_ready(1)
    chatty = (await cluster.control.CreateService(cpb.CreateServiceRequest(
        spec=service_spec("chatty", busybox_ref, "sh", "-c", CHATTY)))).service
    (task,) = await cluster.wait(chatty.id, lambda ts: len(running(ts)) == 1, "running", 60)
    path = str(cluster.runtime("node-a").log_path(task.id))
    last: list[str] = []

    def newest_shown() -> bool:
        result = swarmctl(cluster, "service", "logs", "--raw", "--tail", "5", "chatty")
        last[:] = result.out.splitlines()
        return result.code == 0 and last == [f"last {i}" for i in range(1, 6)]

    await _until("the last 5 lines", newest_shown, timeout=120)
    limits = logopts.LogLimits()
    files = log_chain(path)
    sizes = _sizes(files)
    assert 2 <= len(files) <= limits.max_file, files  # rotated, and the rotated files kept
    assert all(size <= limits.max_size for size in sizes), sizes
    assert sum(sizes) <= limits.max_size * limits.max_file  # 30 MiB of the 80 MB written


async def test_follow_goes_through_rotations(cluster: Cluster, busybox_ref: str) -> None:
    cluster.start_agent("node-a")
    await cluster.wait_ready(1)
    spec = service_spec("counter", busybox_ref, "sh", "-c", COUNTER)
    spec.task.log_driver.options[logopts.MAX_SIZE] = str(logopts.MIN_MAX_SIZE)
    spec.task.log_driver.options[logopts.MAX_FILE] = "20"  # nothing dropped: all lines checkable
    counter = (await cluster.control.CreateService(cpb.CreateServiceRequest(spec=spec))).service
    (task,) = await cluster.wait(counter.id, lambda ts: len(running(ts)) == 1, "running", 60)
    follower = start_swarmctl(cluster, "service", "logs", "-f", "--raw", "counter")
    try:
        assert follower.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while "done" not in lines:
            assert time.monotonic() < deadline, lines[-3:]
            line = await asyncio.to_thread(follower.stdout.readline)
            assert line, "swarmctl ended"
            lines.append(line.decode().rstrip("\n"))
    finally:
        follower.send_signal(signal.SIGINT)
        try:
            follower.wait(10)
        except subprocess.TimeoutExpired:
            follower.kill()
            follower.wait()
    assert lines == [f"n={i}" for i in range(6000)] + ["done"]
    rotated = log_chain(str(cluster.runtime("node-a").log_path(task.id)))
    assert len(rotated) >= 3, rotated  # it went through several rotations


async def test_bad_log_and_security_options_create_nothing(cluster: Cluster,
                                                           tmp_path: Path) -> None:
    bad_profile = tmp_path / "profile.json"
    bad_profile.write_text("{ not json")
    for args, fragment in (
            (("--log-opt", "max-size=lots"), "--log-opt: max-size: invalid size 'lots'"),
            (("--security-opt", f"seccomp={bad_profile}"),
             f"--security-opt: seccomp profile {bad_profile}: not valid JSON")):
        result = swarmctl(cluster, "service", "create", "bad", "--image", "busybox", *args)
        assert result.code == 2, result
        (line,) = result.err.strip().splitlines()
        assert line.startswith("swarmctl: ")
        assert fragment in line
    services = (await cluster.control.ListServices(cpb.ListServicesRequest())).services
    assert [s.spec.name for s in services] == []
