"""Controllers and simulated agents as real processes, for tests that need
process boundaries (leadership handover, the CLI). Each is stopped by its PID.

Mutual TLS is on, as in production: controllers of one etcd prefix share a
KEK file (the first creates it with --init), each writes an admin identity
(`admin_identity(proc)`), and agents join with the worker token
(`worker_token(proc)`) through the join port in `proc.extra["join"]`."""

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

import grpc

from swarm.api import channels, pki
from swarm.api.v1 import ca_pb2 as capb
from swarm.api.v1 import ca_pb2_grpc as cagrpc
from swarm.cli.dev.daemons import stop_child
from tests.etcd_server import free_port

_SECRETS = tempfile.mkdtemp(prefix="swarm-test-secrets-")


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
                     lease_ttl: int = 2, insecure: bool = False,
                     extra_args: Sequence[str] = ()) -> Proc:
    port, join_port = free_port(), free_port()
    admin = os.path.join(_SECRETS, f"admin-{port}")
    security = ["--insecure"] if insecure else [
        "--init", "--kek-file", os.path.join(_SECRETS, prefix.strip("/") + ".kek"),
        "--admin-out", admin, "--join-listen", f"127.0.0.1:{join_port}", "--join-rate", "1000"]
    process, log_path = _spawn([
        "-m", "swarm.controller.main", "--listen", f"127.0.0.1:{port}", "--etcd", etcd_endpoint,
        "--prefix", prefix, "--heartbeat-period", str(heartbeat_period),
        "--lease-ttl", str(lease_ttl), *security, *extra_args])
    proc = Proc(process, log_path, port,
                extra={} if insecure else {"admin": admin, "join": f"127.0.0.1:{join_port}"})
    try:
        wait_for_port(port, process)
    except RuntimeError:
        proc.stop()
        raise
    return proc


def admin_identity(controller: Proc) -> pki.NodeIdentity:
    """The admin identity the controller wrote with --admin-out."""
    from pathlib import Path

    return pki.NodeIdentity.load(Path(controller.extra["admin"]))


def admin_channel(controller: Proc) -> grpc.aio.Channel:
    return channels.client_channel(controller.addr, admin_identity(controller))


async def worker_token(controller: Proc) -> str:
    async with admin_channel(controller) as channel:
        response = await cagrpc.CAAdminStub(channel).GetJoinToken(
            capb.GetJoinTokenRequest(role=capb.JOIN_ROLE_WORKER), timeout=10)
    return response.token


def start_simulated_agents(controllers: Sequence[Proc], nodes: int, join_token: str = "",
                           hostname_prefix: str = "sim") -> Proc:
    """Simulated nodes joining with join_token (plaintext when it is empty)."""
    args = ["-m", "swarm.agent.simulated", "--nodes", str(nodes), "--hostname-prefix", hostname_prefix]
    args += ["--join-token", join_token] if join_token else ["--insecure"]
    for controller in controllers:
        args += ["--controller", controller.addr]
        if "join" in controller.extra:
            args += ["--join-addr", controller.extra["join"]]
    process, log_path = _spawn(args)
    return Proc(process, log_path)


def start_agent(controllers: Sequence[Proc], state_dir: str, *, hostname: str,
                advertise_addr: str = "127.0.0.1", join_token: str = "",
                extra_args: Sequence[str] = ()) -> Proc:
    """A real `swarm-agent` (python -m swarm.agent.main); it needs root. Stopping
    it (SIGTERM) leaves its containers running: the caller removes them.
    join_token is needed the first time a state dir is used (the identity is
    kept there, and the token may be given again); --insecure for
    controllers started insecure."""
    args = ["-m", "swarm.agent.main", "--state-dir", state_dir, "--advertise-addr", advertise_addr,
            "--hostname", hostname, *extra_args]
    if join_token:
        args += ["--join-token", join_token]
    for controller in controllers:
        args += ["--controller", controller.addr]
        if "join" in controller.extra:
            args += ["--join-addr", controller.extra["join"]]
    if not any("join" in controller.extra for controller in controllers):
        args += ["--insecure"]
    process, log_path = _spawn(args)
    return Proc(process, log_path, extra={"state_dir": state_dir})
