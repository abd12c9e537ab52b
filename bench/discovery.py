"""The agent's share of service-discovery latency: what one task namespace
costs per DNS answer and per load-balancer update.

    python -m bench.discovery [--services 20] [--backends 5] [--queries 500] [--updates 50]
    python -m bench.discovery --scale-ups 20 [--nodes 3]   # end to end: bench/discovery_cluster.py

In one namespace made for the run (lo up, no other device: nothing leaves
it), a Discovery serves a task on one network with S vip-mode services of B
ready backends each (a hand-made assignment, the dispatcher's contract):

* dns: Q sequential A queries for a service name over UDP to 127.0.0.11:53
  from inside the namespace (the round trip a container's lookup costs once
  the agent knows the name);
* lb: U readiness flips of one backend, each followed by one load-balancer
  pass (the `nft -f` transaction replacing the task's table: what a change
  costs per task on the node before the VIP stops or starts choosing it);
* apply: the directory update itself (Discovery.apply of one delta).

Prints one JSON line with p50/p99 of each, in milliseconds. Needs root,
nsenter and nft. The namespace is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import time
from collections.abc import Sequence

import dns.message
import dns.query

from swarm.agent.discovery import Discovery
from swarm.agent.network.dns import Forwarder
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.host.netns import ensure_netns_blocking, netns_path, remove_netns_blocking, socket_in

NETWORK = pb.Network(id="benchnet", vni=4999, subnet="10.99.0.0/16", gateway="10.99.0.1")


def _entry(services: int, backends: int, *, flip: bool | None = None) -> dpb.NetworkAssignment:
    records = [dpb.ServiceRecord(id=f"s{i}", name=f"svc{i}", mode=pb.EndpointSpec.VIP,
                                 vip=f"10.99.{i}.2/16") for i in range(services)]
    if flip is not None:  # a delta: the first backend of svc0 changes readiness
        return dpb.NetworkAssignment(network=NETWORK, services=records, delta=True, peers=[
            dpb.OverlayPeer(task_id="t0-0", service_id="s0", address="10.99.0.10/16",
                            vtep="192.0.2.1", task_name="svc0.1.t0-0", ready=flip)])
    peers = [dpb.OverlayPeer(task_id=f"t{i}-{j}", service_id=f"s{i}",
                             address=f"10.99.{i}.{10 + j}/16", vtep="192.0.2.1",
                             task_name=f"svc{i}.{j}.t{i}-{j}", ready=True)
             for i in range(services) for j in range(backends)]
    return dpb.NetworkAssignment(network=NETWORK, services=records, peers=peers)


def _percentiles(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50_ms": round(statistics.median(ordered) * 1000, 3),
            "p99_ms": round(p99 * 1000, 3)}


def _queries(path: str, count: int) -> list[float]:
    timings = []
    with socket_in(path, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for _ in range(count):
            query = dns.message.make_query("svc0", "A")
            started = time.perf_counter()
            response = dns.query.udp(query, "127.0.0.11", timeout=2, sock=sock)
            timings.append(time.perf_counter() - started)
            assert response.answer, "no answer"
    return timings


async def run(services: int, backends: int, queries: int, updates: int) -> dict[str, object]:
    name = f"bench-discovery-{os.getpid()}"
    await asyncio.to_thread(ensure_netns_blocking, name)
    path = str(netns_path(name))
    discovery = Discovery(Forwarder([]))
    try:
        discovery.apply(dpb.Assignments(type=dpb.Assignments.COMPLETE,
                                        networks=[_entry(services, backends)]))
        await discovery.serve("bench-task", path, [NETWORK.id])
        dns_times = await asyncio.to_thread(_queries, path, queries)
        apply_times: list[float] = []
        lb_times: list[float] = []
        for index in range(updates):
            delta = dpb.Assignments(type=dpb.Assignments.INCREMENTAL, networks=[
                _entry(services, backends, flip=index % 2 == 1)])
            started = time.perf_counter()
            discovery.apply(delta)
            apply_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            failed = await discovery.sync_all()
            lb_times.append(time.perf_counter() - started)
            assert failed == 0, "load balancer update failed"
        return {"bench": "discovery", "services": services, "backends": backends,
                "dns_udp": _percentiles(dns_times), "lb_update": _percentiles(lb_times),
                "directory_apply": _percentiles(apply_times)}
    finally:
        discovery.release("bench-task")
        await discovery.close()
        await asyncio.to_thread(remove_netns_blocking, name)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.discovery", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument("--backends", type=int, default=5)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--updates", type=int, default=50)
    parser.add_argument("--scale-ups", type=int, default=0,
                        help="end to end instead: a local cluster, a task added N times, from "
                             "RUNNING until every other host resolves and reaches it "
                             "(bench/discovery_cluster.py)")
    parser.add_argument("--nodes", type=int, default=3, help="hosts of the --scale-ups cluster")
    args = parser.parse_args(argv)
    if args.scale_ups:
        for flag, low, top in (("scale-ups", 1, 200), ("nodes", 2, 10)):
            if not low <= getattr(args, flag.replace("-", "_")) <= top:
                parser.exit(2, f"python -m bench.discovery: error: --{flag}: expected {low} to {top}\n")
        if os.geteuid() != 0:
            parser.exit(1, "python -m bench.discovery: error: needs root (the local cluster)\n")
        from bench.discovery_cluster import run_cluster

        def terminate(signum: int, frame: object) -> None:
            raise KeyboardInterrupt  # unwinds through run_cluster's `dev down`

        signal.signal(signal.SIGTERM, terminate)
        print(json.dumps(run_cluster(args.nodes, args.scale_ups)))
        return
    # Addresses are 10.99.SERVICE.(10 + BACKEND): both must fit a byte.
    for flag, top in (("services", 250), ("backends", 240), ("queries", 100_000),
                      ("updates", 10_000)):
        if not 1 <= getattr(args, flag) <= top:
            parser.exit(2, f"python -m bench.discovery: error: --{flag}: expected 1 to {top}\n")
    if os.geteuid() != 0:
        parser.exit(1, "python -m bench.discovery: error: needs root (namespaces, nft)\n")
    print(json.dumps(asyncio.run(run(args.services, args.backends, args.queries, args.updates))))


if __name__ == "__main__":
    main()
