"""Unmounting and removing trees with mounts below them (swarm/host/mounts.py),
with real tmpfs mounts: what the runtime's removal of a container relies on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from swarm.host import mounts

pytestmark = pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"),
                                reason="mounts need root (CI runs it as root)")


def test_remove_tree_unmounts_stacked_and_nested_mounts(scratch_dir: Path) -> None:
    """Two mounts stacked on one point (listed once) and one below another
    all go with one read of the mount table, and the files with them."""
    (scratch_dir / "a b").mkdir()  # a space: mountinfo escapes it
    (scratch_dir / "keep").mkdir()
    (scratch_dir / "keep" / "file").write_text("x")
    mounts.mount_tmpfs(scratch_dir / "a b", 1 << 20)
    mounts.mount_tmpfs(scratch_dir / "a b", 1 << 20)  # stacked on the same point
    (scratch_dir / "a b" / "nested").mkdir()
    mounts.mount_tmpfs(scratch_dir / "a b" / "nested", 1 << 20)
    assert mounts.mounts_under(scratch_dir) == [f"{scratch_dir}/a b/nested", f"{scratch_dir}/a b"]
    assert mounts.mounts_under(scratch_dir / "a") == []  # a prefix of a name is not "under"
    mounts.remove_tree(scratch_dir)
    assert not scratch_dir.exists()
    assert [p for p in mounts.mount_points() if p.startswith(str(scratch_dir))] == []


def test_unmount_fully_of_a_plain_directory_is_a_no_op(scratch_dir: Path) -> None:
    mounts.unmount_fully(scratch_dir)
    mounts.unmount_fully(scratch_dir / "missing")
    assert scratch_dir.is_dir()
