"""Zero-downtime rollouts on the local cluster (issue 10): real agents and
runc containers on 3 simulated hosts, under client load through the
routing mesh from every host and through the VIP from inside a container
(bench.load), while a service is updated start-first and stop-first, rolled
back, updated with one replica, scaled down, and moved off a drained node. Each asserts
that no request failed, and the stopped tasks were drained before their
stop signal (confirmed by every node, not cut short by the bound).

The web service's server exits at once on SIGTERM (bench.rollout.SERVER),
as real servers do: a task stopped while another node still sends it
connections would fail them. One cluster for the module (it takes a while
to start); the scenarios are bench.rollout's, in its order, each setting
up what it needs. The lead's failing-update and rebalance scenarios go in
the same way (bench.rollout.run_scenario with the module's stage).
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import rollout
from swarm.agent.main import default_cgroup_parent
from swarm.cli.dev import cluster
from swarm.cli.dev.daemons import alive
from tests.e2e.test_dev_cluster import netns_with

pytestmark = pytest.mark.timeout(240)

SUBNET = "192.168.167.0/24"  # the underlay; distinct from the other tests' and benches'


@pytest.fixture(scope="module")
def config_home() -> Iterator[str]:
    """Where the module's cluster keeps its swarmctl context."""
    with tempfile.TemporaryDirectory(prefix="zero-downtime-") as config:
        yield config


@pytest.fixture(autouse=True)
def cluster_context(config_home: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test talks to the module's cluster (tests/conftest.py gives
    each test a config home of its own)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", config_home)


@pytest.fixture(scope="module")
def stage(config_home: str) -> Iterator[rollout.Stage]:
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("the local cluster needs root (namespaces, runc); CI runs it as root")
    name = "z" + secrets.token_hex(3)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CONFIG_HOME", config_home)
        state: cluster.ClusterState | None = None
        try:
            state = cluster.up(name, 3, SUBNET, say=lambda _: None)
            yield rollout.prepare(state)
        finally:
            cluster.down(name, say=lambda _: None)
            if state is not None:
                assert not any(alive(d) for d in state.daemons)
                for node in state.nodes:
                    parent = default_cgroup_parent(Path(node.state_dir))
                    assert netns_with(f"{parent}-") == netns_with(f"ov-{parent}-") == []
            assert netns_with(cluster.namespace_prefix(name)) == []


def replicas(count: int) -> None:
    rollout.swarmctl("service", "scale", f"web={count}", "--timeout", rollout.CONVERGE)
    rollout.wait_stopped("web")


def check(stage: rollout.Stage, name: str, stopped_at_least: int) -> None:
    before, _ = rollout.drains(stage.state)
    outcome = rollout.run_scenario(stage, name, rollout.SCENARIOS[name])
    assert outcome.tally.requests > 100, outcome.details
    assert outcome.tally.failures == 0, f"{name}: {outcome.details}"
    after, cut_short = rollout.drains(stage.state)
    drained = {task: waited for task, waited in after.items() if task not in before}
    # Every stopped task waited for the nodes' confirmation, not the bound.
    assert len(drained) >= stopped_at_least, (name, drained)
    assert not cut_short, (name, cut_short)


def test_start_first_update(stage: rollout.Stage) -> None:
    replicas(3)
    check(stage, "start_first_update", 3)


def test_stop_first_update(stage: rollout.Stage) -> None:
    replicas(3)
    check(stage, "stop_first_update", 3)


def test_rollback(stage: rollout.Stage) -> None:
    replicas(3)
    check(stage, "rollback", 3)


def test_scale_down(stage: rollout.Stage) -> None:
    replicas(3)
    check(stage, "scale_down", 2)


def test_one_replica_start_first_update(stage: rollout.Stage) -> None:
    replicas(1)
    check(stage, "one_replica_update", 1)


def test_node_drain(stage: rollout.Stage) -> None:
    check(stage, "node_drain", 1)  # scales to 3 first, drains a node with a web task
