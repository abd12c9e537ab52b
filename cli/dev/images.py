"""OCI images built by hand, in Python, and pushed with skopeo: the local
cluster's demo image and the test suite's images.

An image is assembled as an OCI image layout (tar, gzip, JSON, sha256) from
layers made of the `*_entry` helpers; `busybox_entries()` is a small rootfs
around Debian's static busybox (the `busybox-static` package). Layers are
reproducible (fixed mtimes): the same content always has the same digest.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

BUSYBOX_BINARY = "/bin/busybox"
BUSYBOX_APPLETS = (
    "sh", "ash", "ls", "cat", "echo", "sleep", "httpd", "wget", "nc", "ping", "true", "false",
    "id", "hostname", "env", "ps", "kill", "mkdir", "rm", "cp", "mv", "touch", "grep", "sed",
    "head", "tail", "wc", "test", "[", "printf", "pwd", "date", "stat", "whoami", "ip",
    "ifconfig", "nslookup", "chmod", "chown", "ln", "readlink", "uname", "tee", "mount",
    "timeout", "seq", "sort", "tr", "cut", "awk", "find", "xargs", "du", "df", "dd", "yes",
    "usleep", "which",
)
PATH_ENV = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"
PASSWD = (b"root:x:0:0:root:/root:/bin/sh\n"
          b"www:x:1000:1000:www:/home/www:/bin/sh\n"
          b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
GROUP = b"root:x:0:\nwww:x:1000:\nnogroup:x:65534:\n"
FIXED_MTIME = 1_700_000_000  # reproducible layers: same content, same digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


def oci_architecture() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        machine, machine)


# ------------------------------------------------------------------ layers

Entry = tuple[tarfile.TarInfo, bytes | None]


def tar_info(path: str, kind: bytes, mode: int, uid: int, gid: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path.lstrip("/"))
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    info.mtime = FIXED_MTIME
    return info


def dir_entry(path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Entry:
    return tar_info(path, tarfile.DIRTYPE, mode, uid, gid), None


def file_entry(path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
    info = tar_info(path, tarfile.REGTYPE, mode, uid, gid)
    info.size = len(data)
    return info, data


def symlink_entry(path: str, target: str) -> Entry:
    info = tar_info(path, tarfile.SYMTYPE, 0o777, 0, 0)
    info.linkname = target
    return info, None


def hardlink_entry(path: str, target: str) -> Entry:
    info = tar_info(path, tarfile.LNKTYPE, 0o644, 0, 0)
    info.linkname = target.lstrip("/")
    return info, None


def whiteout_entry(path: str) -> Entry:
    """OCI whiteout: deletes `path` of the lower layers."""
    head, _, name = path.rstrip("/").rpartition("/")
    return file_entry(f"{head}/.wh.{name}", b"")


def opaque_entry(directory: str) -> Entry:
    """OCI opaque whiteout: hides everything the lower layers have in `directory`."""
    return file_entry(f"{directory.rstrip('/')}/.wh..wh..opq", b"")


def busybox_entries(extra_files: Mapping[str, bytes] | None = None) -> list[Entry]:
    """A minimal rootfs: static busybox, applet symlinks, users, /tmp."""
    entries: list[Entry] = [dir_entry(d) for d in (
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "dev", "proc", "sys", "var",
        "var/www", "home")]
    entries += [dir_entry("tmp", 0o1777), dir_entry("root", 0o700),
                dir_entry("home/www", 0o755, 1000, 1000)]
    entries.append(file_entry("bin/busybox", Path(BUSYBOX_BINARY).read_bytes(), 0o755))
    entries += [symlink_entry(f"bin/{applet}", "busybox") for applet in BUSYBOX_APPLETS]
    entries += [file_entry("etc/passwd", PASSWD), file_entry("etc/group", GROUP),
                file_entry("etc/hostname", b"busybox\n")]
    made = {info.name for info, _ in entries}
    for path, data in sorted((extra_files or {}).items()):
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent not in made:
                entries.append(dir_entry(parent))
                made.add(parent)
        entries.append(file_entry(path, data))
    return entries


def layer_tar(entries: Sequence[Entry]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


# ------------------------------------------------------------------ images


def blob(layout: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def new_layout(directory: Path) -> Path:
    layout = directory / "layout"
    (layout / "blobs/sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return layout


def write_image(layout: Path, layers: Sequence[Sequence[Entry]],
                 config: Mapping[str, Any] | None, compress: bool,
                 architecture: str) -> dict[str, Any]:
    """Layer, config and manifest blobs into layout; the manifest's descriptor."""
    descriptors, diff_ids = [], []
    for entries in layers:
        tar = layer_tar(entries)
        diff_ids.append(f"sha256:{hashlib.sha256(tar).hexdigest()}")
        data = gzip.compress(tar, compresslevel=6, mtime=0) if compress else tar
        descriptors.append({"mediaType": OCI_LAYER_GZIP if compress else OCI_LAYER_TAR,
                            **blob(layout, data)})
    image_config = {
        "architecture": architecture, "os": "linux",
        "config": dict(config) if config is not None else {"Cmd": ["sh"], "Env": [PATH_ENV]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "swarm cli/dev/images.py"} for _ in layers],
    }
    config_descriptor = {"mediaType": OCI_CONFIG,
                         **blob(layout, json.dumps(image_config).encode())}
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": config_descriptor, "layers": descriptors}
    return {"mediaType": OCI_MANIFEST, **blob(layout, json.dumps(manifest).encode()),
            "platform": {"architecture": architecture, "os": "linux"}}


def push_layout(layout: Path, top: dict[str, Any], registry_addr: str, name: str, tag: str,
          credentials: tuple[str, str] | None) -> str:
    top = {**top, "annotations": {"org.opencontainers.image.ref.name": tag}}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    reference = f"{registry_addr}/{name}:{tag}"
    creds = (["--dest-creds", ":".join(credentials)] if credentials is not None
             else ["--dest-no-creds"])
    result = subprocess.run(
        ["skopeo", "--insecure-policy", "copy", "--quiet", "--all", "--dest-tls-verify=false",
         *creds, f"oci:{layout}:{tag}", f"docker://{reference}"],
        capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"pushing {reference} failed: {result.stderr.strip()}")
    return reference


def build_image(registry_addr: str, name: str, tag: str, layers: Sequence[Sequence[Entry]],
                config: Mapping[str, Any] | None = None, *, compress: bool = True,
                architecture: str | None = None,
                credentials: tuple[str, str] | None = None) -> str:
    """Assemble an OCI layout with these layers (lowest first) and the given
    container config ("Cmd", "Env", ...; default Cmd ["sh"] and PATH), push it
    as registry_addr/name:tag and return that reference."""
    with tempfile.TemporaryDirectory(prefix="swarm-image-") as tmp:
        layout = new_layout(Path(tmp))
        descriptor = write_image(layout, layers, config, compress,
                                  architecture or oci_architecture())
        descriptor.pop("platform")
        return push_layout(layout, descriptor, registry_addr, name, tag, credentials)


def build_busybox_image(registry_addr: str, name: str = "busybox", tag: str = "latest",
                        extra_files: dict[str, bytes] | None = None, *,
                        config: Mapping[str, Any] | None = None,
                        credentials: tuple[str, str] | None = None) -> str:
    """Push a one-layer (gzip) busybox image; returns its reference. Cmd ["sh"]
    and PATH unless `config` replaces the container config."""
    return build_image(registry_addr, name, tag, [busybox_entries(extra_files)], config,
                       credentials=credentials)


