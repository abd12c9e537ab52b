"""Rebalance planning cost, in memory, in one process.

    python -m bench.rebalance --nodes 5000 --tasks 100000

A service of `--tasks` replicas placed on the first half of `--nodes` nodes
(the other half joined later and run nothing), as `swarmctl service rebalance`
finds it. Times `plan_rebalance` (what the control API runs on the event loop
for one call, capped at MAX_MOVES moves), the same plan without the cap (every
move the spread needs), and `--services` balanced services through the auto
mode's `pick` (what `--auto-rebalance` runs once per node arrival). Prints one
JSON line; building the synthetic objects is not counted.
"""

from __future__ import annotations

import argparse
import json
import time

from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.orchestrator import rebalance
from swarm.controller.orchestrator.autorebalance import pick


def make_node(i: int) -> pb.Node:
    node = pb.Node(id=f"node-{i:05d}")
    node.description.hostname = f"host-{i:05d}"
    node.status.state = pb.NodeStatus.READY
    return node


def make_service(name: str, replicas: int) -> pb.Service:
    service = pb.Service(id=name, spec_version=1)
    service.spec.name = name
    service.spec.replicated.replicas = replicas
    return service


def make_tasks(service: pb.Service, nodes: list[pb.Node]) -> list[pb.Task]:
    tasks = []
    for slot in range(1, service.spec.replicated.replicas + 1):
        task = pb.Task(id=f"{service.id}.{slot}", service_id=service.id, slot=slot,
                       spec_version=1, desired_state=pb.RUNNING,
                       node_id=nodes[slot % len(nodes)].id)
        task.status.state = pb.RUNNING
        tasks.append(task)
    return tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--services", type=int, default=200)
    args = parser.parse_args()
    nodes = [make_node(i) for i in range(args.nodes)]
    by_id = {node.id: node for node in nodes}
    service = make_service("web", args.tasks)
    tasks = make_tasks(service, nodes[:max(1, args.nodes // 2)])

    started = time.perf_counter()
    capped = rebalance.plan_rebalance(service, tasks, by_id, tasks)
    capped_seconds = time.perf_counter() - started
    started = time.perf_counter()
    full = rebalance.plan_rebalance(service, tasks, by_id, tasks, limit=10**9)
    full_seconds = time.perf_counter() - started

    balanced = [make_service(f"svc-{i:04d}", args.nodes) for i in range(args.services)]
    tasks_of = {s.id: make_tasks(s, nodes) for s in balanced}
    everything = [task for group in tasks_of.values() for task in group]
    started = time.perf_counter()
    picked = pick(balanced, tasks_of, by_id, everything, set())
    pick_seconds = time.perf_counter() - started
    assert picked is None  # all balanced: the cheap check turns every one away

    print(json.dumps({
        "nodes": args.nodes, "tasks": args.tasks,
        "plan_seconds": round(capped_seconds, 3), "plan_moves": len(capped.moves),
        "full_plan_seconds": round(full_seconds, 3), "full_plan_moves": len(full.moves),
        "auto_pick_services": args.services, "auto_pick_tasks": len(everything),
        "auto_pick_seconds": round(pick_seconds, 3),
    }))


if __name__ == "__main__":
    main()
