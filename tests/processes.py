"""Controllers and simulated agents as real processes, for tests that need
process boundaries (leadership handover, the CLI). Each is stopped by its PID."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from cli.dev.daemons import stop_child
from tests.etcd_server import free_port


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


@dataclass
class Proc:
    process: subprocess.Popen[bytes]
    log_path: str
    port: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        with open(self.log_path, errors="replace") as handle:
            return handle.read()

    def signal(self, sig: int) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        stop_child(self.process, timeout)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.log_path)


def _spawn(args: Sequence[str]) -> tuple[subprocess.Popen[bytes], str]:
    fd, log_path = tempfile.mkstemp(prefix="swarm-proc-", suffix=".log")
    process = subprocess.Popen([sys.executable, *args], stdout=fd, stderr=subprocess.STDOUT)
    os.close(fd)
    return process, log_path


def start_controller(etcd_endpoint: str, prefix: str, *, heartbeat_period: float = 0.5,
                     lease_ttl: int = 2) -> Proc:
    port = free_port()
    process, log_path = _spawn([
        "-m", "controller.main", "--listen", f"127.0.0.1:{port}", "--etcd", etcd_endpoint,
        "--prefix", prefix, "--heartbeat-period", str(heartbeat_period),
        "--lease-ttl", str(lease_ttl)])
    proc = Proc(process, log_path, port)
    try:
        wait_for_port(port, process)
    except RuntimeError:
        proc.stop()
        raise
    return proc


def start_simulated_agents(controllers: Sequence[str], nodes: int,
                           hostname_prefix: str = "sim") -> Proc:
    args = ["-m", "agent.simulated", "--nodes", str(nodes), "--hostname-prefix", hostname_prefix]
    for controller in controllers:
        args += ["--controller", controller]
    process, log_path = _spawn(args)
    return Proc(process, log_path)


def start_agent(controllers: Sequence[str], state_dir: str, *, hostname: str,
                advertise_addr: str = "127.0.0.1", extra_args: Sequence[str] = ()) -> Proc:
    """A real `swarm-agent` (python -m agent.main); it needs root. Stopping
    it (SIGTERM) leaves its containers running: the caller removes them."""
    args = ["-m", "agent.main", "--state-dir", state_dir, "--advertise-addr", advertise_addr,
            "--hostname", hostname, *extra_args]
    for controller in controllers:
        args += ["--controller", controller]
    process, log_path = _spawn(args)
    return Proc(process, log_path, extra={"state_dir": state_dir})
