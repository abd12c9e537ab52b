"""Directory inode flags (swarm/host/fsflags.py): the TOPDIR flag the runtime
sets on its bundles and runc state directories, on a real ext4 or other
directory and on a tmpfs, which has no such flag."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from swarm.agent.runtime import RuncRuntime, RuncSettings
from swarm.host import fsflags, mounts

pytestmark = pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"),
                                reason="mounts and inode flags need root (CI runs it as root)")


def _filesystem(path: Path) -> str:
    return subprocess.run(["stat", "-f", "-c", "%T", str(path)], check=True,
                          capture_output=True, text=True).stdout.strip()


def _flags_or_skip(path: Path) -> int:
    """The directory's inode flags; a filesystem without them skips the test
    outside CI only: in CI (/var/tmp on Debian's ext4 root) it must run."""
    flags = fsflags.get_flags(path)
    if flags is None:
        reason = f"{_filesystem(path)} at {path} has no inode flags"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return flags


def test_topdir_set_where_the_filesystem_has_it(scratch_dir: Path) -> None:
    before = _flags_or_skip(scratch_dir)
    assert fsflags.spread_subdirectories(scratch_dir) is True
    after = fsflags.get_flags(scratch_dir)
    assert after is not None
    assert after & fsflags.FS_TOPDIR_FL
    assert after & ~fsflags.FS_TOPDIR_FL == before & ~fsflags.FS_TOPDIR_FL  # nothing else changed
    assert "T" in subprocess.run(["lsattr", "-d", str(scratch_dir)], check=True,
                                 capture_output=True, text=True).stdout.split()[0]
    assert fsflags.spread_subdirectories(scratch_dir) is True  # again: already set


def test_tmpfs_refuses_quietly(scratch_dir: Path) -> None:
    mounts.mount_tmpfs(scratch_dir, 1 << 20)
    assert fsflags.spread_subdirectories(scratch_dir) is False
    flags = fsflags.get_flags(scratch_dir)
    assert flags is None or not flags & fsflags.FS_TOPDIR_FL


def test_runtime_spreads_bundles_and_runc_state(scratch_dir: Path) -> None:
    _flags_or_skip(scratch_dir)
    settings = RuncSettings(state_dir=scratch_dir / "state")
    RuncRuntime(settings)
    for path in (settings.state_dir, settings.bundles_dir, settings.runc_root_dir):
        flags = fsflags.get_flags(path)
        assert flags is not None, path
        assert flags & fsflags.FS_TOPDIR_FL, path
    logs = fsflags.get_flags(settings.logs_dir)  # files only: left as they were
    assert logs is not None
    assert not logs & fsflags.FS_TOPDIR_FL
