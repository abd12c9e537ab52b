"""Unpacking layer tarballs (gzip or plain) into overlayfs lower directories,
keyed and verified by their diff-id; OCI whiteouts become overlayfs whiteouts."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import threading
import zlib
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_OPAQUE_XATTR = "trusted.overlay.opaque"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC = b"\x1f\x8b"
_ALLOWED_XATTR_PREFIXES = ("user.", "security.capability")


class LayerError(Exception):
    """A layer blob is corrupt (verification) or breaks the rules (unsafe)."""

    def __init__(self, message: str, *, corrupt: bool) -> None:
        super().__init__(message)
        self.corrupt = corrupt


class _Cancelled(Exception):
    pass


class _HashingReader(io.RawIOBase):
    """Passes a stream through, hashing every byte read."""

    def __init__(self, source: io.BufferedIOBase) -> None:
        self._source = source
        self.hash = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._source.read(len(view))
        n = len(data)
        view[:n] = data
        self.hash.update(data)
        self.size += n
        return n


_DIR, _FILE, _SYMLINK, _WHITEOUT = "dir", "file", "symlink", "whiteout"


class _Unpacker:
    """Writes tar members below `root`, tracking what each path is, so that no
    member is ever written through a symlink or outside the root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.kinds: dict[str, str] = {}
        self.dir_times: dict[str, float] = {}
        self.size = 0

    @staticmethod
    def _parts(name: str, what: str) -> list[str]:
        if name.startswith("/"):
            raise LayerError(f"{what} {name!r} is an absolute path", corrupt=False)
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise LayerError(f"{what} {name!r} leaves the layer", corrupt=False)
        return parts

    def _path(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else str(self.root)

    def _forget(self, rel: str) -> None:
        self.kinds.pop(rel, None)
        self.dir_times.pop(rel, None)
        prefix = rel + "/"
        for key in [k for k in self.kinds if k.startswith(prefix)]:
            del self.kinds[key]
            self.dir_times.pop(key, None)

    def _remove(self, rel: str) -> None:
        path = self._path(rel)
        if self.kinds.get(rel) == _DIR:
            shutil.rmtree(path)
        else:
            os.unlink(path)
        self._forget(rel)

    def _parent(self, parts: list[str], name: str) -> str:
        """Make sure every ancestor is a real directory of this layer."""
        rel = ""
        for part in parts:
            rel = f"{rel}/{part}" if rel else part
            kind = self.kinds.get(rel)
            if kind == _DIR:
                continue
            if kind == _SYMLINK:
                raise LayerError(f"entry {name!r} lies beneath the symlink {rel!r}",
                                 corrupt=False)
            if kind == _FILE:
                raise LayerError(f"entry {name!r} lies beneath the file {rel!r}", corrupt=False)
            opaque = kind == _WHITEOUT  # deleted below, recreated here: hide the lower one
            if opaque:
                self._remove(rel)
            os.mkdir(self._path(rel), 0o755)
            if opaque:
                os.setxattr(self._path(rel), _OPAQUE_XATTR, b"y")
            self.kinds[rel] = _DIR
        return rel

    def add(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        parts = self._parts(member.name, "entry")
        if not parts:  # the layer's root directory itself
            if member.isdir():
                self._metadata("", member)
                self.dir_times[""] = member.mtime
            return
        parent = self._parent(parts[:-1], member.name)
        base = parts[-1]
        if base.startswith(".wh."):
            self._whiteout(parent, base, member.name)
            return
        rel = f"{parent}/{base}" if parent else base
        path = self._path(rel)
        existing = self.kinds.get(rel)
        if existing is not None and not (existing == _DIR and member.isdir()):
            self._remove(rel)
        if member.isdir():
            if existing != _DIR:
                os.mkdir(path, 0o700)
                if existing == _WHITEOUT:
                    os.setxattr(path, _OPAQUE_XATTR, b"y")
                self.kinds[rel] = _DIR
            self.dir_times[rel] = member.mtime
        elif member.isreg():
            source = tar.extractfile(member)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                if source is not None:
                    shutil.copyfileobj(source, out, 1 << 20)
            self.kinds[rel] = _FILE
            self.size += member.size
        elif member.issym():
            os.symlink(member.linkname, path)  # as-is: resolved inside the container
            self.kinds[rel] = _SYMLINK
        elif member.islnk():
            target = "/".join(self._parts(member.linkname, "hardlink target"))
            kind = self.kinds.get(target)
            if kind not in (_FILE, _SYMLINK):
                raise LayerError(f"hardlink {member.name!r} points at {member.linkname!r}, "
                                 "which is not an earlier file of this layer", corrupt=False)
            os.link(self._path(target), path, follow_symlinks=False)
            self.kinds[rel] = kind
            return  # shares the target's inode and metadata
        elif member.ischr() or member.isblk():
            kind_bits = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(path, kind_bits | 0o600, os.makedev(member.devmajor, member.devminor))
            self.kinds[rel] = _FILE
        elif member.isfifo():
            os.mkfifo(path, 0o600)
            self.kinds[rel] = _FILE
        else:
            raise LayerError(f"entry {member.name!r} has unsupported type {member.type!r}",
                             corrupt=False)
        self._metadata(rel, member)

    def _whiteout(self, parent: str, base: str, name: str) -> None:
        directory = self._path(parent)
        if base == ".wh..wh..opq":
            os.setxattr(directory, _OPAQUE_XATTR, b"y")
            return
        if base.startswith(".wh..wh."):
            return  # aufs bookkeeping (.wh..wh.plnk and friends): nothing to do
        hidden = base[len(".wh."):]
        if hidden in ("", ".", ".."):
            raise LayerError(f"whiteout {name!r} names nothing", corrupt=False)
        rel = f"{parent}/{hidden}" if parent else hidden
        if rel in self.kinds:
            # The same layer has the entry: whiteouts apply to lower layers only,
            # and this layer's entry hides those already.
            return
        os.mknod(self._path(rel), stat.S_IFCHR, os.makedev(0, 0))
        self.kinds[rel] = _WHITEOUT

    def _metadata(self, rel: str, member: tarfile.TarInfo) -> None:
        path = self._path(rel)
        symlink = member.issym()
        os.chown(path, member.uid, member.gid, follow_symlinks=False)
        if not symlink:
            os.chmod(path, member.mode & 0o7777)  # after chown, which clears set-id bits
        for key, value in member.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            attr = key[len("SCHILY.xattr."):]
            # trusted.* (overlay's own) and system.* never come from an image.
            if not attr.startswith(_ALLOWED_XATTR_PREFIXES):
                continue
            try:
                os.setxattr(path, attr, value.encode("utf-8", "surrogateescape"),
                            follow_symlinks=False)
            except OSError as error:
                log.debug("xattr %s on %s not kept: %s", attr, path, error)
        if not member.isdir():
            os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)

    def finish(self) -> None:
        for rel, mtime in self.dir_times.items():
            os.utime(self._path(rel), (mtime, mtime), follow_symlinks=False)


def _extract(blob: Path, root: Path, diff_id: str, cancel: threading.Event | None) -> int:
    """Unpack blob (gzip or plain tar) into the existing directory root, then
    check the uncompressed stream against diff_id. Returns the file bytes."""
    with open(blob, "rb") as raw:
        magic = raw.read(4)
        raw.seek(0)
        source: io.BufferedIOBase
        if magic.startswith(_GZIP_MAGIC):
            source = gzip.GzipFile(fileobj=raw, mode="rb")
        elif magic == _ZSTD_MAGIC:
            raise LayerError("zstd-compressed layers are not supported", corrupt=False)
        else:
            source = raw
        hashing = _HashingReader(source)
        stream = io.BufferedReader(hashing, 1 << 20)
        unpacker = _Unpacker(root)
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                while (member := tar.next()) is not None:
                    if cancel is not None and cancel.is_set():
                        raise _Cancelled
                    unpacker.add(member, tar)
                    vars(tar)["members"].clear()  # streaming: keep no list of every header
                unpacker.finish()
                while stream.read(1 << 20):  # the end-of-archive padding counts too
                    pass
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
            raise LayerError(f"layer {diff_id} is corrupt: {error}", corrupt=True) from error
    got = f"sha256:{hashing.hash.hexdigest()}"
    if got != diff_id:
        raise LayerError(f"layer diff-id mismatch: expected {diff_id}, got {got}", corrupt=True)
    return unpacker.size


def unpack_layer(blob: Path, diff_id: str, target: Path, scratch: Path,
                 cancel: threading.Event | None = None) -> tuple[bool, int]:
    """Unpack a layer blob into `target` atomically: into a fresh directory
    under `scratch` (same filesystem), renamed to `target` only when complete
    and verified. Returns (created, bytes): created is False when `target`
    already existed (someone else unpacked it). Raises LayerError; on any
    failure nothing of this call remains."""
    if target.is_dir():
        return False, 0
    work = Path(tempfile.mkdtemp(prefix=f"layer-{target.name[:12]}-", dir=scratch))
    try:
        os.chmod(work, 0o755)
        size = _extract(blob, work, diff_id, cancel)
        try:
            os.rename(work, target)
        except OSError:
            if target.is_dir():  # lost a race to an identical layer
                shutil.rmtree(work, ignore_errors=True)
                return False, 0
            raise
        return True, size
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def tree_size(path: Path) -> int:
    """Bytes of the regular files below path (each inode once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for directory, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(directory, name))
                if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_size
    return total
