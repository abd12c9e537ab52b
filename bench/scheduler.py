"""Scheduler throughput and decision latency, in memory, in one process.

    python -m bench.scheduler --nodes 5000 --tasks 100000

Builds synthetic nodes (READY, ACTIVE but for a few, with CPUs, memory and
zone/rack/disk labels) and the PENDING tasks of `--services` services, then
submits the tasks in batches of `--batch` (by default one service per batch)
to one long-lived Scheduler over NodeInfos kept between batches, as the
leader's loop would see them arrive. Services mix the features that cost
something: constraints, reservations that fill nodes, placement preferences,
max replicas per node, host ports, and a few services that cannot be placed.

Decision latency of a task: from the start of the schedule() call of its batch
until its decision is made. `seconds` is the time spent in schedule() calls;
building the synthetic objects is not counted. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import time

from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.scheduler.nodeinfo import NodeInfo, build_node_infos
from swarm.controller.scheduler.scheduler import Decision, Scheduler

_GIB = 1 << 30
_CPU = 1_000_000_000  # nano CPUs per CPU


def make_nodes(count: int, rng: random.Random) -> list[pb.Node]:
    nodes: list[pb.Node] = []
    for i in range(count):
        node = pb.Node(id=f"node-{i:05d}")
        node.description.hostname = f"host-{i:05d}"
        cpus, memory = rng.choice(((4, 8), (8, 16), (8, 32), (16, 64)))
        node.description.resources.nano_cpus = cpus * _CPU
        node.description.resources.memory_bytes = memory * _GIB
        node.description.platform.os = "linux"
        node.description.platform.architecture = "x86_64"
        node.spec.role = pb.NodeSpec.MANAGER if i < 3 else pb.NodeSpec.WORKER
        if rng.random() > 0.02:  # a few nodes carry no zone label
            node.spec.labels["zone"] = "abc"[i % 3]
        node.spec.labels["rack"] = f"r{i % 10}"
        node.spec.labels["disk"] = "ssd" if i % 4 == 0 else "hdd"
        node.status.state = pb.NodeStatus.DOWN if i % 100 == 7 else pb.NodeStatus.READY
        node.spec.availability = pb.NodeSpec.DRAIN if i % 100 == 13 else pb.NodeSpec.ACTIVE
        nodes.append(node)
    return nodes


def service_template(index: int, services: int) -> tuple[pb.TaskSpec, pb.Endpoint]:
    """The task spec and endpoint of service `index`: one feature mix per index mod 10."""
    spec = pb.TaskSpec()
    spec.container.image = f"registry.local/app-{index}:1"
    spec.container.command.extend(["/bin/app", "--serve"])
    endpoint = pb.Endpoint()
    placement = spec.placement
    reservations = spec.resources.reservations
    kind = index % 10
    if kind == 0:
        placement.constraints.append("node.labels.zone==a")
    elif kind == 1:
        reservations.nano_cpus, reservations.memory_bytes = _CPU // 2, _GIB // 2
    elif kind == 2:
        placement.preferences.add(spread="node.labels.zone")
    elif kind == 3:
        placement.preferences.add(spread="node.labels.zone")
        placement.preferences.add(spread="node.labels.rack")
        reservations.nano_cpus = _CPU // 4
    elif kind == 4:
        placement.max_replicas_per_node = 1
    elif kind == 5:
        port = endpoint.spec.ports.add(target_port=80, published_port=8000 + index)
        port.publish_mode = pb.PortConfig.HOST
    elif kind == 6:
        placement.constraints.extend(["node.labels.disk==ssd", "node.role!=manager"])
    elif kind == 7:
        reservations.nano_cpus, reservations.memory_bytes = 2 * _CPU, 4 * _GIB
    if index == services - 1:
        placement.constraints.append("node.labels.zone==nowhere")  # never placeable
    elif index == services - 2:
        reservations.nano_cpus = 15 * _CPU  # only a few big, empty nodes fit
    return spec, endpoint


def make_tasks(total: int, services: int) -> list[pb.Task]:
    tasks: list[pb.Task] = []
    per_service = -(-total // services)
    for index in range(services):
        spec, endpoint = service_template(index, services)
        for slot in range(1, per_service + 1):
            if len(tasks) == total:
                break
            task = pb.Task(id=f"task-{index}-{slot}", service_id=f"svc-{index}",
                           service_name=f"app-{index}", slot=slot, spec_version=1,
                           desired_state=pb.RUNNING)
            task.spec.CopyFrom(spec)
            task.endpoint.CopyFrom(endpoint)
            task.status.state = pb.PENDING
            tasks.append(task)
    return tasks


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def run(n_nodes: int, n_tasks: int, services: int, batch: int, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    nodes = make_nodes(n_nodes, rng)
    tasks = make_tasks(n_tasks, services)
    infos: dict[str, NodeInfo] = build_node_infos(nodes, [])

    latencies: list[float] = []
    batch_start = 0.0
    clock = time.perf_counter

    def record(decision: Decision) -> None:
        latencies.append(clock() - batch_start)

    scheduler = Scheduler(on_decision=record)
    decisions: list[Decision] = []
    seconds = 0.0
    for start in range(0, len(tasks), batch):
        chunk = tasks[start:start + batch]
        batch_start = clock()
        decisions.extend(scheduler.schedule(chunk, infos))
        seconds += clock() - batch_start

    placed = sum(1 for d in decisions if d.node_id)
    reasons = sorted({d.reason for d in decisions if not d.node_id})
    latencies.sort()

    # The leader's loop rebuilds NodeInfos from the cache each pass: time that
    # with every placed task live on its node.
    by_id = {d.task_id: d for d in decisions}
    for task in tasks:
        task.node_id = by_id[task.id].node_id
        task.status.state = pb.ASSIGNED if task.node_id else pb.PENDING
    rebuild_started = clock()
    rebuilt = build_node_infos(nodes, tasks)
    rebuild_seconds = clock() - rebuild_started
    overcommitted = sum(1 for info in rebuilt.values()
                        if info.available_nano_cpus < 0 or info.available_memory_bytes < 0)
    per_node = [info.total_tasks for info in rebuilt.values()]

    return {
        "bench": "scheduler",
        "nodes": n_nodes,
        "tasks": len(tasks),
        "services": services,
        "batch": batch,
        "placed": placed,
        "unplaced": len(decisions) - placed,
        "seconds": round(seconds, 3),
        "placements_per_s": round(placed / seconds, 1),
        "decisions_per_s": round(len(decisions) / seconds, 1),
        "p50_decision_latency_ms": round(percentile(latencies, 0.50) * 1000, 3),
        "p99_decision_latency_ms": round(percentile(latencies, 0.99) * 1000, 3),
        "max_decision_latency_ms": round(latencies[-1] * 1000, 3) if latencies else 0.0,
        "tasks_per_node_min": min(per_node, default=0),
        "tasks_per_node_max": max(per_node, default=0),
        "overcommitted_nodes": overcommitted,
        "rebuild_node_infos_s": round(rebuild_seconds, 3),
        "unplaced_reasons": reasons[:5],
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scheduler")
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--tasks", type=int, default=100000)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--batch", type=int, default=0,
                        help="tasks per schedule() call (default: one service's tasks)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    batch = args.batch or -(-args.tasks // args.services)
    print(json.dumps(run(args.nodes, args.tasks, args.services, batch, args.seed)))


if __name__ == "__main__":
    main()
