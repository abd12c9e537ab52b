"""Health-gated rolling updates on the local cluster (`swarmctl dev up`): real
agents running real health checks in runc containers.

Issue 10 saw a two-replica service updated to a health check that always fails
start six bad tasks, stay down for the whole update, and `service update` exit 0.
Here the same update, with failure action rollback, must start at most
`parallelism` bad tasks, roll back to the old spec with every replica running and
healthy, and `swarmctl service update` must exit 3 (did not converge). The
cluster is removed (`dev down`) also when the test fails, then checked for
leftovers.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from swarm.agent.main import default_cgroup_parent
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli.dev import cluster
from swarm.cli.dev.cluster import ClusterState
from swarm.cli.dev.daemons import alive
from swarm.cli.main import app
from tests.e2e.test_dev_cluster import netns_with, swarmctl

pytestmark = pytest.mark.timeout(300)

SUBNET = "192.168.173.0/24"  # an underlay of its own (see the other e2e tests)
GOOD_CHECK = "wget -q -O /dev/null http://127.0.0.1/"


@pytest.fixture
def state() -> Iterator[ClusterState]:
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("the local cluster needs root (namespaces, runc); CI runs it as root")
    name = "g" + secrets.token_hex(3)
    made: list[ClusterState] = []
    try:
        made.append(cluster.up(name, 2, SUBNET, say=lambda _: None))
        yield made[0]
    finally:
        cluster.down(name, say=lambda _: None)
        for done in made:
            assert not any(alive(d) for d in done.daemons)
            assert netns_with(cluster.namespace_prefix(name)) == []
            for node in done.nodes:
                parent = default_cgroup_parent(Path(node.state_dir))
                assert netns_with(f"{parent}-") == []
        assert not cluster.state_dir(name).exists()


def _tasks(stub: cgrpc.ControlStub, service_id: str) -> list[pb.Task]:
    request = cpb.ListTasksRequest()
    request.filters.service_ids.append(service_id)
    return list(stub.ListTasks(request, timeout=10).tasks)


def _healthy(task: pb.Task) -> bool:
    return task.desired_state == pb.RUNNING and task.status.state == pb.RUNNING \
        and task.status.health == pb.TaskStatus.HEALTHY


class Watcher:
    """Every task of the service the controller lists, polled every 100 ms from a
    thread while swarmctl waits in the test's (a bad task lives for seconds: its
    check fails twice, 1 s apart, before its agent stops it)."""

    def __init__(self, state: ClusterState, service_id: str) -> None:
        self.state, self.service_id = state, service_id
        self.seen: dict[str, pb.Task] = {}
        self.fewest_healthy: int | None = None
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)

    def _run(self) -> None:
        with cluster.control_channel(self.state) as channel:
            stub = cgrpc.ControlStub(channel)
            while not self._stop.is_set():
                try:
                    tasks = _tasks(stub, self.service_id)
                except grpc.RpcError as error:
                    self.errors.append(str(error))
                    continue
                self.seen.update((t.id, t) for t in tasks)
                healthy = sum(_healthy(t) for t in tasks)
                self.fewest_healthy = healthy if self.fewest_healthy is None \
                    else min(self.fewest_healthy, healthy)
                time.sleep(0.1)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(20)


def test_failing_health_check_update_rolls_back_after_one_bad_task(
        state: ClusterState) -> None:
    image = f"{state.registry}/{cluster.DEMO_IMAGE}:latest"
    swarmctl("service", "create", "web", "--image", image, "--replicas", "2",
             "--max-replicas-per-node", "1", "--health-cmd", GOOD_CHECK,
             "--health-interval", "500ms", "--health-timeout", "2s", "--health-retries", "2",
             "--update-parallelism", "1", "--update-failure-action", "rollback",
             "--update-monitor", "2s", "--restart-delay", "1s", "--timeout", "90s")
    with cluster.control_channel(state) as channel:
        stub = cgrpc.ControlStub(channel)
        before = stub.GetService(cpb.GetRequest(ref="web"), timeout=10).service
        old = {t.id for t in _tasks(stub, before.id) if _healthy(t)}
        assert len(old) == 2

        with Watcher(state, before.id) as watcher:
            started = time.monotonic()
            # The update: a health check that always fails.
            result = CliRunner().invoke(app, [
                "service", "update", "web", "--health-cmd", "false", "--health-interval", "1s",
                "--health-retries", "2", "--health-start-period", "0s", "--timeout", "120s"])
            took = time.monotonic() - started
        assert result.exit_code == 3, (result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("swarmctl: web: update failed and was rolled back: "), lines[0]

        bad = {t.id for t in watcher.seen.values()
               if list(t.spec.container.healthcheck.test) == ["CMD-SHELL", "false"]}
        assert len(bad) == 1, f"{len(bad)} bad tasks started with parallelism 1"
        # Stop-first, parallelism 1: the other replica stayed healthy all along.
        assert watcher.fewest_healthy is not None
        assert watcher.fewest_healthy >= 1

        after = stub.GetService(cpb.GetRequest(ref="web"), timeout=10).service
        assert after.spec == before.spec
        assert after.update_status.state == pb.UpdateStatus.ROLLBACK_COMPLETED
        tasks = _tasks(stub, before.id)
        live = [t for t in tasks if t.desired_state == pb.RUNNING]
        assert len(live) == 2
        assert all(_healthy(t) for t in live), [(t.slot, t.status.state, t.status.health)
                                                for t in live]
        assert all(t.spec == before.spec.task for t in live)
        # The replica never updated kept its task through the rollback.
        assert len(old & {t.id for t in live}) == 1
    print(f"update + rollback took {took:.1f}s; watcher errors: {len(watcher.errors)}")
