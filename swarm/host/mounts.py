"""The mount table of this process's mount namespace, and unmounting and
removing trees that may still have mounts below them (container rootfs
overlays, volumes): `rm -rf` that never descends into a live mount."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from .libc import check, libc

_MNT_DETACH = 2


class StillMounted(OSError):
    """A tree to remove still has mounts below it after unmounting them."""


def unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    if "\\" not in field:
        return field  # the usual case: nothing to undo, no per-character loop
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def escape_mountinfo(text: str) -> str:
    """How mountinfo writes a path (the inverse of unescape_mountinfo)."""
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in text)


def _mountinfo_lines() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as file:
        return file.read().splitlines()


def mount_points() -> list[str]:
    """Mount points of this process's mount namespace, in mount order."""
    return [unescape_mountinfo(line.split(" ", 5)[4]) for line in _mountinfo_lines()
            if line.strip()]


def points_under(points: Iterable[str], path: Path) -> list[str]:
    """The points at or below path, deepest first (pure: for mounts_under)."""
    prefix = str(path).rstrip("/")
    found = [p for p in points if p == prefix or p.startswith(prefix + "/")]
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below path, deepest first. One read of the mount
    table; lines that do not contain the path are skipped before they are
    split (a host with many mounts has a long table, and the agent asks once
    per container it removes)."""
    needle = escape_mountinfo(str(path).rstrip("/"))
    return points_under((unescape_mountinfo(line.split(" ", 5)[4])
                         for line in _mountinfo_lines() if needle in line), path)


def unmount(target: Path) -> bool:
    """Unmount the top mount at target, lazily if it is busy; False (no error)
    when target is not a mount point (any more)."""
    if libc().umount2(str(target).encode(), 0) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOENT):
        return False
    if code == errno.EBUSY:
        check(libc().umount2(str(target).encode(), _MNT_DETACH), f"umount -l {target}")
        return True
    raise OSError(code, f"umount {target}: {os.strerror(code)}")


_MAX_STACKED = 64


def unmount_fully(target: Path) -> None:
    """Unmount until nothing is mounted at target: the kernel's EINVAL ("not
    a mount point") proves it without reading the mount table again, and
    mounts stacked on one point (listed once by mounts_under) all go."""
    for _ in range(_MAX_STACKED):
        if not unmount(target):
            return
    raise StillMounted(errno.EBUSY, f"{target}: still mounted after {_MAX_STACKED} unmounts")


def unmount_all_under(path: Path) -> None:
    """Nothing mounted at or below path any more (one read of the mount
    table, then each point unmounted until the kernel says it is none)."""
    for point in mounts_under(path):
        unmount_fully(Path(point))


def remove_tree(path: Path, *, unmounted: bool = False) -> None:
    """rm -rf, never descending into anything mounted below path: every
    mount point below it is unmounted first, until the kernel says it is none
    (unmount_all_under). unmounted: the caller did that just before, with
    nothing mounting there since (skips a second read of the mount table)."""
    if not unmounted:
        unmount_all_under(path)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)


_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8


def mount_tmpfs(target: Path, size_bytes: int, mode: int = 0o700) -> None:
    """A private tmpfs at target (nosuid, nodev, noexec): memory only, gone
    with its unmount. Secrets live in one per task (agent/payloads.py)."""
    options = f"size={max(size_bytes, 4096)},mode={mode:o}".encode()
    check(libc().mount(b"tmpfs", str(target).encode(), b"tmpfs",
                       ctypes.c_ulong(_MS_NOSUID | _MS_NODEV | _MS_NOEXEC), options),
          f"mount tmpfs on {target}")


def is_mount_point(path: Path) -> bool:
    return str(path).rstrip("/") in mount_points()
