"""Health-gated rolling updates against a live control plane: a real etcd, the real
controller, and simulated nodes whose tasks report the health their SWARM_SIM_HEALTH
env asks for (the simulator's knob), driven through swarmctl.

What an operator cares about: a start-first update never has fewer healthy tasks than
replicas; a failing update starts at most `parallelism` bad tasks, rolls back (or
pauses) with the reason in `service inspect`, and `service update` exits 3; `service
rollback` goes back to the previous spec.
"""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from swarm.api.v1 import objects_pb2 as pb
from tests.integration.live import LiveCluster, assert_one_line_error, ok, swarmctl

pytestmark = pytest.mark.integration

HEALTH = ("--health-cmd", "true", "--health-interval", "200ms", "--health-timeout", "200ms",
          "--health-retries", "1")


def _up(task: pb.Task) -> bool:
    return task.desired_state == pb.RUNNING and task.status.state == pb.RUNNING \
        and task.status.health == pb.TaskStatus.HEALTHY


def _bad(task: pb.Task, marker: str) -> bool:
    return any(marker in item for item in task.spec.container.env)


class Watcher:
    """Reads the service's tasks from etcd every 20 ms in a thread, while swarmctl runs
    in the test's: the fewest healthy tasks seen, and every task ever stored."""

    def __init__(self, live: LiveCluster, name: str) -> None:
        self.live, self.name = live, name
        self.fewest_up: int | None = None
        self.seen: dict[str, pb.Task] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            tasks = self.live.tasks(self.name)
            for task in tasks:
                self.seen[task.id] = task
            up = sum(_up(task) for task in tasks)
            self.fewest_up = up if self.fewest_up is None else min(self.fewest_up, up)
            time.sleep(0.02)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_start_first_update_keeps_every_replica_healthy(live: LiveCluster) -> None:
    ok(swarmctl(live, "service", "create", "web", "--image", "busybox", "--replicas", "3",
                *HEALTH, "--update-order", "start-first", "--update-monitor", "500ms"))
    with Watcher(live, "web") as watcher:
        started = time.monotonic()
        result = ok(swarmctl(live, "service", "update", "web", "--env-add",
                             "SWARM_SIM_HEALTH=healthy-after:400ms", "--timeout", "30s"))
        took = time.monotonic() - started
    assert result.stderr.startswith("web: 3/3 tasks running (converged in ")
    # Three slots one after another, each waiting 0.4 s for health, then the monitor.
    assert took >= 3 * 0.4 + 0.5
    assert watcher.fewest_up == 3, "an old task stopped before its replacement was healthy"
    running = live.running("web")
    assert len(running) == 3
    assert all(_up(t) and _bad(t, "healthy-after") for t in running)
    status = live.service("web").update_status
    assert (status.state, status.message) == (pb.UpdateStatus.COMPLETED, "update completed")


def test_update_to_a_failing_health_check_rolls_back_and_exits_3(live: LiveCluster) -> None:
    ok(swarmctl(live, "service", "create", "web", "--image", "busybox", "--replicas", "2",
                *HEALTH, "--update-failure-action", "rollback", "--update-monitor", "500ms",
                "--restart-delay", "200ms"))
    before = live.service("web")
    (kept,) = [t.id for t in live.running("web") if t.slot == 2]
    with Watcher(live, "web") as watcher:
        result = swarmctl(live, "service", "update", "web", "--env-add",
                          "SWARM_SIM_HEALTH=unhealthy-after:300ms", "--timeout", "30s")
    line = assert_one_line_error(
        result, "swarmctl: web: update failed and was rolled back: rollback completed "
                "(update rolled back due to failure or early termination of task ",
        exit_code=3)
    assert result.stdout.strip() == "web"
    bad = [t for t in watcher.seen.values() if _bad(t, "unhealthy-after")]
    assert len(bad) == 1, (line, [(t.slot, t.status.state) for t in bad])  # parallelism 1
    service = live.service("web")
    assert service.spec == before.spec
    assert service.update_status.state == pb.UpdateStatus.ROLLBACK_COMPLETED
    running = live.running("web")
    assert len(running) == 2
    assert all(_up(t) and not _bad(t, "SWARM_SIM_HEALTH") for t in running)
    # The slot that was never updated kept its task: a rollback restarts what it must.
    assert kept in {t.id for t in running}
    assert watcher.fewest_up == 1


def test_a_task_never_healthy_is_given_up_and_the_update_pauses(live: LiveCluster) -> None:
    ok(swarmctl(live, "service", "create", "web", "--image", "busybox", "--replicas", "2",
                *HEALTH, "--update-order", "start-first", "--update-monitor", "1s",
                "--update-parallelism", "2"))
    with Watcher(live, "web") as watcher:
        result = swarmctl(live, "service", "update", "web", "--env-add",
                          "SWARM_SIM_HEALTH=starting", "--timeout", "30s")
    # The window: max(monitor 1 s, 1 x (0.2 s + 0.2 s)) = 1 s.
    assert_one_line_error(result, "swarmctl: web: update paused: update paused: task web.",
                          " not healthy within 1s (task ", exit_code=3)
    service = live.service("web")
    assert service.update_status.state == pb.UpdateStatus.PAUSED
    given_up = [t for t in live.tasks("web") if t.update_failure]
    assert given_up
    assert all(t.update_failure == "not healthy within 1s" for t in given_up)
    bad = [t for t in watcher.seen.values() if _bad(t, "SWARM_SIM_HEALTH")]
    assert len({t.id for t in bad}) <= 2  # parallelism 2
    # start-first: the old tasks were never stopped.
    assert watcher.fewest_up == 2
    assert len([t for t in live.running("web") if _up(t)]) == 2

    shown = ok(swarmctl(live, "service", "inspect", "-o", "table", "web")).stdout
    assert "UpdateStatus:" in shown
    assert re.search(r"^ +State: +paused$", shown, re.MULTILINE), shown
    assert "not healthy within 1s" in shown
    data = json.loads(ok(swarmctl(live, "service", "inspect", "web")).stdout)[0]
    assert data["update_status"]["state"] == "PAUSED"
    assert data["update_status"]["message"].startswith("update paused: task web.")
    assert "started_at" in data["update_status"]


def test_service_rollback_goes_back_to_the_previous_spec(live: LiveCluster) -> None:
    ok(swarmctl(live, "service", "create", "web", "--image", "busybox", "--replicas", "2",
                *HEALTH, "--rollback-monitor", "200ms", "--update-monitor", "200ms"))
    ok(swarmctl(live, "service", "update", "web", "--image", "busybox:2", "--timeout", "20s"))
    result = ok(swarmctl(live, "service", "rollback", "web", "--timeout", "20s"))
    assert result.stdout.strip() == "web"
    assert result.stderr.startswith("web: 2/2 tasks running (converged in ")
    service = live.service("web")
    assert service.spec.task.container.image == "busybox"
    assert service.previous_spec.task.container.image == "busybox:2"
    status = service.update_status
    assert (status.state, status.message) == (pb.UpdateStatus.ROLLBACK_COMPLETED,
                                              "rollback completed")
    assert status.completed_at.ToNanoseconds() >= status.started_at.ToNanoseconds() > 0
    assert {t.spec.container.image for t in live.running("web")} == {"busybox"}
    shown = ok(swarmctl(live, "service", "inspect", "-o", "table", "web")).stdout
    assert "rollback_completed" in shown
    assert "Completed:" in shown
