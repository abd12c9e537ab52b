"""Event delivery latency: from a write in etcd until `swarmctl events` prints it.

    python -m bench.events --tasks 1000 --nodes 20

Real etcd (fsync on), a real controller process, simulated nodes in another
process, and `swarmctl events -o json --filter type=task` as a third: the
CLI an operator runs, reading the controller's Events stream. A service of
--tasks replicas is created, so that every task changes state several times
(new, pending, assigned, accepted, preparing, starting, running) in bursts.

The write time of each change is when this process's own etcd watch sees its
revision (a watch delivers within a millisecond or two of the commit, and
this process does nothing else meanwhile); the delivery time is when the line
of that event comes out of swarmctl's stdout. Prints one JSON line: the
number of events, p50, p99 and max latency in ms over every event printed, and
the p99 of its two legs (etcd to the controller's watch cache, by the event's
own time; the controller to swarmctl's output).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.store import EtcdClient, EtcdSettings
from tests.etcd_server import EtcdServer
from tests.processes import (
    admin_channel,
    admin_identity,
    start_controller,
    start_simulated_agents,
    worker_token,
)

PREFIX = "/bench-events/"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _read_lines(stream: object, lines: list[tuple[int, float, float]],
                running: dict[str, bool]) -> None:
    """(revision, seen by the controller, printed) per line, and which tasks run."""
    for raw in stream:  # type: ignore[attr-defined]
        now = time.time()
        event = json.loads(raw)
        lines.append((int(event["revision"]), event["timeNano"] / 1e9, now))
        state = event["attributes"].get("state.new", event["attributes"].get("state"))
        running[event["id"]] = state == "running"


async def run(tasks: int, nodes: int) -> dict[str, object]:
    etcd = EtcdServer.start(fsync=True)
    controller = agents = None
    events: subprocess.Popen[str] | None = None
    written: dict[int, float] = {}
    try:
        controller = start_controller(etcd.endpoint, PREFIX, heartbeat_period=2.0)
        agents = start_simulated_agents([controller], nodes, await worker_token(controller))
        admin = Path(tempfile.mkdtemp(prefix="bench-events-"))
        admin_identity(controller).save(admin)
        async with admin_channel(controller) as channel:
            control = cgrpc.ControlStub(channel)
            deadline = time.monotonic() + 60
            while sum(n.status.state == pb.NodeStatus.READY for n in (await control.ListNodes(
                    cpb.ListNodesRequest())).nodes) < nodes:
                if time.monotonic() > deadline:
                    raise RuntimeError("simulated nodes did not all become ready")
                await asyncio.sleep(0.2)

            client = EtcdClient.open(EtcdSettings(endpoints=(etcd.endpoint,)))
            start_revision = await client.revision()

            async def watch() -> None:
                async for batch in client.watch_prefix(PREFIX.encode(), start_revision + 1):
                    now = time.time()
                    for _deleted, kv in batch.events:
                        written.setdefault(kv.mod_revision, now)

            watcher = asyncio.create_task(watch())
            env = dict(os.environ, SWARMCTL_TLS_DIR=str(admin))
            events = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, read by a thread
                [sys.executable, "-c", "from swarm.cli.main import main; main()",
                 "--controller", controller.addr,
                 "events", "-o", "json", "--filter", "type=task"],
                stdout=subprocess.PIPE, text=True, env=env)
            lines: list[tuple[int, float, float]] = []
            running: dict[str, bool] = {}
            reader = threading.Thread(target=_read_lines, daemon=True,
                                      args=(events.stdout, lines, running))
            reader.start()
            await asyncio.sleep(1.0)  # the stream is open before the writes start
            spec = pb.ServiceSpec(name="bench", replicated=pb.ReplicatedService(replicas=tasks))
            spec.task.container.image = "busybox:latest"
            started = time.monotonic()
            await control.CreateService(cpb.CreateServiceRequest(spec=spec))
            while sum(running.values()) < tasks:
                if time.monotonic() - started > 300:
                    raise RuntimeError(f"only {sum(running.values())} of {tasks} tasks ran")
                await asyncio.sleep(0.1)
            converged = time.monotonic() - started
            await asyncio.sleep(1.0)
            watcher.cancel()
            await client.close()
        matched = [(written[r], seen, printed) for r, seen, printed in list(lines)
                   if r in written]
        latencies = [(printed - write) * 1000 for write, _, printed in matched]
        # Where the time goes: etcd to the controller's watch cache, then the stream.
        to_cache = [(seen - write) * 1000 for write, seen, _ in matched]
        to_print = [(printed - seen) * 1000 for _, seen, printed in matched]
        return {
            "bench": "events",
            "tasks": tasks,
            "nodes": nodes,
            "events_printed": len(lines),
            "events_matched": len(latencies),
            "latency_ms_p50": round(percentile(latencies, 0.50), 1),
            "latency_ms_p99": round(percentile(latencies, 0.99), 1),
            "latency_ms_max": round(max(latencies, default=0.0), 1),
            "etcd_to_controller_ms_p99": round(percentile(to_cache, 0.99), 1),
            "controller_to_print_ms_p99": round(percentile(to_print, 0.99), 1),
            "seconds_to_converge": round(converged, 2),
            "cpus": os.cpu_count(),
        }
    finally:
        if events is not None:
            events.terminate()
            events.wait(10)
        for proc in (agents, controller):
            if proc is not None:
                proc.stop()
        etcd.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.events")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(asyncio.run(run(args.tasks, args.nodes))))


if __name__ == "__main__":
    main()
