"""The mount table of this process's mount namespace, and unmounting and
removing trees that may still have mounts below them (container rootfs
overlays, volumes): `rm -rf` that never descends into a live mount."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
from pathlib import Path

from .libc import check, libc

_MNT_DETACH = 2


class StillMounted(OSError):
    """A tree to remove still has mounts below it after unmounting them."""


def unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points() -> list[str]:
    """Mount points of this process's mount namespace, in mount order."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as file:
        return [unescape_mountinfo(line.split()[4]) for line in file if line.strip()]


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below path, deepest first."""
    prefix = str(path).rstrip("/")
    found = [p for p in mount_points() if p == prefix or p.startswith(prefix + "/")]
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def unmount(target: Path) -> None:
    """Unmount, lazily if it is busy; no error if it is not mounted."""
    result = libc().umount2(str(target).encode(), 0)
    if result == 0:
        return
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOENT):  # not a mount point (any more)
        return
    if code == errno.EBUSY:
        check(libc().umount2(str(target).encode(), _MNT_DETACH), f"umount -l {target}")
        return
    raise OSError(code, f"umount {target}: {os.strerror(code)}")


def unmount_all_under(path: Path) -> None:
    for point in mounts_under(path):
        unmount(Path(point))


def remove_tree(path: Path) -> None:
    """rm -rf, refusing to descend into anything still mounted below path."""
    unmount_all_under(path)
    still = mounts_under(path)
    if still:
        raise StillMounted(errno.EBUSY, f"cannot remove {path}: still mounted: {', '.join(still)}")
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
