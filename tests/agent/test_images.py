"""agent/images/ against a real registry (tests/registry.py), real skopeo
and real unpacking as root."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import stat
import subprocess
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from swarm.agent.images import (
    Healthcheck,
    Image,
    ImageError,
    ImageGcSettings,
    ImageStore,
    LayerError,
    Platform,
    normalize_reference,
    parse_reference,
    unpack_layer,
)
from tests.agent.conftest import require_root_and_tools
from tests.registry import (
    PATH_ENV,
    RegistryServer,
    bcrypt_hash,
    build_busybox_image,
    build_image,
    build_index_image,
    busybox_entries,
    dir_entry,
    file_entry,
    hardlink_entry,
    layer_tar,
    oci_architecture,
    symlink_entry,
)


@pytest.fixture
def needs_root() -> None:
    require_root_and_tools()


@pytest.fixture
async def store(tmp_path: Path, needs_root: None) -> AsyncIterator[ImageStore]:
    instance = ImageStore(tmp_path / "images", gc=ImageGcSettings(max_bytes=2 * 1024**3))
    try:
        yield instance
    finally:
        await instance.close()


def leftovers(root: Path) -> list[str]:
    """Everything under the store's root but its (empty) base directories."""
    base = {"images", "layers", "tmp"}
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if str(p.relative_to(root)) not in base)


def name_of(reference: str) -> str:
    return reference.split("/", 1)[1].rsplit(":", 1)[0]


# ------------------------------------------------------------------ references


@pytest.mark.parametrize(("text", "normal"), [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("user/app", "docker.io/user/app:latest"),
    ("index.docker.io/busybox", "docker.io/library/busybox:latest"),
    ("127.0.0.1:5000/web:2", "127.0.0.1:5000/web:2"),
    ("localhost/team/web", "localhost/team/web:latest"),
    ("registry.example.com/a/b/c:v1.0-rc_1", "registry.example.com/a/b/c:v1.0-rc_1"),
    ("busybox@sha256:" + "a" * 64, "docker.io/library/busybox@sha256:" + "a" * 64),
    ("busybox:1@sha256:" + "b" * 64, "docker.io/library/busybox@sha256:" + "b" * 64),
    ("[::1]:5000/web", "[::1]:5000/web:latest"),
])
def test_references_normalise_like_docker(text: str, normal: str) -> None:
    assert normalize_reference(text) == normal
    assert normalize_reference(normal) == normal


@pytest.mark.parametrize("text", [
    "", "Busybox", "-x", "busybox:", "busybox@sha256:zz", "a//b", "a/../b", "a/./b",
    "busybox:-tag", "host:5000/", " busybox", "busybox:" + "t" * 129,
])
def test_invalid_references_are_rejected(text: str) -> None:
    with pytest.raises(ImageError, match="invalid image reference"):
        parse_reference(text)


# ------------------------------------------------------------------ pulling


async def test_pull_unpacks_and_parses_config(store: ImageStore, registry: RegistryServer,
                                              busybox_ref: str) -> None:
    started = asyncio.get_running_loop().time()
    image = await store.ensure(busybox_ref)
    elapsed = asyncio.get_running_loop().time() - started
    print(f"busybox pull + unpack: {elapsed:.3f}s")

    assert image.reference == busybox_ref
    assert image.digest == registry.manifest_digest(name_of(busybox_ref), "latest")
    assert image.cmd == ("sh",)
    assert image.env == (PATH_ENV,)
    assert image.entrypoint == ()
    assert image.healthcheck is None
    assert len(image.layers) == 1
    layer = image.layers[0]
    assert layer.parent == store.layers_dir
    assert image.lowerdir == str(layer)

    busybox = os.lstat(layer / "bin/busybox")
    assert stat.S_ISREG(busybox.st_mode)
    assert stat.S_IMODE(busybox.st_mode) == 0o755
    assert busybox.st_size == os.stat("/bin/busybox").st_size
    assert os.readlink(layer / "bin/sh") == "busybox"
    assert stat.S_IMODE(os.lstat(layer / "tmp").st_mode) == 0o1777
    assert stat.S_IMODE(os.lstat(layer / "root").st_mode) == 0o700
    www = os.lstat(layer / "home/www")
    assert (www.st_uid, www.st_gid) == (1000, 1000)
    assert b"nobody:x:65534:65534" in (layer / "etc/passwd").read_bytes()
    # Runs: the unpacked busybox is a working userland.
    process = await asyncio.create_subprocess_exec(
        str(layer / "bin/busybox"), "echo", "hi", stdout=asyncio.subprocess.PIPE)
    stdout, _ = await process.communicate()
    assert stdout == b"hi\n"
    # Nothing in progress is left behind.
    assert list(store.tmp_dir.iterdir()) == []
    # The runtime's view of it.
    assert image.runtime_input().layers == image.layers
    assert image.runtime_input().config.cmd == ("sh",)


async def test_reference_without_tag_is_latest(store: ImageStore, busybox_ref: str) -> None:
    short = busybox_ref.removesuffix(":latest")
    first = await store.ensure(short)
    second = await store.ensure(busybox_ref)
    assert first == second
    assert first.reference == busybox_ref
    assert store.pull_count == 1


async def test_image_config_fields(store: ImageStore, registry: RegistryServer) -> None:
    config = {
        "Entrypoint": ["/bin/httpd", "-f"], "Cmd": ["-p", "8080"], "Env": [PATH_ENV, "A=1"],
        "WorkingDir": "/var/www", "User": "www", "ExposedPorts": {"8080/tcp": {}, "53/udp": {}},
        "StopSignal": "SIGQUIT", "Labels": {"tier": "web"},
        "Healthcheck": {"Test": ["CMD-SHELL", "wget -q -O- localhost:8080"],
                        "Interval": 2_000_000_000, "Timeout": 500_000_000,
                        "StartPeriod": 1_000_000_000, "Retries": 4},
    }
    reference = build_busybox_image(registry.addr, "configured", "1", config=config)
    image = await store.ensure(reference)
    assert image.entrypoint == ("/bin/httpd", "-f")
    assert image.cmd == ("-p", "8080")
    assert image.env == (PATH_ENV, "A=1")
    assert image.working_dir == "/var/www"
    assert image.user == "www"
    assert image.exposed_ports == ("53/udp", "8080/tcp")
    assert image.stop_signal == "SIGQUIT"
    assert image.labels == (("tier", "web"),)
    assert image.healthcheck == Healthcheck(
        test=("CMD-SHELL", "wget -q -O- localhost:8080"), interval=2.0, timeout=0.5,
        start_period=1.0, retries=4)


async def test_concurrent_ensure_pulls_once(store: ImageStore, busybox_ref: str) -> None:
    images = await asyncio.gather(*(store.ensure(busybox_ref) for _ in range(50)))
    assert store.pull_count == 1
    assert all(image == images[0] for image in images)
    assert len(list(store.layers_dir.iterdir())) == 1
    assert len(list(store.images_dir.iterdir())) == 1


async def test_present_image_is_not_pulled_again(tmp_path: Path, store: ImageStore,
                                                 busybox_ref: str) -> None:
    first = await store.ensure(busybox_ref)
    assert await store.ensure(busybox_ref) == first
    assert store.pull_count == 1
    # A restarted agent finds it on disk.
    restarted = ImageStore(store.root)
    try:
        assert await restarted.ensure(busybox_ref) == first
        assert restarted.pull_count == 0
    finally:
        await restarted.close()


async def test_missing_layer_dir_means_pull_again(store: ImageStore, busybox_ref: str) -> None:
    image = await store.ensure(busybox_ref)
    os.rename(image.layers[0], store.tmp_dir / "gone")
    restarted = ImageStore(store.root)  # empties tmp/
    try:
        again = await restarted.ensure(busybox_ref)
        assert again == image
        assert again.layers[0].is_dir()
        assert restarted.pull_count == 1
        assert list(restarted.tmp_dir.iterdir()) == []
    finally:
        await restarted.close()


async def test_shared_layer_is_unpacked_once(store: ImageStore, registry: RegistryServer,
                                             busybox_ref: str) -> None:
    same_content = build_busybox_image(registry.addr, "busybox-copy", "v1")
    first, second = await asyncio.gather(store.ensure(busybox_ref), store.ensure(same_content))
    assert store.pull_count == 2
    assert first.layers == second.layers
    assert len(list(store.layers_dir.iterdir())) == 1


async def test_uncompressed_layers(store: ImageStore, registry: RegistryServer) -> None:
    reference = build_image(registry.addr, "plain", "latest", [busybox_entries()],
                            compress=False)
    image = await store.ensure(reference)
    assert (image.layers[0] / "bin/busybox").is_file()


async def test_image_index_resolves_to_this_platform(store: ImageStore,
                                                     registry: RegistryServer) -> None:
    reference = build_index_image(registry.addr)
    image = await store.ensure(reference)
    assert (image.layers[0] / "platform").read_bytes() == b"native"
    index = registry.manifest("multiarch", "latest")
    native = [m for m in index["manifests"]
              if m["platform"]["architecture"] == oci_architecture()]
    assert image.digest == native[0]["digest"]


async def test_other_platform_is_chosen_by_override(tmp_path: Path, needs_root: None,
                                                    registry: RegistryServer) -> None:
    reference = build_index_image(registry.addr, "multiarch2")
    foreign = "arm64" if oci_architecture() != "arm64" else "amd64"
    other = ImageStore(tmp_path / "other", platform=Platform("linux", foreign))
    try:
        image = await other.ensure(reference)
        assert (image.layers[0] / "platform").read_bytes() == b"foreign"
    finally:
        await other.close()


async def test_image_for_another_architecture_is_refused(store: ImageStore,
                                                         registry: RegistryServer) -> None:
    foreign = "arm64" if oci_architecture() != "arm64" else "amd64"
    reference = build_image(registry.addr, "foreign", "latest", [busybox_entries()],
                            architecture=foreign)
    with pytest.raises(ImageError, match=f"is for linux/{foreign}"):
        await store.ensure(reference)
    assert leftovers(store.root) == []


# ------------------------------------------------------------------ whiteouts


async def test_whiteouts_become_overlay_whiteouts(store: ImageStore, layered_ref: str,
                                                  tmp_path: Path) -> None:
    image = await store.ensure(layered_ref)
    assert len(image.layers) == 2
    lower, upper = image.layers
    assert image.lowerdir == f"{upper}:{lower}"

    for name in ("remove-me", "removed-dir"):
        st = os.lstat(upper / "data" / name)
        assert stat.S_ISCHR(st.st_mode), name
        assert st.st_rdev == os.makedev(0, 0)
        assert not (upper / "data" / f".wh.{name}").exists()
    assert os.getxattr(upper / "data/opaque", "trusted.overlay.opaque") == b"y"
    assert not (upper / "data/opaque/.wh..wh..opq").exists()
    assert (upper / "data/opaque/new").read_bytes() == b"new\n"
    added = os.lstat(upper / "data/added")
    assert stat.S_IMODE(added.st_mode) == 0o600
    assert (added.st_uid, added.st_gid) == (65534, 65534)
    with pytest.raises(OSError):  # noqa: PT011 - ENODATA: only the opaque dir has it
        os.getxattr(upper / "data", "trusted.overlay.opaque")

    # The lower layer: set-id bits after chown, hardlinks, symlinks as-is.
    suid = os.lstat(lower / "data/suid")
    assert stat.S_IMODE(suid.st_mode) == 0o4755
    assert (suid.st_uid, suid.st_gid) == (1000, 1000)
    assert os.lstat(lower / "data/hardlink").st_ino == os.lstat(lower / "data/linked").st_ino
    assert os.readlink(lower / "data/abs-link") == "/etc/passwd"
    assert stat.S_IMODE(os.lstat(lower / "data/opaque").st_mode) == 0o750

    # What the container sees: mount the layers as overlayfs does for it.
    merged = tmp_path / "merged"
    merged.mkdir()
    await asyncio.to_thread(subprocess.run, ["mount", "-t", "overlay", "overlay", "-o",
                            f"lowerdir={image.lowerdir}", str(merged)], check=True)
    try:
        assert sorted(os.listdir(merged / "data")) == [
            "abs-link", "added", "hardlink", "keep", "linked", "opaque", "suid"]
        assert os.listdir(merged / "data/opaque") == ["new"]
        assert (merged / "bin/busybox").is_file()
    finally:
        await asyncio.to_thread(subprocess.run, ["umount", str(merged)], check=True)


# ------------------------------------------------------------------ failures


async def test_missing_tag_and_repository(store: ImageStore, registry: RegistryServer,
                                          busybox_ref: str) -> None:
    missing_tag = busybox_ref.replace(":latest", ":nope")
    with pytest.raises(ImageError) as caught:
        await store.ensure(missing_tag)
    assert str(caught.value) == f"image not found: {missing_tag}"
    with pytest.raises(ImageError) as caught:
        await store.ensure(f"{registry.addr}/web:2")
    assert str(caught.value) == f"image not found: {registry.addr}/web:2"
    assert leftovers(store.root) == []
    # A failure is not remembered: the next call tries again.
    with pytest.raises(ImageError):
        await store.ensure(missing_tag)
    assert store.pull_count == 3


async def test_registry_down(store: ImageStore, tmp_path: Path) -> None:
    stopped = RegistryServer.start(tmp_path)
    stopped.stop()
    with pytest.raises(ImageError) as caught:
        await store.ensure(f"{stopped.addr}/busybox")
    message = str(caught.value)
    assert message.startswith(f"registry {stopped.addr} unreachable: ")
    assert "connection refused" in message
    assert "\n" not in message
    assert leftovers(store.root) == []


async def test_tampered_layer_blob_fails_verification(store: ImageStore,
                                                      registry: RegistryServer) -> None:
    # Content of its own: a blob no other test image shares.
    reference = build_busybox_image(registry.addr, "tampered", extra_files={
        "/etc/tampered": b"unique to this test\n"})
    layer = registry.manifest("tampered", "latest")["layers"][0]["digest"]
    blob = registry.blob_path(layer)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(ImageError) as caught:
        await store.ensure(reference)
    assert str(caught.value).startswith(f"image {reference} failed verification: ")
    assert "Digest did not match" in str(caught.value)
    assert leftovers(store.root) == []


async def test_tampered_config_blob_fails_verification(store: ImageStore,
                                                       registry: RegistryServer) -> None:
    reference = build_busybox_image(registry.addr, "tampered-config",
                                    config={"Cmd": ["sh"], "Env": ["UNIQUE=config"]})
    config = registry.manifest("tampered-config", "latest")["config"]["digest"]
    blob = registry.blob_path(config)
    blob.write_bytes(blob.read_bytes().replace(b"UNIQUE=config", b"UNIQUE=CONFIG"))
    with pytest.raises(ImageError, match="failed verification: "):
        await store.ensure(reference)
    assert leftovers(store.root) == []


async def test_unsafe_layer_is_rejected_and_cleaned_up(store: ImageStore,
                                                       registry: RegistryServer) -> None:
    # The first layer is fine and gets unpacked; the second escapes. Neither stays.
    evil = [symlink_entry("escape", "/tmp"), file_entry("escape/owned", b"x")]
    reference = build_image(registry.addr, "evil", "latest",
                            [busybox_entries({"/evil-base": b"1"}), evil])
    with pytest.raises(ImageError, match=r"has an unsafe layer .*beneath the symlink 'escape'"):
        await store.ensure(reference)
    assert "owned" not in os.listdir("/tmp")
    assert leftovers(store.root) == []


@pytest.fixture
def auth_registry(tmp_path: Path, needs_root: None) -> Iterator[RegistryServer]:
    if bcrypt_hash("probe") is None and not os.environ.get("CI"):
        pytest.skip("libcrypt has no bcrypt for the registry's htpasswd file")
    server = RegistryServer.start(tmp_path, credentials=("alice", "s3cret"))
    try:
        yield server
    finally:
        server.stop()


async def test_basic_auth(tmp_path: Path, auth_registry: RegistryServer) -> None:
    reference = build_busybox_image(auth_registry.addr, credentials=("alice", "s3cret"))
    for credentials in ({}, {auth_registry.addr: ("alice", "wrong")}):
        anonymous = ImageStore(tmp_path / "denied", credentials=credentials)
        try:
            with pytest.raises(ImageError) as caught:
                await anonymous.ensure(reference)
            assert str(caught.value).startswith(f"access to {reference} denied")
            assert leftovers(anonymous.root) == []
        finally:
            await anonymous.close()
    allowed = ImageStore(tmp_path / "allowed",
                         credentials={auth_registry.addr: ("alice", "s3cret")})
    try:
        image = await allowed.ensure(reference)
        assert image.cmd == ("sh",)
        # The credentials never stay on disk.
        assert not [p for p in allowed.root.rglob("auth.json")]
    finally:
        await allowed.close()


async def test_cancelled_waiter_does_not_cancel_the_pull(store: ImageStore,
                                                         busybox_ref: str) -> None:
    impatient = asyncio.create_task(store.ensure(busybox_ref))
    patient = asyncio.create_task(store.ensure(busybox_ref))
    await asyncio.sleep(0)
    impatient.cancel()
    image = await patient
    assert impatient.cancelled()
    assert image.layers[0].is_dir()
    assert store.pull_count == 1


async def test_close_cancels_a_pull_and_leaves_nothing(store: ImageStore,
                                                       busybox_ref: str) -> None:
    pulling = asyncio.create_task(store.ensure(busybox_ref))
    await asyncio.sleep(0.01)  # skopeo is running
    await store.close()
    with pytest.raises(asyncio.CancelledError):
        await pulling
    assert leftovers(store.root) == []


# ------------------------------------------------------------------ garbage collection


async def test_gc_removes_unused_images_and_keeps_used(store: ImageStore,
                                                       registry: RegistryServer,
                                                       busybox_ref: str,
                                                       layered_ref: str) -> None:
    shares_layer = build_busybox_image(registry.addr, "busybox-shared", "v1")
    used = await store.ensure(busybox_ref)
    sharing = await store.ensure(shares_layer)
    layered = await store.ensure(layered_ref)
    assert sharing.layers == used.layers

    # Below the threshold (2 GiB by default) nothing happens.
    assert await store.collect_garbage([busybox_ref]) == []
    assert len(list(store.images_dir.iterdir())) == 3

    removed = await store.collect_garbage([busybox_ref.removesuffix(":latest")], force=True)
    assert removed == sorted([shares_layer, layered_ref])
    assert used.layers[0].is_dir()  # shared with the removed busybox-shared: stays
    assert not any(layer.exists() for layer in layered.layers)
    assert len(list(store.images_dir.iterdir())) == 1
    assert list(store.tmp_dir.iterdir()) == []
    # The kept one is still served without a pull; a removed one is pulled again.
    count = store.pull_count
    assert await store.ensure(busybox_ref) == used
    assert store.pull_count == count
    assert await store.ensure(layered_ref) == layered
    assert store.pull_count == count + 1


async def test_gc_runs_above_threshold_and_matches_digests(tmp_path: Path, needs_root: None,
                                                           busybox_ref: str) -> None:
    small = ImageStore(tmp_path / "small", gc=ImageGcSettings(max_bytes=1, low_percent=0, min_age=0))
    try:
        image = await small.ensure(busybox_ref)
        assert await small.disk_usage() > 1
        name = busybox_ref.rsplit(":", 1)[0]
        assert await small.collect_garbage([f"{name}@{image.digest}"]) == []
        assert await small.collect_garbage(["not a reference!"]) == [busybox_ref]
        assert leftovers(small.root) == []
        assert await small.disk_usage() == 0
    finally:
        await small.close()


# ------------------------------------------------------------------ unpacking, directly


def _blob(tmp_path: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]]
          ) -> tuple[Path, str]:
    data = layer_tar(entries)
    blob = tmp_path / "blob"
    blob.write_bytes(data)
    return blob, f"sha256:{hashlib.sha256(data).hexdigest()}"


def _raw(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tuple[
        tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, b"" if kind == tarfile.REGTYPE else None


@pytest.mark.parametrize(("entries", "message"), [
    ([_raw("/etc/passwd")], "absolute path"),
    ([_raw("../outside")], "leaves the layer"),
    ([_raw("a/../../outside")], "leaves the layer"),
    ([symlink_entry("link", "/"), _raw("link/etc/owned")], "beneath the symlink"),
    ([symlink_entry("link", ".."), dir_entry("link/x")], "beneath the symlink"),
    ([_raw("hard", tarfile.LNKTYPE, "../../etc/passwd")], "leaves the layer"),
    ([_raw("hard", tarfile.LNKTYPE, "/etc/passwd")], "absolute path"),
    ([_raw("hard", tarfile.LNKTYPE, "missing")], "not an earlier file"),
    ([file_entry("f", b"1"), _raw("f/child")], "beneath the file"),
])
def test_unsafe_entries_are_rejected(tmp_path: Path, needs_root: None,
                                     entries: list[tuple[tarfile.TarInfo, bytes | None]],
                                     message: str) -> None:
    blob, diff_id = _blob(tmp_path, entries)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    target = tmp_path / "layer"
    with pytest.raises(LayerError, match=message) as caught:
        unpack_layer(blob, diff_id, target, scratch)
    assert not caught.value.corrupt
    assert not target.exists()
    assert list(scratch.iterdir()) == []


def test_diff_id_mismatch_and_corrupt_gzip(tmp_path: Path, needs_root: None) -> None:
    blob, _ = _blob(tmp_path, [file_entry("f", b"1")])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(LayerError, match="diff-id mismatch") as caught:
        unpack_layer(blob, "sha256:" + "0" * 64, tmp_path / "layer", scratch)
    assert caught.value.corrupt
    broken = bytearray(gzip.compress(blob.read_bytes()))
    broken[-6] ^= 0xFF  # the CRC
    blob.write_bytes(bytes(broken))
    with pytest.raises(LayerError, match="corrupt") as caught:
        unpack_layer(blob, "sha256:" + "0" * 64, tmp_path / "layer", scratch)
    assert caught.value.corrupt
    assert not (tmp_path / "layer").exists()
    assert list(scratch.iterdir()) == []


def test_hardlinks_and_replacements_within_a_layer(tmp_path: Path, needs_root: None) -> None:
    entries = [
        dir_entry("d", 0o711, 5, 6),
        file_entry("d/a", b"first"),
        hardlink_entry("d/b", "d/a"),
        file_entry("d/a", b"second"),  # replaces a; b keeps the old inode
        file_entry("x/implicit/parent", b"p"),  # parents made as 0755 root dirs
        dir_entry("./", 0o755),
    ]
    blob, diff_id = _blob(tmp_path, entries)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    target = tmp_path / "layer"
    created, size = unpack_layer(blob, diff_id, target, scratch)
    assert created
    assert size == len(b"first") + len(b"second") + len(b"p")
    assert (target / "d/a").read_bytes() == b"second"
    assert (target / "d/b").read_bytes() == b"first"
    d = os.lstat(target / "d")
    assert (stat.S_IMODE(d.st_mode), d.st_uid, d.st_gid) == (0o711, 5, 6)
    assert stat.S_IMODE(os.lstat(target / "x/implicit").st_mode) == 0o755
    # Unpacking again is a no-op: the layer is there.
    assert unpack_layer(blob, diff_id, target, scratch) == (False, 0)


def test_image_is_hashable_and_frozen() -> None:
    image = Image("r", "sha256:x", (Path("/a"), Path("/b")))
    assert image.lowerdir == "/b:/a"
    assert hash(image) == hash(Image("r", "sha256:x", (Path("/a"), Path("/b"))))
    with pytest.raises(AttributeError):
        image.digest = "y"  # type: ignore[misc]

