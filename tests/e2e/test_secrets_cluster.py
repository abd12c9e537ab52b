"""Secrets and configs in real containers on a local cluster (network
namespaces, real agents, runc): the files at their documented paths with
the given owner and mode, the plaintext in no etcd key, no file of the
agents' persistent state and no log; rotation by `apply`; nothing left
once the tasks end."""

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

from swarm.cli.dev import cluster
from swarm.cli.main import app
from swarm.host.mounts import mount_points
from tests.e2e.test_dev_cluster import in_container

pytestmark = pytest.mark.timeout(300)

SUBNET = "192.168.111.0/24"


@pytest.fixture
def name() -> Iterator[str]:
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("the local cluster needs root (namespaces, runc); CI runs it as root")
    name = "s" + secrets.token_hex(3)
    try:
        yield name
    finally:
        cluster.down(name, say=lambda _: None)


def swarmctl(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"swarmctl {' '.join(args)}: {result.output}"
    return result.output


def running_pid(service: str) -> tuple[str, int]:
    """(task id, pid) of the service's one running task, waiting for it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        tasks = json.loads(swarmctl("service", "ps", service, "-o", "json"))
        for task in tasks:
            if task.get("desired_state") in (None, "RUNNING") and \
                    task["status"].get("state") == "RUNNING" and \
                    task["status"].get("container", {}).get("pid"):
                return task["id"], int(task["status"]["container"]["pid"])
        time.sleep(0.3)
    raise AssertionError(f"no running task of {service}")


def files_containing(root: Path, needle: bytes) -> list[str]:
    """Regular files on root's own file system (find -xdev: no tmpfs below it)
    whose bytes contain needle."""
    listed = subprocess.run(["find", str(root), "-xdev", "-type", "f", "-print0"],
                            capture_output=True, check=True).stdout.split(b"\0")
    found = []
    for path in filter(None, listed):
        try:
            if needle in Path(os.fsdecode(path)).read_bytes():
                found.append(os.fsdecode(path))
        except OSError:
            continue  # gone meanwhile (a socket, a rotated log)
    return found


def etcd_dump(state: cluster.ClusterState) -> bytes:
    return subprocess.run(["etcdctl", f"--endpoints=http://{state.etcd_endpoints[0]}", "get",
                           "", "--prefix"], capture_output=True, check=True, timeout=30).stdout


def test_secrets_and_configs_in_real_containers(name: str, tmp_path: Path) -> None:
    state = cluster.up(name, 2, SUBNET, say=lambda _: None)
    image = f"{state.registry}/{cluster.DEMO_IMAGE}:latest"
    plaintext = ("pw-" + secrets.token_hex(16)).encode()
    config_text = ("level=debug # " + secrets.token_hex(8)).encode()
    (tmp_path / "pw").write_bytes(plaintext)
    (tmp_path / "conf").write_bytes(config_text)
    swarmctl("secret", "create", "pw", str(tmp_path / "pw"))
    swarmctl("config", "create", "conf", str(tmp_path / "conf"))
    swarmctl("service", "create", "app", "--image", image, "--timeout", "60s",
             "--secret", "source=pw,target=db,uid=1000,gid=1001,mode=0400",
             "--secret", "pw",
             "--config", "source=conf,target=/etc/app.conf,mode=0440")
    task_id, pid = running_pid("app")

    # The files, where docker puts them, with the owner and mode asked for.
    for path, expected, owner in (("/run/secrets/db", plaintext, "1000 1001 400"),
                                  ("/run/secrets/pw", plaintext, "0 0 444"),
                                  ("/etc/app.conf", config_text, "0 0 440")):
        assert in_container(pid, "cat", path).stdout.encode() == expected, path
        assert in_container(pid, "stat", "-c", "%u %g %a", path).stdout.strip() == owner, path
    # Read-only, even for root in the container.
    assert in_container(pid, "sh", "-c", "echo x > /run/secrets/db").returncode != 0
    # Only the tmpfs of the task holds them on the host.
    payload_mounts = [m for m in mount_points() if m.endswith(f"/{task_id}/payloads")]
    assert len(payload_mounts) == 1

    # Never shown, never stored in the clear, never on the agents' disks or in a log.
    for output in (swarmctl("secret", "inspect", "pw"), swarmctl("secret", "ls"),
                   swarmctl("secret", "inspect", "--pretty", "pw"),
                   swarmctl("service", "inspect", "app")):
        assert plaintext.decode() not in output
    assert config_text.decode() in swarmctl("config", "inspect", "--pretty", "conf")
    dump = etcd_dump(state)
    assert b"/secrets/" in dump
    assert plaintext not in dump
    assert config_text not in dump
    root = cluster.state_dir(name)
    assert files_containing(root, plaintext) == []

    # A used secret stays.
    refused = CliRunner().invoke(app, ["secret", "rm", "pw"])
    assert refused.exit_code == 1
    assert "in use by service(s) app" in refused.output

    # Rotation: apply with a changed file rolls the service and removes the old version.
    stack = tmp_path / "stack.yaml"
    stack.write_text(f"""
name: rot
services:
  web:
    image: {image}
    secrets:
      - source: token
        target: token
        mode: 0400
secrets:
  token:
    file: ./token
""")
    first, second = (("tok-" + secrets.token_hex(12)).encode() for _ in range(2))
    (tmp_path / "token").write_bytes(first)
    swarmctl("apply", "-f", str(stack), "--timeout", "60s")
    _, web_pid = running_pid("rot_web")
    assert in_container(web_pid, "cat", "/run/secrets/token").stdout.encode() == first
    (tmp_path / "token").write_bytes(second)
    output = swarmctl("apply", "-f", str(stack), "--timeout", "60s")
    assert "removed" in output
    _, web_pid = running_pid("rot_web")
    assert in_container(web_pid, "cat", "/run/secrets/token").stdout.encode() == second
    names = [line.split()[1] for line in swarmctl("secret", "ls").splitlines()[1:]]
    assert sorted(names) == sorted(["pw", f"rot_token.{_digest(second)}"])

    # When the tasks end, their secrets go: no tmpfs left, nothing on disk.
    swarmctl("service", "rm", "app", "rot_web")
    deadline = time.monotonic() + 60
    while any(m.endswith("/payloads") and str(root) in m for m in mount_points()):
        assert time.monotonic() < deadline, "payload tmpfs still mounted"
        time.sleep(0.3)
    for needle in (plaintext, first, second):
        assert files_containing(root, needle) == []
    swarmctl("secret", "rm", "pw")
    swarmctl("stack", "rm", "rot")
    assert swarmctl("secret", "ls", "-q").strip() == ""


def _digest(data: bytes) -> str:
    from swarm.cli.compose.payloads import content_name

    return content_name("x", data).rsplit(".", 1)[1]
