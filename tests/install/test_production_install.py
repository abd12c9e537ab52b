"""deploy/install.sh as an operator runs it, into a staging root: the wheel in
its own environment with exactly the pinned runtime dependencies, the systemd
units pointing at it, nothing dev-only; then a controller and an agent started
from the installed files, against the production etcd (Debian's etcd-server,
which deploy/setup.sh unpacks), join with a token, and the installed swarmctl
sees the node READY."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import swarm
from swarm.cli.dev.daemons import stop_child
from tests.etcd_server import free_port

REPO = Path(__file__).resolve().parents[2]
DEBIAN_ETCD = REPO / ".venv" / "debian-etcd" / "usr" / "bin" / "etcd"

pytestmark = pytest.mark.timeout(900)


def _root_or_skip() -> None:
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("the agent needs root (runc, cgroups, namespaces); CI runs this as root")


def _lock() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO / "deploy" / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def _run(*argv: str | Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False,
                          timeout=600, env=env)
    assert done.returncode == 0, f"{[str(a) for a in argv]}: {done.stdout[-1000:]}{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in reversed(started):
            stop_child(process)


def _start(started: list[subprocess.Popen[bytes]], log: Path, *argv: str | Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        process = subprocess.Popen([str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT)
    started.append(process)
    return process


def _wait(what: str, check: object, timeout: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.2)
    tails = "\n".join(f"--- {log}:\n{log.read_text()[-2000:]}" for log in logs if log.exists())
    raise AssertionError(f"{what} within {timeout}s\n{tails}")


def test_install_then_join_an_agent_with_the_installed_files(
        tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    _root_or_skip()
    prefix, etc = tmp_path / "opt" / "swarm", tmp_path / "etc"
    out = _run(REPO / "deploy" / "install.sh", "--prefix", prefix, "--etc", etc, "--no-apt")
    assert f"swarmctl {swarm.__version__}" in out
    bin_dir = prefix / "bin"

    # Exactly the pinned runtime set, and nothing dev-only.
    frozen = _run(bin_dir / "python", "-m", "pip", "list", "--format=json",
                  "--exclude", "swarm-orchestrator", "--exclude", "pip", "--exclude", "setuptools")
    installed = {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(frozen)}
    assert installed == _lock()
    assert not (bin_dir / "etcd").exists()
    assert not any((bin_dir / tool).exists() for tool in ("pytest", "mypy", "ruff", "lint-imports"))

    # The units run the installed commands (and the distribution's etcd).
    units = etc / "systemd" / "system"
    assert f"ExecStart={bin_dir}/swarm-agent " in (units / "swarm-agent.service").read_text()
    assert f"ExecStart={bin_dir}/swarm-controller " in (units / "swarm-controller.service").read_text()
    assert "ExecStart=/usr/bin/etcd " in (units / "swarm-etcd.service").read_text()
    assert (etc / "swarm").stat().st_mode & 0o077 == 0

    # The production etcd, a controller and an agent from the installed files.
    logs = tmp_path / "logs"
    logs.mkdir()
    etcd_port, peer_port, port, join_port = free_port(), free_port(), free_port(), free_port()
    client_url, peer_url = f"http://127.0.0.1:{etcd_port}", f"http://127.0.0.1:{peer_port}"
    _start(processes, logs / "etcd.log", DEBIAN_ETCD, "--name", "prod", "--data-dir",
           tmp_path / "etcd", "--listen-client-urls", client_url, "--advertise-client-urls",
           client_url, "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
           "--initial-cluster", f"prod={peer_url}")
    admin = tmp_path / "admin"
    _start(processes, logs / "controller.log", bin_dir / "swarm-controller",
           "--listen", f"127.0.0.1:{port}", "--join-listen", f"127.0.0.1:{join_port}",
           "--etcd", f"127.0.0.1:{etcd_port}", "--prefix", f"/install-{port}",
           "--init", "--kek-file", etc / "swarm" / "kek", "--admin-out", admin,
           "--heartbeat-period", "1")
    env = {**os.environ, "SWARMCTL_CONTROLLER": f"127.0.0.1:{port}", "SWARMCTL_TLS_DIR": str(admin)}
    env.pop("PYTHONPATH", None)  # the installed files only
    everything = [logs / "etcd.log", logs / "controller.log", logs / "agent.log"]

    def token() -> str:
        done = subprocess.run([str(bin_dir / "swarmctl"), "cluster", "join-token", "-q", "worker"],
                              capture_output=True, text=True, env=env, check=False, timeout=30)
        return done.stdout.strip() if done.returncode == 0 else ""

    _wait("the controller answered swarmctl", lambda: token().startswith("SWMTKN-1-"), 60, everything)
    state_dir = tmp_path / "agent"
    hostname = f"installed-{port}"
    agent = _start(processes, logs / "agent.log", bin_dir / "swarm-agent",
                   "--controller", f"127.0.0.1:{port}", "--join-addr", f"127.0.0.1:{join_port}",
                   "--state-dir", state_dir, "--advertise-addr", "127.0.0.1",
                   "--hostname", hostname, "--join-token", token())
    try:
        def ready() -> bool:
            done = subprocess.run([str(bin_dir / "swarmctl"), "node", "ls", "-o", "json"],
                                  capture_output=True, text=True, env=env, check=False, timeout=30)
            if done.returncode != 0:
                return False
            return any(n["description"]["hostname"] == hostname and n["status"]["state"] == "READY"
                       for n in json.loads(done.stdout))

        _wait("the agent joined and its node is READY", ready, 90, everything)
        assert (state_dir / "certs" / "node.key").stat().st_mode & 0o077 == 0
    finally:
        agent.send_signal(signal.SIGTERM)
        stop_child(agent)
        _run(bin_dir / "swarm-agent", "purge", "--state-dir", state_dir, env=env)
