"""`swarmctl service rebalance` on a real local cluster: real agents, runc
containers and network namespaces. A service is placed on two hosts while the
third is drained; once the third is active again the rebalance moves tasks
onto it, and the moved tasks are real containers answering there."""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarm.agent.main import default_cgroup_parent
from swarm.cli.dev import cluster
from tests.e2e.test_dev_cluster import _require_root, netns_with, page, swarmctl
from tests.waiting import until

pytestmark = pytest.mark.timeout(240)

SUBNET = "192.168.207.0/24"  # an underlay of its own (see the other e2e tests)


@pytest.fixture
def name() -> Iterator[str]:
    _require_root()
    name = "r" + secrets.token_hex(3)
    try:
        yield name
    finally:
        cluster.down(name, say=lambda _: None)  # also when the test failed


def test_rebalance_spreads_over_a_host_that_came_back(name: str) -> None:
    state = cluster.up(name, 3, SUBNET, say=lambda _: None)
    image = f"{state.registry}/{cluster.DEMO_IMAGE}:latest"
    third = f"{name}-h3"
    swarmctl("node", "update", third, "--availability", "drain")
    swarmctl("service", "create", "web", "--image", image, "--replicas", "6",
             "--update-parallelism", "1", "--update-order", "start-first",
             "--update-monitor", "1s", "--timeout", "90s")
    status = swarmctl("dev", "status", "--name", name)
    assert status.count("web.") == 6
    swarmctl("node", "update", third, "--availability", "active")

    dry = swarmctl("service", "rebalance", "web", "--dry-run")
    moves = [line for line in dry.splitlines() if line.startswith("web.")]
    assert len(moves) == 2, dry
    assert all(f" -> {third} (node {name}-h" in line for line in moves), dry
    assert "dry run: 2 slots would move (3 3 0 tasks on 3 eligible nodes)" in dry

    output = swarmctl("service", "rebalance", "web", "--timeout", "120s")
    assert "web: 6/6 tasks running (converged in " in output, output
    assert "rebalance completed: 2 slots moved" in swarmctl("service", "inspect", "web",
                                                            "-o", "table")

    # Two running tasks per host, as the controller sees them, once the old
    # tasks have stopped (busybox httpd ignores SIGTERM: the grace period).
    def mismatch() -> str:
        status = swarmctl("dev", "status", "--name", name)
        running = [line.count("web.") for line in status.splitlines()
                   if line.startswith(f"{name}-h")]
        return "" if sorted(running) == [2, 2, 2] else status

    until(mismatch, timeout=40, interval=0.5)
    # Each is a real container answering in its namespace on its host (a task's
    # namespace is named after its agent's cgroup parent and the task ID).
    live = swarmctl("service", "ps", "web", "--filter", "desired-state=running", "-q").split()
    assert len(live) == 6
    per_host = {node.host: netns_with(default_cgroup_parent(Path(node.state_dir)) + "-")
                for node in state.nodes}
    hosts_of = {task_id: [host for host, found in per_host.items()
                          if any(netns.endswith(task_id) for netns in found)]
                for task_id in live}
    assert sorted(Counter(host for (host,) in hosts_of.values()).values()) == [2, 2, 2]
    for found in per_host.values():
        for netns in found:
            if any(netns.endswith(task_id) for task_id in live):
                assert page(netns).startswith("hello from "), netns
    assert "already balanced: 2 2 2 tasks on 3 eligible nodes" in swarmctl(
        "service", "rebalance", "web")
