"""What metrics cost in agent memory: a real agent's RSS with --metrics-addr and
without it.

    python -m bench.agent_rss [--rounds 3]

Real etcd, a real controller process, and a real `swarm-agent` (root: it
prepares runc, overlay and DNS state) started with a fresh state dir, once
without metrics and once with them, alternating for --rounds rounds. Each is
measured (VmRSS of /proc/PID/status) once its node is READY and it has run
idle for --settle seconds; with metrics on, /metrics is scraped first so that
the registry's first exposition is counted too. Prints one JSON line: the
median RSS of each in MiB and the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from swarm.agent.main import purge_state_dir
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli.dev.daemons import stop_child
from tests.etcd_server import EtcdServer, free_port
from tests.processes import Proc, admin_channel, start_agent, start_controller, worker_token

PREFIX = "/bench-agent-rss/"


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _scrape(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as page:
        return bytes(page.read())


async def _ready_nodes(controller: Proc) -> set[str]:
    async with admin_channel(controller) as channel:
        nodes = (await cgrpc.ControlStub(channel).ListNodes(cpb.ListNodesRequest())).nodes
    return {n.description.hostname for n in nodes if n.status.state == pb.NodeStatus.READY}


async def measure(controller: Proc, token: str, hostname: str, metrics: bool,
                  settle: float) -> float:
    state_dir = tempfile.mkdtemp(prefix="bench-rss-")
    port = free_port()
    extra = ["--metrics-addr", f"127.0.0.1:{port}"] if metrics else []
    agent = start_agent([controller], state_dir, hostname=hostname, join_token=token,
                        extra_args=[*extra, "--dns-forwarder", "none"])
    try:
        deadline = time.monotonic() + 60
        while hostname not in await _ready_nodes(controller):
            if time.monotonic() > deadline or agent.process.poll() is not None:
                raise RuntimeError(f"agent {hostname} did not become ready:\n{agent.log()}")
            await asyncio.sleep(0.2)
        if metrics:
            page = await asyncio.to_thread(_scrape, f"http://127.0.0.1:{port}/metrics")
            assert b"swarm_agent_tasks" in page
        await asyncio.sleep(settle)
        return rss_mib(agent.process.pid)
    finally:
        stop_child(agent.process, 10)
        # Its ingress sandbox namespace and cgroups too, not only the directory.
        await asyncio.to_thread(purge_state_dir, Path(state_dir))
        shutil.rmtree(state_dir, ignore_errors=True)


async def run(rounds: int, settle: float) -> dict[str, object]:
    etcd = EtcdServer.start()
    controller = start_controller(etcd.endpoint, PREFIX, heartbeat_period=1.0)
    try:
        token = await worker_token(controller)
        off: list[float] = []
        on: list[float] = []
        for index in range(rounds):
            off.append(await measure(controller, token, f"rss-off-{index}", False, settle))
            on.append(await measure(controller, token, f"rss-on-{index}", True, settle))
        return {
            "bench": "agent_rss",
            "rounds": rounds,
            "rss_mib_metrics_off": round(statistics.median(off), 1),
            "rss_mib_metrics_on": round(statistics.median(on), 1),
            "rss_mib_metrics_cost": round(statistics.median(on) - statistics.median(off), 1),
            "samples_off": [round(v, 1) for v in off],
            "samples_on": [round(v, 1) for v in on],
            "cpus": os.cpu_count(),
        }
    finally:
        controller.stop()
        etcd.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.agent_rss")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=3.0, metavar="SECONDS")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if os.geteuid() != 0:
        raise SystemExit("bench.agent_rss: must run as root (a real agent)")
    print(json.dumps(asyncio.run(run(args.rounds, args.settle))))


if __name__ == "__main__":
    main()
