"""Unmounting and removing trees with mounts below them (swarm/host/mounts.py),
with real tmpfs mounts: what the runtime's removal of a container relies on."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarm.host import mounts

pytestmark = pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"),
                                reason="mounts need root (CI runs it as root)")


@pytest.fixture
def tree() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="swmt-", dir="/run"))
    try:
        yield path
    finally:
        for point in mounts.mounts_under(path):
            mounts.unmount_fully(Path(point))
        if path.exists():
            mounts.remove_tree(path)


def test_remove_tree_unmounts_stacked_and_nested_mounts(tree: Path) -> None:
    """Two mounts stacked on one point (listed once) and one below another
    all go with one read of the mount table, and the files with them."""
    (tree / "a b").mkdir()  # a space: mountinfo escapes it
    (tree / "keep").mkdir()
    (tree / "keep" / "file").write_text("x")
    mounts.mount_tmpfs(tree / "a b", 1 << 20)
    mounts.mount_tmpfs(tree / "a b", 1 << 20)  # stacked on the same point
    (tree / "a b" / "nested").mkdir()
    mounts.mount_tmpfs(tree / "a b" / "nested", 1 << 20)
    assert mounts.mounts_under(tree) == [f"{tree}/a b/nested", f"{tree}/a b"]
    assert mounts.mounts_under(tree / "a") == []  # a prefix of a name is not "under"
    mounts.remove_tree(tree)
    assert not tree.exists()
    assert [p for p in mounts.mount_points() if p.startswith(str(tree))] == []


def test_unmount_fully_of_a_plain_directory_is_a_no_op(tree: Path) -> None:
    mounts.unmount_fully(tree)
    mounts.unmount_fully(tree / "missing")
    assert tree.is_dir()
