"""Network flags and removal through swarmctl against a live control plane
(real etcd, the real controller, simulated nodes over the real dispatcher API):
--internal refuses published ports (services and stacks), nothing written;
`network rm` and `stack rm` wait for the tasks still stopping on a network."""

from __future__ import annotations

import json
from pathlib import Path

from swarm.api.v1 import objects_pb2 as pb
from tests.integration.live import LiveCluster, assert_one_line_error, ok, swarmctl, table_rows

STOP_DELAY = 1.5  # seconds the simulated tasks take to stop in the removal tests


def networks(live: LiveCluster) -> dict[str, pb.Network]:
    """The stored networks but the routing mesh's (which the leader made)."""
    return {n.spec.name: n for n in live.stored("networks") if isinstance(n, pb.Network)
            and not n.spec.ingress}


def slow_stops(live: LiveCluster) -> None:
    for node in live.nodes.nodes:
        node.worker.stop_delay = STOP_DELAY


def test_internal_and_attachable_are_stored_and_shown(live: LiveCluster) -> None:
    ok(swarmctl(live, "network", "create", "--internal", "--attachable", "--label", "tier=data",
                "--driver", "overlay", "private"))
    ok(swarmctl(live, "network", "create", "open"))
    rows = {r[1]: r for r in table_rows(ok(swarmctl(live, "network", "ls")).stdout)}
    assert rows["private"][5:8] == ["true", "true", "tier=data"]
    assert rows["open"][5:7] == ["false", "false"]
    (inspected,) = json.loads(ok(swarmctl(live, "network", "inspect", "private")).stdout)
    assert (inspected["spec"]["internal"], inspected["spec"]["attachable"]) == (True, True)
    text = ok(swarmctl(live, "network", "inspect", "-o", "table", "private")).stdout
    assert [line.split() for line in text.splitlines() if line.startswith("Internal")] == [
        ["Internal:", "true"]]
    stored = networks(live)["private"].spec
    assert (stored.internal, stored.attachable, dict(stored.labels)) == (
        True, True, {"tier": "data"})
    assert "there are none here" in " ".join(
        ok(swarmctl(live, "network", "create", "--help")).stdout.split())


def test_a_service_on_an_internal_network_cannot_publish(live: LiveCluster,
                                                         tmp_path: Path) -> None:
    ok(swarmctl(live, "network", "create", "--internal", "private"))
    before = live.snapshot()
    result = swarmctl(live, "service", "create", "web", "--image", "busybox",
                      "--network", "private", "--publish", "8080:80")
    assert_one_line_error(result, "spec.endpoint.ports", "network 'private' is internal",
                          "--publish", exit_code=1)
    assert live.snapshot() == before

    # Without ports it runs; publishing later is refused the same way.
    ok(swarmctl(live, "service", "create", "api", "--image", "busybox",
                "--network", "private"))
    before = live.snapshot()
    result = swarmctl(live, "service", "update", "-d", "api", "--publish-add", "8080:80")
    assert_one_line_error(result, "spec.endpoint.ports", "network 'private' is internal",
                          exit_code=1)
    assert live.snapshot() == before

    # A stack: refused while checking the file (exit 2), before anything is sent.
    stack = tmp_path / "stack.yaml"
    stack.write_text("name: s\nservices:\n  web:\n    image: busybox\n    ports: ['8080:80']\n"
                     "    networks: [back]\nnetworks:\n  back: {internal: true}\n")
    result = swarmctl(live, "stack", "deploy", "-c", str(stack), "s")
    assert_one_line_error(result, f"{stack}:5:12: services.web.ports: cannot publish ports",
                          "'s_back' is internal", exit_code=2)
    # ... and on an external internal network, known only to the controller.
    stack.write_text("name: s\nservices:\n  web:\n    image: busybox\n    ports: ['8080:80']\n"
                     "    networks: [private]\nnetworks:\n  private: {external: true}\n")
    result = swarmctl(live, "stack", "deploy", "-c", str(stack), "s")
    assert_one_line_error(result, f"{stack}:5:12: services.web.ports: cannot publish ports",
                          "network 'private' is internal", exit_code=1)
    assert live.snapshot() == before


def test_network_rm_waits_for_stopping_tasks(live: LiveCluster) -> None:
    ok(swarmctl(live, "network", "create", "net"))
    ok(swarmctl(live, "service", "create", "web", "--image", "busybox", "--replicas", "3",
                "--network", "net"))
    slow_stops(live)
    ok(swarmctl(live, "service", "rm", "web"))
    # Refused while the three tasks stop, naming them, when not waiting long enough.
    result = swarmctl(live, "network", "rm", "--timeout", "0.2s", "net")
    assert_one_line_error(result, "network 'net' still has 3 task(s) holding addresses",
                          "retry when they have stopped", exit_code=1)
    assert "net" in networks(live)
    # Waiting (the default) removes it once they have stopped.
    assert ok(swarmctl(live, "network", "rm", "net")).stdout.split() == ["net"]
    assert networks(live) == {}
    unfinished = [t for t in live.stored("tasks") if isinstance(t, pb.Task)
                  and t.status.state < pb.COMPLETE]
    assert unfinished == []
    assert_one_line_error(swarmctl(live, "network", "rm", "net"), "network 'net' not found",
                          exit_code=1)


def test_stack_rm_right_after_its_services(live: LiveCluster, tmp_path: Path) -> None:
    stack = tmp_path / "stack.yaml"
    stack.write_text("name: s\nservices:\n  web:\n    image: busybox\n    deploy: {replicas: 3}\n"
                     "  db:\n    image: busybox\n    networks: [back]\nnetworks:\n  back: {}\n")
    ok(swarmctl(live, "stack", "deploy", "-c", str(stack), "s"))
    assert set(networks(live)) == {"s_default", "s_back"}
    slow_stops(live)
    result = ok(swarmctl(live, "stack", "rm", "s"))
    assert result.stdout.splitlines() == [
        "service s_db: removed", "service s_web: removed",
        "network s_back: removed", "network s_default: removed"]
    assert networks(live) == {}
    assert [t for t in live.stored("tasks") if isinstance(t, pb.Task)
            and t.status.state < pb.COMPLETE] == []
