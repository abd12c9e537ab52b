"""GPUs on a real local cluster (`swarmctl dev up`, real agents, runc
containers), with fake NVIDIA device nodes made by mknod in a temporary
directory that one host's agent is pointed at (`--device-dir`, through
`dev up --agent-arg`): a service reserving a GPU lands only on that host, its
container sees DOCKER_RESOURCE_GPU and the device node (and its device cgroup
lets it through), a second one waits saying what the nodes lack, and an agent
restart hands nothing out twice.

Run under the machine-wide lock (`flock /tmp/swarm-heavy.lock pytest ...`).
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swarm.cli.dev import cluster
from tests.e2e.test_dev_cluster import _require_root, in_container, poll, restart_agent, swarmctl

pytestmark = pytest.mark.timeout(240)

SUBNET = "192.168.144.0/24"
NVIDIA_MAJOR = 195
NVIDIACTL_MINOR = 255


@pytest.fixture
def name() -> Iterator[str]:
    _require_root()
    name = "g" + secrets.token_hex(3)
    try:
        yield name
    finally:
        cluster.down(name, say=lambda _: None)  # also when the test failed


@pytest.fixture
def devices(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(a directory with fake nvidia0 and nvidiactl, an empty one)."""
    with_gpu, empty = tmp_path / "dev-gpu", tmp_path / "dev-none"
    with_gpu.mkdir()
    empty.mkdir()
    made = [with_gpu / "nvidia0", with_gpu / "nvidiactl"]
    for path, minor in zip(made, (0, NVIDIACTL_MINOR), strict=True):
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(NVIDIA_MAJOR, minor))
    try:
        yield with_gpu, empty
    finally:
        for path in made:
            path.unlink(missing_ok=True)


def _tasks(service: str) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = json.loads(swarmctl("service", "ps", service, "-o", "json"))
    return tasks


def _running(service: str) -> list[dict[str, Any]]:
    return [t for t in _tasks(service) if t.get("status", {}).get("state") == "RUNNING"]


def _pending_message(service: str) -> str:
    tasks = _tasks(service)
    if len(tasks) != 1 or tasks[0].get("status", {}).get("state") != "PENDING":
        return ""
    return str(tasks[0]["status"].get("message", ""))


def test_a_gpu_service_lands_where_the_gpu_is_and_gets_it(
        name: str, devices: tuple[Path, Path], tmp_path: Path) -> None:
    with_gpu, empty = devices
    state = cluster.up(name, 2, SUBNET, say=lambda _: None,
                       agent_args=("--device-dir", str(empty)),  # no host's real /dev
                       host_agent_args={"h2": ["--device-dir", str(with_gpu)]})
    image = f"{state.registry}/{cluster.DEMO_IMAGE}:latest"
    nodes = {n["description"]["hostname"]: n for n in
             json.loads(swarmctl("node", "ls", "-o", "json"))}
    gpu_host, other_host = f"{name}-h2", f"{name}-h1"
    generic = nodes[gpu_host]["description"]["resources"]["generic"]
    assert generic == [{"named_resource_spec": {"kind": "gpu", "value": "nvidia0"}}]
    assert "generic" not in nodes[other_host]["description"]["resources"]

    # Compose's form (docker's): devices with capabilities [gpu].
    stack = tmp_path / "gpu.yaml"
    stack.write_text(f"""\
name: gpu
services:
  train:
    image: {image}
    command: ["sh", "-c", "echo gpu=$$DOCKER_RESOURCE_GPU; ls -l /dev/nvidia*; exec sleep 3600"]
    deploy:
      resources:
        reservations:
          devices:
            - capabilities: [gpu]
              count: 1
""")
    swarmctl("apply", "-f", str(stack), "--timeout", "60s")
    (task,) = _running("gpu_train")
    assert task["node_id"] == nodes[gpu_host]["id"]
    assert task["assigned_generic_resources"] == [
        {"named_resource_spec": {"kind": "gpu", "value": "nvidia0"}}]
    assert poll(lambda: "gpu=nvidia0" in swarmctl("service", "logs", "gpu_train"), timeout=15)
    logs = swarmctl("service", "logs", "gpu_train")
    assert "/dev/nvidia0" in logs, logs
    assert "/dev/nvidiactl" in logs, logs
    pid = int(task["status"]["container"]["pid"])
    listing = in_container(pid, "ls", "-l", "/dev/nvidia0").stdout
    assert listing.startswith("c"), listing
    assert f"{NVIDIA_MAJOR},   0" in listing, listing
    # The device cgroup lets exactly the GPU's nodes through (besides runc's defaults).
    (devices_line,) = [line for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                       if ":devices:" in line]
    allowed = (Path("/sys/fs/cgroup/devices") / devices_line.split(":", 2)[2].lstrip("/")
               / "devices.list").read_text()
    assert f"c {NVIDIA_MAJOR}:0 rwm" in allowed, allowed
    assert f"c {NVIDIA_MAJOR}:{NVIDIACTL_MINOR} rwm" in allowed, allowed

    # Compose's other form: a second GPU task has nowhere to go, and says why.
    second = tmp_path / "infer.yaml"
    second.write_text(f"""\
name: infer
services:
  infer:
    image: {image}
    deploy:
      resources:
        reservations:
          generic_resources:
            - discrete_resource_spec: {{kind: gpu, value: 1}}
""")
    swarmctl("apply", "-f", str(second), "--detach")
    assert poll(lambda: _pending_message("infer_infer") == "no suitable node (2 nodes lack gpu)",
                timeout=20), _tasks("infer_infer")
    swarmctl("node", "update", "--availability", "pause", other_host)
    assert poll(lambda: _pending_message("infer_infer")
                == "no suitable node (1 node not available; 1 node lacks gpu)",
                timeout=20), _tasks("infer_infer")

    # The GPU host's agent restarts: the running task keeps its unit, the waiting one waits.
    restart_agent(state, "h2")
    assert poll(lambda: json.loads(swarmctl("node", "inspect", gpu_host, "-o", "json"))[0]
                ["status"]["state"] == "READY", timeout=30)
    assert [t["id"] for t in _running("gpu_train")] == [task["id"]]
    assert _pending_message("infer_infer") == "no suitable node (1 node not available; 1 node lacks gpu)"
