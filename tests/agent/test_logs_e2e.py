"""`swarmctl service logs` end to end on real parts: etcd, a `swarm-controller`
process, two `swarm-agent` processes running runc containers of the test
registry's busybox image (conmon writes their logs), and the real `swarmctl`
as a process. Loopback only.

The cluster fixture (tests/agent/test_agent_e2e.py) stops the processes by
PID and removes every container, also when a test fails; the CLI processes
started here are killed by PID in `finally`.
"""

from __future__ import annotations

import asyncio
import calendar
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb
from tests.agent.test_agent_e2e import Cluster, cluster, running, service_spec

__all__ = ["cluster"]  # the fixture, imported for the tests below

PRINTS = "for i in 1 2 3; do echo line $i; echo err $i >&2; done; sleep 0.3; echo last; " \
         "sleep 1000"
TICKS = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"
LINE_RE = re.compile(r"^(?:(\S+) )?(\S+)\s+\| (.*)$")
CLI = [sys.executable, "-c", "from swarm.cli.main import main; main()"]


@dataclass
class Output:
    code: int
    out: str
    err: str

    def lines(self, stream: str = "out") -> list[tuple[str, str]]:
        """(prefix, text) of each line."""
        text = self.out if stream == "out" else self.err
        found = []
        for line in text.splitlines():
            match = LINE_RE.match(line)
            assert match, f"unexpected line {line!r} in {text!r}"
            found.append((match.group(2), match.group(3)))
        return found


def _cli_env(cluster: Cluster) -> dict[str, str]:
    # swarmctl talks mutual TLS with the admin identity the controller wrote.
    return {**os.environ, "SWARMCTL_TLS_DIR": cluster.controller.extra["admin"]}


def swarmctl(cluster: Cluster, *args: str, timeout: float = 30.0) -> Output:
    result = subprocess.run([*CLI, "--controller", cluster.controller.addr, *args],
                            capture_output=True, text=True, timeout=timeout,
                            env=_cli_env(cluster))
    return Output(result.returncode, result.stdout, result.stderr)


def start_swarmctl(cluster: Cluster, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*CLI, "--controller", cluster.controller.addr, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=_cli_env(cluster))


async def _prefixes(cluster: Cluster, tasks: Sequence[pb.Task]) -> dict[str, str]:
    """task ID -> the prefix docker would print: web.1.<12 chars of the ID>@node."""
    nodes = {n.id: n.description.hostname
             for n in (await cluster.control.ListNodes(cpb.ListNodesRequest())).nodes}
    return {t.id: f"{t.service_name}.{t.slot}.{t.id[:12]}@{nodes[t.node_id]}" for t in tasks}


async def _until(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await asyncio.to_thread(check):
            return
        assert time.monotonic() < deadline, f"{what} not reached in {timeout}s"
        await asyncio.sleep(0.2)


async def test_service_logs(cluster: Cluster, busybox_ref: str) -> None:
    cluster.start_agent("node-a")
    cluster.start_agent("node-b")
    await cluster.wait_ready(2)
    web = (await cluster.control.CreateService(cpb.CreateServiceRequest(
        spec=service_spec("web", busybox_ref, "sh", "-c", PRINTS, replicas=2)))).service
    tasks = await cluster.wait(web.id, lambda ts: len(running(ts)) == 2, "2 running", 60)
    assert len({t.node_id for t in tasks}) == 2, "one task per agent"
    prefixes = await _prefixes(cluster, tasks)

    # Every line once, with its task and node; stderr lines on stderr.
    last: Output | None = None

    def complete() -> bool:
        nonlocal last
        last = swarmctl(cluster, "service", "logs", "web")
        return last.code == 0 and last.out.count("| last") == 2

    await _until("both tasks' last line", complete)
    assert last is not None
    assert last.err.count("| err") == 6, last.err
    expected_out = Counter((p, text) for p in prefixes.values()
                           for text in ("line 1", "line 2", "line 3", "last"))
    assert Counter(last.lines()) == expected_out, last.out
    expected_err = Counter((p, f"err {i}") for p in prefixes.values() for i in (1, 2, 3))
    assert Counter(last.lines("err")) == expected_err, last.err
    # Each task's lines in the order written.
    for prefix in prefixes.values():
        assert [t for p, t in last.lines() if p == prefix] == [
            "line 1", "line 2", "line 3", "last"]

    # --tail 1: the last line of each task.
    tail = swarmctl(cluster, "service", "logs", "--tail", "1", "web")
    assert tail.code == 0, tail.err
    assert Counter(tail.lines()) == Counter((p, "last") for p in prefixes.values())
    assert tail.err == ""

    # --no-task-ids and --raw.
    short = swarmctl(cluster, "service", "logs", "--tail", "1", "--no-task-ids", "web")
    assert sorted(p for p, _ in short.lines()) == sorted(
        re.sub(r"\.[0-9a-z]{12}@", "@", p) for p in prefixes.values())
    raw = swarmctl(cluster, "service", "logs", "--raw", "web")
    assert raw.out.splitlines().count("last") == 2
    assert raw.err.splitlines().count("err 3") == 2

    # --since in the future: nothing.
    future = swarmctl(cluster, "service", "logs", "--since", str(int(time.time()) + 3600), "web")
    assert (future.code, future.out, future.err) == (0, "", "")

    # An unknown service: one line, exit 1.
    unknown = swarmctl(cluster, "service", "logs", "nope")
    assert unknown.code == 1
    assert unknown.err == "swarmctl: service 'nope' not found\n"
    assert unknown.out == ""

    # A node that is down: its lines are missing, and a warning says so.
    down_task = next(t for t in tasks if prefixes[t.id].endswith("@node-b"))
    cluster.agents["node-b"].stop()
    partial = swarmctl(cluster, "service", "logs", "web")
    assert partial.code == 0, partial.err
    assert {p for p, _ in partial.lines()} == {prefixes[t.id] for t in tasks
                                               if t.id != down_task.id}
    warnings = [line for line in partial.err.splitlines() if line.startswith("swarmctl:")]
    assert len(warnings) == 1, partial.err
    assert warnings[0].startswith("swarmctl: warning: node node-b (")
    assert "logs are missing" in warnings[0]


def _read_available(fd: int, until: float) -> bytes:
    ready, _, _ = select.select([fd], [], [], max(0.0, until - time.monotonic()))
    return os.read(fd, 65536) if ready else b""


async def test_follow_streams_new_lines_and_stops_with_the_cli(cluster: Cluster,
                                                              busybox_ref: str) -> None:
    cluster.start_agent("node-a")
    cluster.start_agent("node-b")
    await cluster.wait_ready(2)
    ticker = (await cluster.control.CreateService(cpb.CreateServiceRequest(
        spec=service_spec("ticker", busybox_ref, "sh", "-c", TICKS, replicas=2)))).service
    tasks = await cluster.wait(ticker.id, lambda ts: len(running(ts)) == 2, "2 running", 60)
    prefixes = await _prefixes(cluster, tasks)

    started_ns = time.time_ns()
    cli = start_swarmctl(cluster, "service", "logs", "-f", "--tail", "0", "--timestamps",
                         "ticker")
    try:
        assert cli.stdout is not None
        seen: dict[str, list[int]] = {p: [] for p in prefixes.values()}
        buffer = b""
        deadline = time.monotonic() + 20
        while any(len(ticks) < 3 for ticks in seen.values()):
            assert time.monotonic() < deadline, f"follow showed only {seen}; {buffer!r}"
            buffer += await asyncio.to_thread(_read_available, cli.stdout.fileno(), deadline)
            *complete, rest = buffer.split(b"\n")
            buffer = rest
            for line in complete:
                match = LINE_RE.match(line.decode())
                assert match, line
                stamp, prefix, text = match.groups()
                assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", stamp), stamp
                written = _parse_rfc3339(stamp)
                # --tail 0: only lines written after the call.
                assert written >= started_ns - 500_000_000, (stamp, started_ns)
                assert text.startswith("tick ")
                seen[prefix].append(int(text.split()[1]))
        for ticks in seen.values():
            assert ticks == sorted(set(ticks)), seen

        # The CLI goes away (Ctrl-C): the controller drops the subscription and
        # the agents stop reading.
        cli.send_signal(signal.SIGINT)
        assert cli.wait(timeout=10) == 130
        controller = cluster.controller

        def dropped() -> bool:
            return re.search(r"log subscription \w+ closed", controller.log()) is not None and \
                all("closed by the controller" in agent.log()
                    for agent in cluster.agents.values())

        await _until("subscription dropped", dropped, 10)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()


def _parse_rfc3339(stamp: str) -> int:
    seconds = time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")
    return calendar.timegm(seconds) * 1_000_000_000 + int(stamp[20:29])
