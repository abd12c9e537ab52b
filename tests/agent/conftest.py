"""Fixtures for the agent's tests: ONE real registry per test module (started
in about a tenth of a second) and the images pushed to it once per module."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarm.host import mounts
from tests.registry import (
    REGISTRY_BINARY,
    RegistryServer,
    build_busybox_image,
    build_layered_image,
)


def _missing_tools() -> str | None:
    if not os.path.exists(REGISTRY_BINARY):
        return f"{REGISTRY_BINARY} missing (apt-get install docker-registry)"
    if shutil.which("skopeo") is None:
        return "skopeo missing (apt-get install skopeo)"
    return None


def require_root_and_tools() -> None:
    """Skip outside CI when not root or without the tools; in CI (CI set)
    they are required, so the test runs and fails loudly instead."""
    if os.environ.get("CI"):
        return
    if os.geteuid() != 0:
        pytest.skip("needs root (ownership, device nodes, trusted.* xattrs); CI runs it as root")
    missing = _missing_tools()
    if missing is not None:
        pytest.skip(missing)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    require_root_and_tools()
    server = RegistryServer.start(tmp_path_factory.mktemp("registry"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def busybox_ref(registry: RegistryServer) -> str:
    return build_busybox_image(registry.addr)


@pytest.fixture(scope="module")
def layered_ref(registry: RegistryServer) -> str:
    return build_layered_image(registry.addr)


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    """A fresh directory on the disk the agent's state lives on (/var/tmp:
    a disk on Debian, where /run and /tmp may be a tmpfs, which has no inode
    flags), removed afterwards with whatever a test mounted at or below it."""
    path = Path(tempfile.mkdtemp(prefix="swarm-test-", dir="/var/tmp"))
    try:
        yield path
    finally:
        mounts.remove_tree(path)
