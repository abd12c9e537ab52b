"""Images on a node: pulled once with skopeo, unpacked once per layer, shared
by every container, garbage-collected when the disk fills.

On-disk layout under the store's root (one ImageStore per root)::

    images/<sha256 of the normalised reference>/
        image.json          what this store needs to know (reference, digest, layers)
        layout/             the OCI image layout skopeo wrote (index.json, blobs/)
    layers/<diff-id hex>/   one unpacked layer: an overlayfs lower directory
    tmp/                    pulls and unpacks in progress; emptied when the store opens

Everything appears by rename(2) from tmp/ once complete, and disappears by a
rename into tmp/ before it is deleted, so a crash leaves only tmp/ debris
(removed at the next start), never a half layer or a half image that looks
complete.

Pulling is `skopeo copy docker://REF oci:DIR` (no shell): skopeo picks this
node's platform out of an image index, verifies every digest and does the
registry's token or basic auth. Layers are then unpacked here (gzip or plain
tar), keyed by their diff-id, which is verified while unpacking. OCI
whiteouts become overlayfs whiteouts: `.wh.NAME` a 0/0 character device
NAME, `.wh..wh..opq` the xattr trusted.overlay.opaque=y on its directory.
Unpacking needs root (ownership, device nodes, trusted.* xattrs).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import io
import ipaddress
import json
import logging
import os
import platform as platform_module
import re
import shutil
import stat
import tarfile
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from swarm.agent.runtime.base import ImageConfig, ImageInput

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_REGISTRY = "docker.io"
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io",
                                 "registry.hub.docker.com"})
_OPAQUE_XATTR = "trusted.overlay.opaque"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_STDERR = 64 * 1024
_ALLOWED_XATTR_PREFIXES = ("user.", "security.capability")


class ImageError(Exception):
    """An image could not be made available; the message is one line meant for
    the task's status ("image not found: …", "registry … unreachable: …",
    "image … failed verification: …", "access to … denied: …")."""


# ------------------------------------------------------------------ references

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")


@dataclass(frozen=True)
class Reference:
    """A normalised image reference: registry host[:port], repository path,
    and a tag or a digest (a digest wins: name:tag@digest pulls by digest)."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        if self.digest is not None:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag or 'latest'}"


def parse_reference(text: str) -> Reference:
    """Parse and normalise like docker: `busybox` is
    docker.io/library/busybox:latest, `user/app` docker.io/user/app:latest,
    `host:port/name:tag` stays as it is. Raises ImageError when invalid."""
    invalid = ImageError(f"invalid image reference: {text!r}")
    if not text or len(text) > 512 or text != text.strip():
        raise invalid
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.rsplit("@", 1)
        if not _DIGEST_RE.fullmatch(digest):
            raise invalid
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG_RE.fullmatch(tag):
            raise invalid
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        registry, path = first, remainder
        if not _DOMAIN_RE.fullmatch(registry):
            raise invalid
    else:
        registry, path = DEFAULT_REGISTRY, rest
    if registry in _DOCKER_HUB_ALIASES:
        registry = DEFAULT_REGISTRY
        if "/" not in path:
            path = f"library/{path}"
    if not _PATH_RE.fullmatch(path) or len(registry) + 1 + len(path) > 255:
        raise invalid
    if digest is not None:
        tag = None
    elif tag is None:
        tag = "latest"
    return Reference(registry, path, tag, digest)


def normalize_reference(text: str) -> str:
    """The canonical string of a reference (see parse_reference)."""
    return str(parse_reference(text))


# ------------------------------------------------------------------ platform

_ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
                  "armv7l": "arm", "armv6l": "arm", "i386": "386", "i686": "386",
                  "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def host_architecture() -> str:
    """platform.machine() in OCI's words (x86_64 -> amd64, aarch64 -> arm64)."""
    machine = platform_module.machine().lower()
    return _ARCHITECTURES.get(machine, machine)


@dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = field(default_factory=host_architecture)
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


# ------------------------------------------------------------------ images


@dataclass(frozen=True)
class Healthcheck:
    """Docker's Healthcheck from the image config; durations in seconds, 0
    meaning "not set" (the runtime's default applies)."""

    test: tuple[str, ...]  # ("CMD", ...), ("CMD-SHELL", "..."), ("NONE",) or () to inherit
    interval: float = 0.0
    timeout: float = 0.0
    start_period: float = 0.0
    retries: int = 0
    start_interval: float = 0.0


@dataclass(frozen=True)
class Image:
    """An image present on this node, ready to run.

    layers are the unpacked layer directories LOWEST first (manifest order).
    overlayfs's lowerdir= wants them HIGHEST first: use `lowerdir`.
    digest is the digest of the manifest that was pulled (for an image index,
    the manifest of this node's platform)."""

    reference: str
    digest: str
    layers: tuple[Path, ...]
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()  # KEY=VALUE
    working_dir: str = ""
    user: str = ""
    exposed_ports: tuple[str, ...] = ()  # "80/tcp"
    healthcheck: Healthcheck | None = None
    stop_signal: str = ""
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def lowerdir(self) -> str:
        """The layers as overlayfs's lowerdir= option: highest first."""
        return ":".join(str(layer) for layer in reversed(self.layers))

    def runtime_input(self) -> ImageInput:
        """What the container runtime takes (agent.runtime.base.ImageInput)."""
        return ImageInput(layers=self.layers, config=ImageConfig(
            entrypoint=self.entrypoint, cmd=self.cmd, env=self.env,
            working_dir=self.working_dir, user=self.user, stop_signal=self.stop_signal))


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(str(item) for item in value)
    if isinstance(value, str):
        return (value,)
    return ()


def _seconds(value: Any) -> float:
    return value / 1e9 if isinstance(value, int | float) and value > 0 else 0.0


def _image_from_config(reference: str, digest: str, layers: tuple[Path, ...],
                       config: Mapping[str, Any]) -> Image:
    container = config.get("config") or {}
    if not isinstance(container, dict):
        container = {}
    health = container.get("Healthcheck")
    healthcheck = None
    if isinstance(health, dict):
        retries = health.get("Retries")
        healthcheck = Healthcheck(
            test=_strings(health.get("Test")), interval=_seconds(health.get("Interval")),
            timeout=_seconds(health.get("Timeout")),
            start_period=_seconds(health.get("StartPeriod")),
            start_interval=_seconds(health.get("StartInterval")),
            retries=retries if isinstance(retries, int) and retries > 0 else 0)
    ports = container.get("ExposedPorts")
    labels = container.get("Labels")
    return Image(
        reference=reference, digest=digest, layers=layers,
        entrypoint=_strings(container.get("Entrypoint")),
        cmd=_strings(container.get("Cmd")),
        env=_strings(container.get("Env")),
        working_dir=str(container.get("WorkingDir") or ""),
        user=str(container.get("User") or ""),
        exposed_ports=tuple(sorted(ports)) if isinstance(ports, dict) else (),
        healthcheck=healthcheck,
        stop_signal=str(container.get("StopSignal") or ""),
        labels=tuple(sorted((str(k), str(v)) for k, v in labels.items()))
        if isinstance(labels, dict) else (),
    )


# ------------------------------------------------------------------ unpacking


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


# ------------------------------------------------------------------ skopeo errors

_FATAL_RE = re.compile(r'level=fatal msg="((?:[^"\\]|\\.)*)"')


def _skopeo_message(stderr: str) -> str:
    matches = _FATAL_RE.findall(stderr)
    if matches:
        message: str = matches[-1]
        return re.sub(r"\\(.)", r"\1", message)
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else "skopeo failed without a message"


def _classify(ref: Reference, stderr: str) -> ImageError:
    """One clear line out of what skopeo 1.9 prints on stderr, e.g.
    level=fatal msg="initializing source docker://H/N:T: reading manifest T in
    H/N: manifest unknown: manifest unknown" (missing tag or repository),
    "... pinging container registry H: Get \\"http://H/v2/\\": dial tcp H:
    connect: connection refused" (registry down), "... unauthorized:
    authentication required" (no or wrong credentials), "writing blob:
    happened during read: Digest did not match, expected …, got …" (a
    corrupt layer), "reading config blob …: Download config.json digest …
    does not match expected …" (a corrupt config)."""
    message = _skopeo_message(stderr)
    detail = message
    prefix = f"initializing source docker://{ref}: "
    if detail.startswith(prefix):
        detail = detail[len(prefix):]
    low = message.lower()
    if ("did not match" in low or "does not match" in low or "invalid checksum" in low
            or "size mismatch" in low or "digest mismatch" in low):
        return ImageError(f"image {ref} failed verification: {detail}")
    ping = re.search(r"pinging container registry [^:]+(?::\d+)?: (.*)", message)
    if ping is not None:
        reason = re.sub(r'^Get "[^"]*": ', "", ping.group(1))
        if "http response to https client" in reason.lower():
            reason += " (not an insecure registry for this node)"
        return ImageError(f"registry {ref.registry} unreachable: {reason}")
    if any(word in low for word in ("unauthorized", "authentication required", "denied:",
                                    "access to the resource is denied", "forbidden",
                                    "invalid username/password")):
        return ImageError(f"access to {ref} denied: {detail}")
    if "no image found in manifest list" in low or "choosing image instance" in low:
        return ImageError(f"image {ref} has no variant for this node's platform: {detail}")
    if "manifest unknown" in low or "name unknown" in low or "not found" in low:
        return ImageError(f"image not found: {ref}")
    if any(word in low for word in ("dial tcp", "connection refused", "no such host",
                                    "i/o timeout", "connection reset", "network is unreachable",
                                    "x509:", "tls:", "context deadline exceeded")):
        return ImageError(f"registry {ref.registry} unreachable: {detail}")
    return ImageError(f"pulling {ref} failed: {detail}")


# ------------------------------------------------------------------ the store


@dataclass(frozen=True)
class _Record:
    """images/<key>/image.json"""

    reference: str
    digest: str
    config_digest: str
    diff_ids: tuple[str, ...]
    size: int  # bytes of the OCI layout

    def to_json(self) -> str:
        return json.dumps({"reference": self.reference, "digest": self.digest,
                           "config_digest": self.config_digest,
                           "diff_ids": list(self.diff_ids), "size": self.size})

    @classmethod
    def from_json(cls, text: str) -> _Record:
        data = json.loads(text)
        return cls(str(data["reference"]), str(data["digest"]), str(data["config_digest"]),
                   tuple(str(d) for d in data["diff_ids"]), int(data["size"]))


@dataclass(frozen=True)
class ImageGcSettings:
    """When images go. The store's size is measured against a capacity:
    max_bytes when set (the store's own bytes: pulled OCI layouts plus the
    regular files of the unpacked layers), else the filesystem holding the
    store (its used bytes, whatever uses them, against its size -- as the
    kubelet does). Above high_percent of the capacity, images that no
    container uses go, least recently used first, until the usage is at or
    below low_percent (or nothing more may go). Defaults: 80 % high, 60 % low
    of the store's filesystem, checked every 5 minutes and after every
    container removal. An image asked for (ensure()) less than min_age
    seconds ago stays, as the kubelet's image GC minimum age (default 2
    minutes): it closes the window between a pull and the container that
    uses it."""

    high_percent: float = 80.0
    low_percent: float = 60.0
    max_bytes: int | None = None
    interval: float = 300.0
    min_age: float = 120.0

    def __post_init__(self) -> None:
        if not 0 <= self.low_percent <= self.high_percent <= 100:
            raise ValueError(f"image gc: need 0 <= low ({self.low_percent:g}%) <= high "
                             f"({self.high_percent:g}%) <= 100")
        if self.max_bytes is not None and self.max_bytes <= 0:
            raise ValueError("image gc: max bytes must be positive")


@dataclass(frozen=True)
class GcImage:
    """An image as the collector sees it: its catalog key, the bytes of its
    own layout, its layers (diff-id hex, any order), when a container last
    asked for it, and whether it must stay (a container uses it, or a pull of
    it is in progress)."""

    key: str
    size: int
    layers: tuple[str, ...]
    last_used: float
    in_use: bool


@dataclass(frozen=True)
class GcPlan:
    images: tuple[str, ...]  # keys, in removal order
    layers: tuple[str, ...]  # diff-id hex
    freed: int  # bytes


def plan_gc(images: Collection[GcImage], layer_sizes: Mapping[str, int],
            protected_layers: Collection[str], usage: int, target: int) -> GcPlan:
    """What to remove to bring `usage` down to `target` bytes (pure).

    Layers on disk that no image references and nothing protects go first
    (debris); then images not in use, least recently used first (ties by
    key), each with the layers that no remaining image and nothing protected
    has. Never an image in use, never a layer of an image in use or in
    protected_layers. Stops as soon as usage - freed <= target; when even
    everything removable is not enough, removes everything removable."""
    protected = set(protected_layers)
    for image in images:
        if image.in_use:
            protected.update(image.layers)
    refs: Counter[str] = Counter()
    for image in images:
        refs.update(set(image.layers))
    freed = 0
    chosen_layers: list[str] = []

    def take_layer(layer: str) -> None:
        nonlocal freed
        chosen_layers.append(layer)
        freed += layer_sizes.get(layer, 0)

    for layer in sorted(layer_sizes):
        if usage - freed <= target:
            break
        if refs[layer] == 0 and layer not in protected:
            take_layer(layer)
    chosen_images: list[str] = []
    candidates = sorted((i for i in images if not i.in_use), key=lambda i: (i.last_used, i.key))
    for image in candidates:
        if usage - freed <= target:
            break
        chosen_images.append(image.key)
        freed += image.size
        for layer in sorted(set(image.layers)):
            refs[layer] -= 1
            if refs[layer] == 0 and layer not in protected and layer in layer_sizes:
                take_layer(layer)
    return GcPlan(tuple(chosen_images), tuple(chosen_layers), freed)


@dataclass(frozen=True)
class _Pulled:
    record: _Record
    config: dict[str, Any]
    blobs: tuple[Path, ...]  # compressed layer blobs, in diff_ids order


def _key(reference: str) -> str:
    return hashlib.sha256(reference.encode()).hexdigest()


def _hex(digest: str) -> str:
    algorithm, _, value = digest.partition(":")
    if algorithm != "sha256" or not re.fullmatch(r"[a-f0-9]{64}", value):
        raise ValueError(f"unsupported digest {digest!r}")
    return value


def _host_address(registry: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address of a registry given as IP[:port] or [IPv6][:port]."""
    host = registry if registry.endswith("]") else registry.rsplit(":", 1)[0]
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _is_loopback(registry: str) -> bool:
    if registry.rsplit(":", 1)[0] == "localhost":
        return True
    address = _host_address(registry)
    return address is not None and address.is_loopback


def _registry_key(name: str) -> str:
    name = name.removeprefix("https://").removeprefix("http://").split("/", 1)[0]
    return DEFAULT_REGISTRY if name in _DOCKER_HUB_ALIASES else name


async def _in_thread(function: Callable[[threading.Event], T]) -> T:
    """Run function(cancel_event) in a worker thread. If the caller is
    cancelled, set the event and still wait for the thread to finish (it
    cleans up after itself) before passing the cancellation on."""
    cancel = threading.Event()
    future = asyncio.get_running_loop().run_in_executor(None, function, cancel)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        cancel.set()
        with contextlib.suppress(BaseException):
            await future
        raise


class ImageStore:
    """Images of one node under `root`.

    insecure_registries: host[:port] entries (or CIDRs of registry IPs) that
    may be spoken to over plain HTTP or unverified TLS; loopback registries
    always may, as with docker. credentials: per registry host, (user,
    password) for basic auth -- handed to skopeo in a 0600 auth file that
    lives only during the pull, never on its command line; registries without
    an entry are accessed anonymously (the host's own auth files are not
    read). platform: the os/architecture whose manifest skopeo chooses out of
    an image index. At most max_concurrent_pulls skopeo processes run at once;
    pull_timeout bounds each. signature_policy: a containers-policy.json for
    skopeo; none means accept anything, as docker does.
    """

    def __init__(self, root: Path, *, insecure_registries: Collection[str] = (),
                 credentials: Mapping[str, tuple[str, str]] | None = None,
                 platform: Platform | None = None,
                 gc: ImageGcSettings | None = None,
                 max_concurrent_pulls: int = 3,
                 pull_timeout: float = 600.0,
                 signature_policy: Path | None = None,
                 skopeo: str = "skopeo") -> None:
        self.root = Path(root)
        self.images_dir = self.root / "images"
        self.layers_dir = self.root / "layers"
        self.tmp_dir = self.root / "tmp"
        self.platform = platform or Platform()
        self.gc = gc or ImageGcSettings()
        self.gc_runs = 0  # collections that removed something
        self.pull_timeout = pull_timeout
        self.signature_policy = signature_policy
        self.skopeo = skopeo
        self.pull_count = 0  # skopeo copies started (tests assert single-flight with it)
        self._insecure_hosts: set[str] = set()
        self._insecure_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in insecure_registries:
            entry = _registry_key(entry)
            try:
                self._insecure_networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self._insecure_hosts.add(entry)
        self._credentials = {_registry_key(k): v for k, v in (credentials or {}).items()}
        self._pull_slots = asyncio.Semaphore(max_concurrent_pulls)
        self._state_lock = asyncio.Lock()  # catalog and directory changes, GC decisions
        self._opening: asyncio.Future[None] | None = None
        self._opened = False
        self._catalog: dict[str, _Record] = {}  # key -> record, mirrors images/
        self._images: dict[str, Image] = {}  # key -> loaded Image
        self._layer_sizes: dict[str, int] = {}  # diff-id hex -> bytes
        self._pending_layers: Counter[str] = Counter()  # hex -> pulls about to use it
        self._inflight: dict[str, asyncio.Task[Image]] = {}
        self._layer_tasks: dict[str, asyncio.Task[tuple[bool, int]]] = {}

    # -------------------------------------------------------------- opening

    async def _open(self) -> None:
        if self._opened:
            return
        # Once, whoever asks first, and never abandoned half-way: a waiter
        # cancelled during the open used to let the next caller start a second
        # _open_sync while the first thread still ran -- and that one's sweep
        # of tmp/ removed the second caller's fresh pull directory.
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open_once())
        await asyncio.shield(self._opening)

    async def _open_once(self) -> None:
        try:
            self._catalog = await asyncio.to_thread(self._open_sync)
            self._opened = True
        except BaseException:
            self._opening = None  # let a later call try again
            raise

    def _open_sync(self) -> dict[str, _Record]:
        for directory in (self.images_dir, self.layers_dir, self.tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.tmp_dir, 0o700)
        for leftover in list(self.tmp_dir.iterdir()):  # a crash's debris
            _remove_path(leftover)
        catalog = {}
        for entry in list(self.images_dir.iterdir()):
            try:
                record = _Record.from_json((entry / "image.json").read_text())
                if _key(record.reference) != entry.name:
                    raise ValueError("key does not match reference")
                catalog[entry.name] = record
            except (OSError, ValueError, KeyError, TypeError) as error:
                log.warning("removing unreadable image directory %s: %s", entry, error)
                _remove_path(entry)
        return catalog

    async def close(self) -> None:
        """Cancel pulls in progress and wait for them (they clean up)."""
        tasks = [*self._inflight.values(), *self._layer_tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -------------------------------------------------------------- ensure

    async def ensure(self, reference: str) -> Image:
        """The image, pulled first if it is not on this node (policy: pull
        when missing; a tag already present is not looked up again). Any number
        of concurrent calls for one reference share one pull. Raises ImageError."""
        ref = parse_reference(reference)
        try:
            await self._open()
        except OSError as error:
            raise ImageError(f"pulling {ref} failed: image store unusable: {error}") from error
        key = _key(str(ref))
        cached = self._images.get(key)
        if cached is not None and key in self._catalog and all(
                layer.is_dir() for layer in cached.layers):
            self._touch(key)
            return cached
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._ensure(ref, key), name=f"image-ensure {ref}")
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task)

    def _finished(self, key: str, task: asyncio.Task[Image]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone

    async def _ensure(self, ref: Reference, key: str) -> Image:
        try:
            async with self._state_lock:
                image = await asyncio.to_thread(self._load, key)
            if image is None:
                image = await self._pull(ref, key)
        except OSError as error:  # the node's disk: full, read-only...
            raise ImageError(f"pulling {ref} failed: {error}") from error
        self._images[key] = image
        self._touch(key)
        return image

    def _touch(self, key: str) -> None:
        """Mark the image used now (the mtime of its image.json: LRU order for
        the collector, kept across agent restarts)."""
        with contextlib.suppress(OSError):
            os.utime(self.images_dir / key / "image.json")

    def _load(self, key: str) -> Image | None:
        record = self._catalog.get(key)
        if record is None:
            return None
        try:
            layers = tuple(self.layers_dir / _hex(d) for d in record.diff_ids)
            if not all(layer.is_dir() for layer in layers):
                return None
            config = json.loads((self.images_dir / key / "layout/blobs/sha256"
                                 / _hex(record.config_digest)).read_bytes())
        except (OSError, ValueError) as error:
            log.warning("image %s is damaged, pulling it again: %s", record.reference, error)
            return None
        return _image_from_config(record.reference, record.digest, layers, config)

    def _insecure(self, registry: str) -> bool:
        if registry in self._insecure_hosts or _is_loopback(registry):
            return True
        address = _host_address(registry)
        return address is not None and any(address in net for net in self._insecure_networks)

    def _skopeo_args(self, ref: Reference, layout: Path, authfile: Path) -> list[str]:
        args = [self.skopeo, "--override-os", self.platform.os,
                "--override-arch", self.platform.architecture]
        if self.platform.variant:
            args += ["--override-variant", self.platform.variant]
        if self.signature_policy is not None:
            args += ["--policy", str(self.signature_policy)]
        else:
            args.append("--insecure-policy")
        args += ["--tmpdir", str(self.tmp_dir),
                 "--command-timeout", f"{max(1, int(self.pull_timeout))}s",
                 "copy", "--quiet", "--src-authfile", str(authfile)]
        if self._insecure(ref.registry):
            args.append("--src-tls-verify=false")
        args += [f"docker://{ref}", f"oci:{layout}"]
        return args

    def _write_authfile(self, ref: Reference, path: Path) -> None:
        auths = {}
        creds = self._credentials.get(ref.registry)
        if creds is not None:
            token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
            auths[ref.registry] = {"auth": token}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump({"auths": auths}, file)

    async def _skopeo_copy(self, ref: Reference, work: Path) -> None:
        authfile = work / "auth.json"
        self._write_authfile(ref, authfile)
        try:
            process = await asyncio.create_subprocess_exec(
                *self._skopeo_args(ref, work / "layout", authfile),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE)
        except OSError as error:
            authfile.unlink()
            raise ImageError(f"pulling {ref} failed: cannot run skopeo: {error}") from error
        try:
            assert process.stderr is not None
            try:
                async with asyncio.timeout(self.pull_timeout + 10):
                    stderr = (await process.stderr.read())[-_MAX_STDERR:]
                    returncode = await process.wait()
            except TimeoutError:
                raise ImageError(f"pulling {ref} timed out after {self.pull_timeout:g}s") \
                    from None
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await asyncio.shield(process.wait())
            with contextlib.suppress(OSError):
                authfile.unlink()
        if returncode != 0:
            text = stderr.decode(errors="replace")
            if "context deadline exceeded" in text and "pinging" not in text:
                raise ImageError(f"pulling {ref} timed out after {self.pull_timeout:g}s")
            raise _classify(ref, text)

    def _read_layout(self, ref: Reference, layout: Path) -> _Pulled:
        def blob(digest: str) -> Path:
            return layout / "blobs/sha256" / _hex(digest)

        try:
            index = json.loads((layout / "index.json").read_bytes())
            descriptor = index["manifests"][-1]
            digest = str(descriptor["digest"])
            manifest = json.loads(blob(digest).read_bytes())
            config_digest = str(manifest["config"]["digest"])
            config = json.loads(blob(config_digest).read_bytes())
            layer_digests = [str(layer["digest"]) for layer in manifest["layers"]]
            diff_ids = tuple(str(d) for d in config["rootfs"]["diff_ids"])
            for diff_id in diff_ids:
                _hex(diff_id)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
            raise ImageError(f"image {ref} failed verification: unreadable manifest or "
                             f"config: {error}") from error
        if len(diff_ids) != len(layer_digests):
            raise ImageError(f"image {ref} failed verification: {len(layer_digests)} layers "
                             f"but {len(diff_ids)} diff-ids")
        image_os, arch = config.get("os"), config.get("architecture")
        if (image_os and image_os != self.platform.os) or (
                arch and arch != self.platform.architecture):
            raise ImageError(f"image {ref} is for {image_os}/{arch}, this node is "
                             f"{self.platform.os}/{self.platform.architecture}")
        size = sum(p.stat().st_size for p in (layout / "blobs/sha256").iterdir())
        record = _Record(str(ref), digest, config_digest, diff_ids, size)
        return _Pulled(record, config, tuple(blob(d) for d in layer_digests))

    async def _pull(self, ref: Reference, key: str) -> Image:
        async with self._pull_slots:
            work = Path(await asyncio.to_thread(
                tempfile.mkdtemp, prefix="pull-", dir=self.tmp_dir))
            created: list[str] = []
            pending: tuple[str, ...] = ()
            committed = False
            try:
                self.pull_count += 1
                started = time.monotonic()
                await self._skopeo_copy(ref, work)
                pulled = await asyncio.to_thread(self._read_layout, ref, work / "layout")
                pending = tuple(_hex(d) for d in pulled.record.diff_ids)
                self._pending_layers.update(pending)
                results = await asyncio.gather(
                    *(self._ensure_layer(ref, hexdigest, diff_id, blob)
                      for hexdigest, diff_id, blob
                      in zip(pending, pulled.record.diff_ids, pulled.blobs, strict=True)),
                    return_exceptions=True)
                created = [h for h, r in zip(pending, results, strict=True)
                           if isinstance(r, tuple) and r[0]]
                for result in results:
                    if isinstance(result, BaseException):
                        raise result
                # Shielded: once the rename starts, the catalog must learn of it.
                await asyncio.shield(self._commit(key, work, pulled.record))
                committed = True
                log.info("pulled %s (%s, %d layers) in %.2fs", ref, pulled.record.digest,
                         len(pending), time.monotonic() - started)
                layers = tuple(self.layers_dir / h for h in pending)
                return _image_from_config(str(ref), pulled.record.digest, layers,
                                          pulled.config)
            finally:
                self._pending_layers.subtract(pending)
                self._pending_layers += Counter()  # drop zero counts
                if not committed:
                    await asyncio.shield(self._discard(work, created))

    async def _commit(self, key: str, work: Path, record: _Record) -> None:
        """Make the pulled image visible (rename) and catalogue it."""
        def commit() -> Path | None:
            (work / "image.json").write_text(record.to_json())
            target = self.images_dir / key
            # An image pulled again because its layers had gone replaces the old copy.
            replaced = self._to_trash([target]) if target.exists() else None
            os.rename(work, target)
            return replaced

        async with self._state_lock:
            replaced = await asyncio.to_thread(commit)
            self._catalog[key] = record
        if replaced is not None:
            await asyncio.to_thread(_remove_path, replaced)

    async def _discard(self, work: Path, created: list[str]) -> None:
        """After a failed pull: its work dir, and the layers it unpacked that
        nothing else uses."""
        async with self._state_lock:
            used = self._used_layers()
            doomed = [h for h in created if h not in used]
            trash = await asyncio.to_thread(self._to_trash, [self.layers_dir / h for h in doomed])
            for hexdigest in doomed:
                self._layer_sizes.pop(hexdigest, None)
        await asyncio.to_thread(_remove_path, work)
        await asyncio.to_thread(_remove_path, trash)

    def _used_layers(self, exclude: Collection[str] = ()) -> set[str]:
        """Layers of catalogued images (but those in exclude) and of pulls and
        unpacks in progress."""
        used = {_hex(d) for key, record in self._catalog.items() if key not in exclude
                for d in record.diff_ids}
        used.update(h for h, n in self._pending_layers.items() if n > 0)
        used.update(self._layer_tasks)
        return used

    def _to_trash(self, paths: Collection[Path]) -> Path:
        """Rename paths into one new directory under tmp/ (atomic removal from
        view); the caller deletes that directory."""
        trash = Path(tempfile.mkdtemp(prefix="trash-", dir=self.tmp_dir))
        for number, path in enumerate(paths):
            with contextlib.suppress(FileNotFoundError):
                os.rename(path, trash / f"{number}-{path.name}")
        return trash

    async def _ensure_layer(self, ref: Reference, hexdigest: str, diff_id: str,
                            blob: Path) -> tuple[bool, int]:
        task = self._layer_tasks.get(hexdigest)
        if task is None:
            task = asyncio.create_task(self._unpack(hexdigest, diff_id, blob),
                                       name=f"image-unpack {diff_id}")
            self._layer_tasks[hexdigest] = task

            def done(finished: asyncio.Task[tuple[bool, int]]) -> None:
                if self._layer_tasks.get(hexdigest) is finished:
                    del self._layer_tasks[hexdigest]
                if not finished.cancelled():
                    finished.exception()

            task.add_done_callback(done)
        try:
            created, size = await asyncio.shield(task)
        except LayerError as error:
            if error.corrupt:
                raise ImageError(f"image {ref} failed verification: {error}") from None
            raise ImageError(f"image {ref} has an unsafe layer {diff_id}: {error}") from None
        except OSError as error:
            raise ImageError(f"unpacking image {ref} failed: {error}") from None
        return created, size

    async def _unpack(self, hexdigest: str, diff_id: str, blob: Path) -> tuple[bool, int]:
        target = self.layers_dir / hexdigest
        started = time.monotonic()
        created, size = await _in_thread(
            lambda cancel: unpack_layer(blob, diff_id, target, self.tmp_dir, cancel))
        if created:
            self._layer_sizes[hexdigest] = size
            log.info("unpacked layer %s (%d bytes) in %.2fs", diff_id, size,
                     time.monotonic() - started)
        return created, size

    # -------------------------------------------------------------- garbage

    async def disk_usage(self) -> int:
        """Bytes used by image layouts and unpacked layers."""
        await self._open()
        async with self._state_lock:
            return await asyncio.to_thread(self._usage)

    def _usage(self) -> int:
        total = sum(record.size for record in self._catalog.values())
        for entry in self.layers_dir.iterdir():
            size = self._layer_sizes.get(entry.name)
            if size is None:
                size = self._layer_sizes[entry.name] = tree_size(entry)
            total += size
        return total

    def _capacity(self) -> tuple[int, int]:
        """(usage, capacity) in bytes, as ImageGcSettings says."""
        if self.gc.max_bytes is not None:
            return self._usage(), self.gc.max_bytes
        info = os.statvfs(self.root)
        total = info.f_blocks * info.f_frsize
        return total - info.f_bfree * info.f_frsize, total

    async def collect_garbage(self, in_use: Collection[str], *,
                              in_use_layers: Collection[Sequence[Path]] = (),
                              force: bool = False) -> list[str]:
        """Remove images that no container uses, least recently used first,
        with the layers no remaining image has (see ImageGcSettings).

        Runs only when the usage is above the high watermark, or with
        force=True; then frees until the usage is at or below the low
        watermark (force: removes every image not in use). An image is in use
        when an entry of in_use normalises to its reference, or is a digest
        reference whose digest is the image's manifest digest, or when its
        layer directories (lowest first) are one of in_use_layers -- the
        layer chains of the containers' overlay mounts, which the runtime
        reports (RuncRuntime.mounted_layers()), so that a container being
        removed or not yet claimed after an agent restart keeps its image.
        Without force, images asked for less than gc.min_age seconds ago stay.
        Every layer of in_use_layers stays too. Images being pulled and their
        layers stay. Invalid references in in_use are ignored. Returns the
        normalised references removed."""
        await self._open()
        wanted: set[str] = set()
        wanted_digests: set[str] = set()
        for text in in_use:
            try:
                ref = parse_reference(text)
            except ImageError:
                continue
            wanted.add(str(ref))
            if ref.digest is not None:
                wanted_digests.add(ref.digest)
        chains = {tuple(str(p) for p in chain) for chain in in_use_layers}
        return await asyncio.shield(self._collect(wanted, wanted_digests, chains, force))

    def _gc_inputs(self, wanted: set[str], wanted_digests: set[str],
                   chains: set[tuple[str, ...]], force: bool) -> tuple[list[GcImage],
                                                                       dict[str, int], set[str]]:
        young = float("inf") if force else time.time() - self.gc.min_age
        images = []
        for key, record in self._catalog.items():
            layers = tuple(_hex(d) for d in record.diff_ids)
            chain = tuple(str(self.layers_dir / h) for h in layers)
            try:
                last_used = (self.images_dir / key / "image.json").stat().st_mtime
            except OSError:
                last_used = 0.0
            in_use = (record.reference in wanted or record.digest in wanted_digests
                      or key in self._inflight or chain in chains or last_used > young)
            images.append(GcImage(key, record.size, layers, last_used, in_use))
        sizes = {}
        for entry in self.layers_dir.iterdir():
            size = self._layer_sizes.get(entry.name)
            if size is None:
                size = self._layer_sizes[entry.name] = tree_size(entry)
            sizes[entry.name] = size
        protected = self._used_layers(exclude=self._catalog.keys())  # pulls in progress
        prefix = str(self.layers_dir) + "/"
        protected.update(p.removeprefix(prefix) for chain in chains for p in chain
                         if p.startswith(prefix))
        return images, sizes, protected

    async def _collect(self, wanted: set[str], wanted_digests: set[str],
                       chains: set[tuple[str, ...]], force: bool) -> list[str]:
        async with self._state_lock:
            usage, capacity = await asyncio.to_thread(self._capacity)
            high = capacity * self.gc.high_percent / 100
            if not force and usage <= high:
                return []
            target = 0 if force else int(capacity * self.gc.low_percent / 100)
            images, sizes, protected = await asyncio.to_thread(
                self._gc_inputs, wanted, wanted_digests, chains, force)
            plan = plan_gc(images, sizes, protected, usage, -1 if force else target)
            doomed = {key: self._catalog[key] for key in plan.images}
            paths = [self.images_dir / key for key in plan.images]
            paths += [self.layers_dir / h for h in plan.layers]
            trash = await asyncio.to_thread(self._to_trash, paths)
            for key in doomed:
                del self._catalog[key]
                self._images.pop(key, None)
            for hexdigest in plan.layers:
                self._layer_sizes.pop(hexdigest, None)
        await asyncio.to_thread(_remove_path, trash)
        removed = sorted(record.reference for record in doomed.values())
        if removed or plan.layers:
            self.gc_runs += 1
            log.info("image gc: usage %d bytes above %.0f: removed %d images and %d layers "
                     "(%d bytes), low mark %d", usage, high, len(removed), len(plan.layers),
                     plan.freed, target)
        elif not force:
            log.warning("image gc: usage %d bytes above %.0f but nothing may go "
                        "(every image in use)", usage, high)
        return removed


InUse = tuple[Collection[str], Collection[Sequence[Path]]]


class ImageGarbageCollector:
    """The periodic collection: every gc.interval seconds and whenever kicked
    (after a container is removed), asks `in_use` what the node's containers
    use -- (image references, overlay layer chains) -- and collects. Run it
    as a supervised loop (swarm.api.loops.start_supervised)."""

    def __init__(self, store: ImageStore, in_use: Callable[[], Awaitable[InUse]]) -> None:
        self.store = store
        self.in_use = in_use
        self._kicked = asyncio.Event()

    def kick(self) -> None:
        self._kicked.set()

    async def collect_once(self) -> list[str]:
        references, chains = await self.in_use()
        return await self.store.collect_garbage(references, in_use_layers=chains)

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kicked.wait(), self.store.gc.interval)
            self._kicked.clear()
            try:
                await self.collect_once()
            except OSError as error:
                log.warning("image gc failed: %s", error)


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
