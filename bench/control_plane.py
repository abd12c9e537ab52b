"""Control-plane convergence: real etcd, a real controller, simulated agents.

    python -m bench.control_plane --nodes 500 --tasks 10000 [--network]

Starts etcd (with fsync, as in production) and one controller in this process,
and N simulated nodes in a child process (real gRPC sessions, fake worker).
Times from the `ScaleService` call until every task is stored as RUNNING, and
prints one JSON line. With --network the service is attached to an overlay
network (a /16), so every task also goes through the allocator (NEW ->
PENDING, one address each) and every node is sent the network's peers.
Mutual TLS is on (as in production): the nodes join
with the worker token, each with its own certificate and connection;
--insecure measures plaintext for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time

from swarm.api import channels, pki
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.ca import CASettings
from swarm.controller.server import Controller, ControllerConfig
from swarm.controller.store import Change, EtcdSettings
from tests.etcd_server import EtcdServer


def _is_running(task: object) -> bool:
    return isinstance(task, pb.Task) and task.status.state == pb.RUNNING \
        and task.desired_state == pb.RUNNING


async def run(nodes: int, tasks: int, fsync: bool, network: bool = False,
              insecure: bool = False) -> dict[str, object]:
    etcd = EtcdServer.start(fsync=fsync)
    agents: subprocess.Popen[bytes] | None = None
    controller = Controller(ControllerConfig(
        listen="127.0.0.1:0", etcd=EtcdSettings(endpoints=(etcd.endpoint,)), prefix="/bench/",
        insecure=insecure,
        # One address joins every node: no per-peer join limit here.
        ca=CASettings(kek=pki.generate_kek(), join_rate=1e6, join_burst=1_000_000)))
    try:
        await controller.start()
        addr = f"127.0.0.1:{controller.port}"
        security = ["--insecure"] if insecure else [
            "--join-token", str(controller.pki.token(pki.Role.WORKER)),
            "--join-addr", controller.join_addr]
        with tempfile.TemporaryFile() as agent_log:
            agents = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, not awaited
                [sys.executable, "-m", "swarm.agent.simulated", "--controller", addr,
                 "--nodes", str(nodes), *security], stdout=agent_log, stderr=subprocess.STDOUT)
            cache = controller.store.cache
            deadline = time.monotonic() + 120
            while sum(n.status.state == pb.NodeStatus.READY for n in cache.nodes.values()) < nodes:
                if time.monotonic() > deadline or agents.poll() is not None:
                    raise RuntimeError("simulated nodes did not all become ready")
                await asyncio.sleep(0.1)

            identity = None if insecure else controller.pki.admin_identity()
            async with channels.client_channel(addr, identity, insecure=insecure) as channel:
                control = cgrpc.ControlStub(channel)
                spec = pb.ServiceSpec(name="bench", replicated=pb.ReplicatedService(replicas=0))
                spec.task.container.image = "busybox:latest"
                if network:
                    net_spec = pb.NetworkSpec(name="bench", ipam=pb.IPAMConfig(
                        subnet="10.128.0.0/16"))
                    await control.CreateNetwork(cpb.CreateNetworkRequest(spec=net_spec))
                    spec.task.networks.add(target="bench")
                service = (await control.CreateService(cpb.CreateServiceRequest(spec=spec))).service

                running = 0
                done = asyncio.Event()

                def count(change: Change) -> None:
                    nonlocal running
                    running += _is_running(change.new) - _is_running(change.old)
                    if running >= tasks:
                        done.set()

                cache.subscribe(count)
                cpu_before = time.process_time()
                started = time.perf_counter()
                await control.ScaleService(cpb.ScaleServiceRequest(ref=service.id, replicas=tasks))
                await asyncio.wait_for(done.wait(), timeout=600)
                seconds = time.perf_counter() - started
                controller_cpu = time.process_time() - cpu_before
            per_node = [len(cache.tasks_by_node.get(n, {})) for n in cache.nodes]
            return {
                "bench": "control_plane",
                "nodes": nodes,
                "tasks": tasks,
                "seconds_to_converge": round(seconds, 3),
                "tasks_per_s": round(tasks / seconds, 1),
                "tasks_per_node_min": min(per_node),
                "tasks_per_node_max": max(per_node),
                # CPU the controller (this process) used while converging; the
                # simulated agents run in a child process on the same cores.
                "controller_cpu_s": round(controller_cpu, 3),
                "orchestrator_passes": controller.orchestrator.passes,
                "scheduler_passes": controller.scheduler.passes,
                "network": network,
                "allocator_passes": controller.allocator.passes,
                "etcd_fsync": fsync,
                "mtls": not insecure,
                "controller_max_rss_mib": round(
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "cpus": os.cpu_count(),
            }
    finally:
        if agents is not None and agents.poll() is None:
            agents.terminate()
            agents.wait(timeout=30)
        await controller.stop()
        etcd.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.control_plane")
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--no-fsync", action="store_true",
                        help="run etcd with --unsafe-no-fsync (not how production runs)")
    parser.add_argument("--network", action="store_true",
                        help="attach the service to an overlay network (IPAM and peers)")
    parser.add_argument("--insecure", action="store_true",
                        help="plaintext gRPC instead of mutual TLS (for comparison)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(asyncio.run(run(args.nodes, args.tasks, not args.no_fsync, args.network,
                                     args.insecure))))


if __name__ == "__main__":
    main()
