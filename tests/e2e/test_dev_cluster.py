"""`swarmctl dev up|status|down` for real: simulated hosts (network
namespaces on an underlay), etcd, a controller, a registry and real agents
running runc containers; then nothing left behind."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.main import default_cgroup_parent
from cli.dev import cluster
from cli.dev.context import read_context
from cli.dev.daemons import alive
from cli.main import app

pytestmark = pytest.mark.timeout(240)


def _require_root() -> None:
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("the local cluster needs root (namespaces, runc); CI runs it as root")


@pytest.fixture
def name() -> Iterator[str]:
    _require_root()
    name = "t" + secrets.token_hex(3)
    try:
        yield name
    finally:
        cluster.down(name, say=lambda _: None)  # also when the test failed


def swarmctl(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"swarmctl {' '.join(args)}: {result.output}"
    return result.output


def page(netns: str, url: str = "http://127.0.0.1:80/", attempts: int = 50) -> str:
    """The demo page from inside a task's namespace (httpd may still be starting)."""
    for _ in range(attempts):
        result = subprocess.run(
            # (no -T: busybox 1.35 wget segfaults with it)
            ["nsenter", f"--net=/run/netns/{netns}", "busybox", "wget", "-qO-",
             url], capture_output=True, text=True, timeout=20, check=False)
        if result.returncode == 0:
            return result.stdout
        time.sleep(0.1)
    return ""


def netns_with(prefix: str) -> list[str]:
    run = Path("/run/netns")
    return sorted(n for n in os.listdir(run) if n.startswith(prefix)) if run.is_dir() else []


def test_up_scale_status_down_leaves_nothing(name: str) -> None:
    state = cluster.up(name, 2, "192.168.91.0/24", say=lambda _: None)
    assert read_context() is not None
    assert read_context().controller == state.controller  # type: ignore[union-attr]
    assert read_context().cert  # type: ignore[union-attr]  # mutual TLS with an admin identity
    assert "Fingerprint (SHA-256)" in swarmctl("cluster", "inspect")
    assert swarmctl("cluster", "join-token", "-q", "worker").startswith("SWMTKN-1-")
    image = f"{state.registry}/{cluster.DEMO_IMAGE}:latest"
    swarmctl("service", "create", "web", "--image", image, "--replicas", "2", "--timeout", "60s")
    swarmctl("service", "scale", "web=4", "--timeout", "60s")
    status = swarmctl("dev", "status", "--name", name)
    # Both hosts run tasks (spread), and every process is up.
    assert f"{name}-h1" in status
    assert f"{name}-h2" in status
    assert status.count("web.") == 4
    assert "gone" not in status

    # The tasks are real containers answering on port 80 in their namespaces
    # (named after their agent's cgroup parent).
    prefixes = [default_cgroup_parent(Path(node.state_dir)) + "-" for node in state.nodes]
    task_namespaces = [n for prefix in prefixes for n in netns_with(prefix)]
    assert len(task_namespaces) == 4
    for netns in task_namespaces:
        assert page(netns).startswith("hello from "), netns

    cluster.down(name, say=lambda _: None)
    assert not any(alive(d) for d in state.daemons)
    assert netns_with(cluster.namespace_prefix(name)) == []
    assert not Path(f"/sys/class/net/{cluster.root_link(name)}").exists()
    assert not cluster.state_dir(name).exists()
    assert str(cluster.state_dir(name)) not in Path("/proc/self/mounts").read_text()
    assert read_context() is None


def test_example_stacks_run_in_real_containers(name: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    state = cluster.up(name, 2, "192.168.94.0/24", say=lambda _: None)
    monkeypatch.setenv("SWARM_REGISTRY", state.registry)  # the examples' image registry
    examples = Path(__file__).resolve().parents[2] / "deploy" / "examples"
    for example in ("web", "monitor", "placement"):
        output = swarmctl("apply", "-f", str(examples / f"{example}.yaml"), "--timeout", "60s")
        assert "tasks running" in output, output
    services = swarmctl("service", "ls")
    for service, replicas in (("web_web", "3/3"), ("web_kv", "1/1"),
                              ("monitor_node-stats", "2/2"), ("placement_batch", "4/4")):
        assert any(line.split()[1:4:2] == [service, replicas]
                   for line in services.splitlines()[1:]), services


def test_tasks_on_an_overlay_reach_each_other_across_hosts(name: str) -> None:
    state = cluster.up(name, 2, "192.168.95.0/24", say=lambda _: None)
    image = f"{state.registry}/{cluster.DEMO_IMAGE}:latest"
    swarmctl("network", "create", "backend")
    swarmctl("service", "create", "web", "--image", image, "--replicas", "2", "--network",
             "backend", "--max-replicas-per-node", "1", "--env", "TASK_NAME={{.Task.Name}}",
             "--env", "NODE_NAME={{.Node.Hostname}}", "--timeout", "60s")
    tasks = json.loads(swarmctl("service", "ps", "web", "-o", "json"))
    assert len(tasks) == 2
    addresses = {t["id"]: t["networks"][0]["addresses"][0].split("/")[0] for t in tasks}
    namespaces = {task_id: next(n for n in netns_with("swarm-") if n.endswith(task_id))
                  for task_id in addresses}
    (a, b) = sorted(addresses)
    # Each container fetches the other's page over VXLAN between the two hosts.
    assert page(namespaces[a], f"http://{addresses[b]}/").startswith("hello from web.")
    assert f".{b} on {name}-h" in page(namespaces[a], f"http://{addresses[b]}/")
    assert f".{a} on {name}-h" in page(namespaces[b], f"http://{addresses[a]}/")
    overlay_prefixes = [f"ov-{default_cgroup_parent(Path(n.state_dir))}-" for n in state.nodes]
    assert all(netns_with(prefix) for prefix in overlay_prefixes)
    cluster.down(name, say=lambda _: None)
    assert not any(netns_with(prefix) for prefix in overlay_prefixes)


def test_up_after_a_crash_cleans_up_and_starts_again(name: str) -> None:
    first = cluster.up(name, 1, "192.168.92.0/24", say=lambda _: None)
    # A crash: the controller dies, swarmctl never runs `down`.
    controller = next(d for d in first.daemons if d.role == "controller")
    os.kill(controller.pid, 9)
    deadline = time.monotonic() + 10
    while alive(controller) and time.monotonic() < deadline:
        time.sleep(0.05)
    second = cluster.up(name, 1, "192.168.92.0/24", say=lambda _: None)
    assert not any(alive(d) for d in first.daemons)
    assert all(alive(d) for d in second.daemons)


def test_bad_input_is_one_line_and_makes_nothing() -> None:
    _require_root()
    for args, message in (
            (["--name", "Bad_Name"], "--name 'Bad_Name'"),
            (["--nodes", "0", "--name", "tbad"], "--nodes 0"),
            (["--subnet", "300.1.1.0/24", "--name", "tbad"], "--subnet '300.1.1.0/24'")):
        result = CliRunner().invoke(app, ["dev", "up", *args])
        assert result.exit_code == 1, result.output
        assert result.output.strip().startswith(f"swarmctl: {message}"), result.output
        assert len(result.output.strip().splitlines()) == 1
    assert not cluster.state_dir("tbad").exists()
    assert netns_with("swd-tbad-") == []
