"""Directory inode flags (swarm/host/fsflags.py): the TOPDIR flag the runtime
sets on its bundles and runc state directories, on a real ext4 or other
directory and on a tmpfs, which has no such flag."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarm.agent.runtime import RuncRuntime, RuncSettings
from swarm.host import fsflags, mounts

pytestmark = pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"),
                                reason="mounts and inode flags need root (CI runs it as root)")


@pytest.fixture
def directory() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="swfl-", dir="/run"))
    try:
        yield path
    finally:
        for point in mounts.mounts_under(path):
            mounts.unmount_fully(Path(point))
        shutil.rmtree(path, ignore_errors=True)


def _filesystem(path: Path) -> str:
    return subprocess.run(["stat", "-f", "-c", "%T", str(path)], check=True,
                          capture_output=True, text=True).stdout.strip()


def test_topdir_set_where_the_filesystem_has_it(directory: Path) -> None:
    before = fsflags.get_flags(directory)
    if before is None:
        pytest.skip(f"{_filesystem(directory)} has no inode flags")
    assert fsflags.spread_subdirectories(directory) is True
    after = fsflags.get_flags(directory)
    assert after is not None
    assert after & fsflags.FS_TOPDIR_FL
    assert after & ~fsflags.FS_TOPDIR_FL == before & ~fsflags.FS_TOPDIR_FL  # nothing else changed
    assert "T" in subprocess.run(["lsattr", "-d", str(directory)], check=True,
                                 capture_output=True, text=True).stdout.split()[0]
    assert fsflags.spread_subdirectories(directory) is True  # again: already set


def test_tmpfs_refuses_quietly(directory: Path) -> None:
    mounts.mount_tmpfs(directory, 1 << 20)
    assert fsflags.spread_subdirectories(directory) is False
    flags = fsflags.get_flags(directory)
    assert flags is None or not flags & fsflags.FS_TOPDIR_FL


def test_runtime_spreads_bundles_and_runc_state(directory: Path) -> None:
    if fsflags.get_flags(directory) is None:
        pytest.skip(f"{_filesystem(directory)} has no inode flags")
    settings = RuncSettings(state_dir=directory / "state")
    RuncRuntime(settings)
    for path in (settings.state_dir, settings.bundles_dir, settings.runc_root_dir):
        flags = fsflags.get_flags(path)
        assert flags is not None, path
        assert flags & fsflags.FS_TOPDIR_FL, path
    logs = fsflags.get_flags(settings.logs_dir)  # files only: left as they were
    assert logs is not None
    assert not logs & fsflags.FS_TOPDIR_FL
