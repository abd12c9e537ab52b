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
registry's token or basic auth. A reference with a digest (`name:tag@sha256:…`,
as swarmctl pins images) is pulled by the digest alone. Credentials reach
skopeo in an auth file that is a memfd (memfd_create: no path on any file
system, gone when both processes close it), named on its command line as
/dev/fd/N: neither the command line nor the store's logs ever hold them.
Layers are then unpacked here (gzip or plain tar), keyed by their diff-id,
which is verified while unpacking. OCI whiteouts become overlayfs whiteouts: `.wh.NAME` a 0/0 character device
NAME, `.wh..wh..opq` the xattr trusted.overlay.opaque=y on its directory.
Unpacking needs root (ownership, device nodes, trusted.* xattrs).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from swarm.api.registryauth import Credential
from swarm.api.telemetry import NO_TELEMETRY, Telemetry

from .archive import LayerError, tree_size, unpack_layer
from .config import Image, image_from_config
from .errors import ImageError
from .gc import GcImage, ImageGcSettings, plan_gc
from .platforms import Platform
from .reference import (
    Reference,
    is_loopback_registry,
    parse_reference,
    registry_address,
    registry_key,
)
from .skopeo import MAX_STDERR, classify_error

log = logging.getLogger(__name__)

T = TypeVar("T")


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
    password) for basic auth, the node's own (swarm-agent
    --registry-auth-file) -- handed to skopeo in a memfd auth file that lives
    only during the pull, never on its command line; ensure() may bring a
    task's own for its registry, which win; registries without any are
    accessed anonymously (the host's own auth files are not read).
    platform: the os/architecture whose manifest skopeo chooses out of an
    image index. At most max_concurrent_pulls skopeo processes run at once;
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
        self.telemetry: Telemetry = NO_TELEMETRY  # metrics (agent/metrics.py)
        self._insecure_hosts: set[str] = set()
        self._insecure_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in insecure_registries:
            entry = registry_key(entry)
            try:
                self._insecure_networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self._insecure_hosts.add(entry)
        self._credentials = {registry_key(k): v for k, v in (credentials or {}).items()}
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

    async def ensure(self, reference: str, credential: Credential | None = None) -> Image:
        """The image, pulled first if it is not on this node (policy: pull
        when missing; a tag already present is not looked up again). Any number
        of concurrent calls for one reference share one pull (with the first
        caller's credential). credential: a task's own for the image's
        registry (its service's, --with-registry-auth); ignored for another
        registry. Raises ImageError."""
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
            auth = None
            if credential is not None and credential.registry == ref.registry:
                auth = (credential.username, credential.password)
            task = asyncio.create_task(self._ensure(ref, key, auth), name=f"image-ensure {ref}")
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task)

    def _finished(self, key: str, task: asyncio.Task[Image]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone

    async def _ensure(self, ref: Reference, key: str, auth: tuple[str, str] | None) -> Image:
        try:
            async with self._state_lock:
                image = await asyncio.to_thread(self._load, key)
            if image is None:
                image = await self._pull(ref, key, auth)
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
        return image_from_config(record.reference, record.digest, layers, config)

    def _insecure(self, registry: str) -> bool:
        if registry in self._insecure_hosts or is_loopback_registry(registry):
            return True
        address = registry_address(registry)
        return address is not None and any(address in net for net in self._insecure_networks)

    def _skopeo_args(self, ref: Reference, layout: Path, authfile: str) -> list[str]:
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
                 "copy", "--quiet", "--src-authfile", authfile]
        if self._insecure(ref.registry):
            args.append("--src-tls-verify=false")
        args += [f"docker://{ref}", f"oci:{layout}"]
        return args

    def _authfile(self, ref: Reference, auth: tuple[str, str] | None) -> int:
        """A memfd holding the auth file for this pull (always one, empty
        without credentials: skopeo then reads no file of the host's)."""
        auths = {}
        creds = auth or self._credentials.get(ref.registry)
        if creds is not None:
            token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
            auths[ref.registry] = {"auth": token}
        fd = os.memfd_create("swarm-pull-auth", os.MFD_CLOEXEC)
        try:
            os.write(fd, json.dumps({"auths": auths}).encode())
        except BaseException:
            os.close(fd)
            raise
        return fd

    async def _skopeo_copy(self, ref: Reference, work: Path,
                           auth: tuple[str, str] | None = None) -> None:
        authfd = self._authfile(ref, auth)
        try:
            # /dev/fd/N opens the memfd afresh (offset 0) each time skopeo reads it.
            process = await asyncio.create_subprocess_exec(
                *self._skopeo_args(ref, work / "layout", f"/dev/fd/{authfd}"),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, pass_fds=(authfd,))
        except OSError as error:
            raise ImageError(f"pulling {ref} failed: cannot run skopeo: {error}") from error
        finally:
            os.close(authfd)  # skopeo holds its own copy
        try:
            assert process.stderr is not None
            try:
                async with asyncio.timeout(self.pull_timeout + 10):
                    stderr = (await process.stderr.read())[-MAX_STDERR:]
                    returncode = await process.wait()
            except TimeoutError:
                raise ImageError(f"pulling {ref} timed out after {self.pull_timeout:g}s") \
                    from None
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await asyncio.shield(process.wait())
        if returncode != 0:
            text = stderr.decode(errors="replace")
            if "context deadline exceeded" in text and "pinging" not in text:
                raise ImageError(f"pulling {ref} timed out after {self.pull_timeout:g}s")
            raise classify_error(ref, text)

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

    async def _pull(self, ref: Reference, key: str, auth: tuple[str, str] | None) -> Image:
        async with self._pull_slots:
            work = Path(await asyncio.to_thread(
                tempfile.mkdtemp, prefix="pull-", dir=self.tmp_dir))
            created: list[str] = []
            pending: tuple[str, ...] = ()
            committed = False
            try:
                self.pull_count += 1
                started = time.monotonic()
                await self._skopeo_copy(ref, work, auth)
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
                self.telemetry.observe("swarm_agent_image_pull_seconds",
                                       time.monotonic() - started)
                self.telemetry.inc("swarm_agent_image_pull_bytes_total",
                                   amount=pulled.record.size)
                layers = tuple(self.layers_dir / h for h in pending)
                return image_from_config(str(ref), pulled.record.digest, layers,
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


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
