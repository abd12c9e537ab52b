"""The container's root filesystem and the host paths it uses: the overlayfs
mount of the image layers, lookups inside the rootfs (symlinks are followed
relative to the rootfs, never out of it), bind-mount sources and volumes.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from swarm.host import mounts
from swarm.host.libc import check, libc
from swarm.host.mounts import unescape_mountinfo

from .base import ContainerError, RejectError

_MAX_SYMLINKS = 40
_MAX_MOUNT_DATA = 4095  # the kernel copies at most one page of mount options


# ---------------------------------------------------------------- mounts


def overlay_lowers_under(path: Path) -> list[tuple[Path, ...]]:
    """The lower directories (lowest first) of each overlay mounted at or
    below path."""
    prefix = str(path).rstrip("/") + "/"
    needle = mounts.escape_mountinfo(prefix)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as file:
        for line in file:
            if needle not in line:
                continue  # not ours (cheap: most of a busy host's mounts)
            mine, _, theirs = line.partition(" - ")
            fields, others = mine.split(), theirs.split()
            if len(fields) < 5 or len(others) < 3 or others[0] != "overlay":
                continue
            if not (unescape_mountinfo(fields[4]) + "/").startswith(prefix):
                continue
            for option in others[2].split(","):
                if option.startswith("lowerdir="):
                    lowers = unescape_mountinfo(option.removeprefix("lowerdir="))
                    found.append(tuple(Path(p) for p in reversed(lowers.split(":"))))
    return found


def mount_overlay(layers: Sequence[Path], upper: Path, work: Path, target: Path) -> None:
    """Mount the layers (lowest first) read-only under a writable upper dir."""
    for layer in layers:
        if any(c in str(layer) for c in ",:\\"):
            raise ContainerError(f"layer path {layer} contains ',', ':' or '\\', which "
                                 "overlayfs options cannot carry")
        if not layer.is_dir():
            raise ContainerError(f"image layer {layer} is not a directory")
    lower = ":".join(str(layer) for layer in reversed(layers))  # overlayfs wants highest first
    data = f"lowerdir={lower},upperdir={upper},workdir={work}"
    if len(data) > _MAX_MOUNT_DATA:
        raise ContainerError(f"{len(layers)} layers make overlayfs options of {len(data)} "
                             f"bytes, more than the kernel's {_MAX_MOUNT_DATA}")
    target.mkdir(exist_ok=True)
    check(libc().mount(b"overlay", str(target).encode(), b"overlay", ctypes.c_ulong(0),
                         data.encode()), f"mount overlay on {target}")


def remove_tree(path: Path, *, unmounted: bool = False) -> None:
    """rm -rf, refusing to descend into anything still mounted below path
    (unmounted: see mounts.remove_tree)."""
    try:
        mounts.remove_tree(path, unmounted=unmounted)
    except mounts.StillMounted as error:
        raise ContainerError(error.strerror) from error


# ---------------------------------------------------------------- lookups in the rootfs


def resolve_in_root(root: Path, path: str) -> Path:
    """The host path of `path` as the container would see it: symlinks are
    followed, absolute ones relative to root, and `..` never leaves root.
    Components that do not exist are taken literally."""
    parts = deque(p for p in path.split("/") if p not in ("", "."))
    current: list[str] = []
    links = 0
    while parts:
        part = parts.popleft()
        if part == "..":
            if current:
                current.pop()
            continue
        candidate = root.joinpath(*current, part)
        try:
            mode = os.lstat(candidate).st_mode
        except (FileNotFoundError, NotADirectoryError):
            current.append(part)
            continue
        if not stat.S_ISLNK(mode):
            current.append(part)
            continue
        links += 1
        if links > _MAX_SYMLINKS:
            raise OSError(errno.ELOOP, f"too many levels of symbolic links in {path}")
        target = os.readlink(candidate)
        if target.startswith("/"):
            current = []
        parts.extendleft(reversed([p for p in target.split("/") if p not in ("", ".")]))
    return root.joinpath(*current)


def read_in_root(root: Path, path: str) -> str | None:
    try:
        return resolve_in_root(root, path).read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def _is_executable(host_path: Path) -> bool:
    try:
        info = os.stat(host_path)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and bool(info.st_mode & 0o111)


def find_executable(root: Path, name: str, path_env: str, cwd: str) -> str:
    """Check that the container could exec `name`; returns its path inside the
    container. Raises RejectError with docker's wording otherwise."""
    if "/" in name:
        inside = name if name.startswith("/") else f"{cwd.rstrip('/')}/{name}"
        host = resolve_in_root(root, inside)
        if not host.exists():
            raise RejectError(f'exec: "{name}": not found')
        if not _is_executable(host):
            raise RejectError(f'exec: "{name}": permission denied')
        return inside
    for directory in path_env.split(":"):
        directory = directory or cwd
        inside = f"{directory.rstrip('/')}/{name}"
        if not inside.startswith("/"):
            inside = f"{cwd.rstrip('/')}/{inside}"
        if _is_executable(resolve_in_root(root, inside)):
            return inside
    raise RejectError(f'exec: "{name}": executable file not found in $PATH')


# ---------------------------------------------------------------- host sources


def check_bind_source(source: str, allowed_roots: Sequence[Path]) -> Path:
    """The real host path of a bind-mount source, if it lies under one of the
    allowed roots and exists."""
    real = Path(os.path.realpath(source))
    roots = [Path(os.path.realpath(root)) for root in allowed_roots]
    if not any(real == root or real.is_relative_to(root) for root in roots):
        where = (f"allowed roots: {', '.join(str(r) for r in allowed_roots)}" if roots
                 else "bind mounts are disabled on this node")
        raise RejectError(f'bind mount source "{source}" is not under an allowed root '
                          f"({where})")
    if not real.exists():
        raise RejectError(f'invalid mount config for type "bind": bind source path does not '
                          f"exist: {source}")
    return real


def ensure_volume(directory: Path, rootfs: Path, target: str) -> bool:
    """Create a volume directory if needed; a new volume starts with the
    image's content at the mount target, as docker copies it. Returns whether
    it was created."""
    try:
        directory.mkdir(parents=True)
    except FileExistsError:
        return False
    image_dir = resolve_in_root(rootfs, target)
    if image_dir.is_dir():
        shutil.copytree(image_dir, directory, symlinks=True, dirs_exist_ok=True)
        shutil.copystat(image_dir, directory)
    return True
