"""A real image registry for tests, and OCI images built by hand to push to it.

`RegistryServer.start(tmp_dir)` runs Debian's reference registry
(/usr/bin/docker-registry) on a free loopback port with a generated config and
filesystem storage in a directory of its own, optionally behind htpasswd basic
auth; `stop()` ends it by its PID and removes the directory.

Images are built with cli/dev/images.py (`build_busybox_image()`, a small
rootfs around Debian's static busybox, pushed with `skopeo copy`);
`build_layered_image()` adds a second layer with whiteouts and
`build_index_image()` a two-platform index.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The image builders live with the local cluster, which ships a demo image;
# re-exported here for the tests.
from swarm.cli.dev.daemons import stop_child
from swarm.cli.dev.images import (
    BUSYBOX_APPLETS,
    BUSYBOX_BINARY,
    OCI_INDEX,
    OCI_MANIFEST,
    PATH_ENV,
    Entry,
    blob,
    build_busybox_image,
    build_image,
    busybox_entries,
    dir_entry,
    file_entry,
    hardlink_entry,
    layer_tar,
    new_layout,
    oci_architecture,
    opaque_entry,
    push_layout,
    symlink_entry,
    whiteout_entry,
    write_image,
)
from swarm.cli.dev.registry import REGISTRY_BINARY, write_registry_config
from tests.etcd_server import free_port

__all__ = [
    "BUSYBOX_APPLETS",
    "BUSYBOX_BINARY",
    "LAYERED_BASE_EXTRA",
    "LAYERED_TOP",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "PATH_ENV",
    "REGISTRY_BINARY",
    "Entry",
    "RegistryServer",
    "bcrypt_hash",
    "blob",
    "build_busybox_image",
    "build_image",
    "build_index_image",
    "build_layered_image",
    "busybox_entries",
    "dir_entry",
    "file_entry",
    "hardlink_entry",
    "layer_tar",
    "new_layout",
    "oci_architecture",
    "opaque_entry",
    "push_layout",
    "symlink_entry",
    "whiteout_entry",
    "write_image",
]



def _no_proxy_opener() -> urllib.request.OpenerDirector:
    # Only loopback is reachable: never let a proxy from the environment in.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ------------------------------------------------------------------ htpasswd


def bcrypt_hash(password: str, cost: int = 5) -> str | None:
    """A bcrypt ($2b$) hash for the registry's htpasswd file, from the system's
    libcrypt (libxcrypt on Debian 12) -- no Python bcrypt module or apache2-utils
    needed. None where libcrypt lacks bcrypt. A low cost keeps every request
    (the registry checks the password on each) fast; it is a test."""
    name = ctypes.util.find_library("crypt")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        gensalt = lib.crypt_gensalt
        crypt = lib.crypt
    except (OSError, AttributeError):
        return None
    gensalt.restype = ctypes.c_char_p
    gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    crypt.restype = ctypes.c_char_p
    crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    salt = gensalt(b"$2b$", cost, None, 0)  # NULL rbytes: libcrypt reads the OS's entropy
    if not salt or not salt.startswith(b"$2b$"):
        return None
    hashed = crypt(password.encode(), salt)
    if not hashed or not hashed.startswith(b"$2b$"):
        return None
    return bytes(hashed).decode()


# ------------------------------------------------------------------ registry


@dataclass
class RegistryServer:
    process: subprocess.Popen[bytes]
    port: int
    directory: Path
    credentials: tuple[str, str] | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def storage(self) -> Path:
        return self.directory / "storage"

    @classmethod
    def start(cls, tmp_dir: str | os.PathLike[str] | None = None, *,
              credentials: tuple[str, str] | None = None,
              timeout: float = 20.0) -> RegistryServer:
        """Start a registry on 127.0.0.1:<free port> in a new directory under
        tmp_dir. With credentials (user, password) it requires basic auth;
        raises RuntimeError if no bcrypt is available for the htpasswd file."""
        directory = Path(tempfile.mkdtemp(prefix="swarm-registry-", dir=tmp_dir))
        try:
            port = free_port()
            htpasswd = None
            if credentials is not None:
                hashed = bcrypt_hash(credentials[1])
                if hashed is None:
                    raise RuntimeError("no bcrypt in libcrypt: cannot write an htpasswd file")
                htpasswd = directory / "htpasswd"
                htpasswd.write_text(f"{credentials[0]}:{hashed}\n")
            config = write_registry_config(directory, f"127.0.0.1:{port}", htpasswd=htpasswd)
            log = open(directory / "registry.log", "wb")  # noqa: SIM115 - owned by the process
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}  # no REGISTRY_* overrides
            process = subprocess.Popen([REGISTRY_BINARY, "serve", str(config)],
                                       stdout=log, stderr=subprocess.STDOUT, env=env)
            log.close()
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        server = cls(process, port, directory, credentials)
        try:
            server._wait_ready(timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_ready(self, timeout: float) -> None:
        opener = _no_proxy_opener()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"registry exited with {self.process.returncode}: {self.log()}")
            try:
                with opener.open(f"http://{self.addr}/v2/", timeout=1):
                    return
            except urllib.error.HTTPError as error:
                if error.code == 401:  # answering, and asking for credentials
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"registry did not answer /v2/ within {timeout}s")
            time.sleep(0.05)

    def log(self) -> str:
        try:
            return (self.directory / "registry.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the registry by its PID and remove its directory. Idempotent."""
        stop_child(self.process)
        shutil.rmtree(self.directory, ignore_errors=True)

    def blob_path(self, digest: str) -> Path:
        """Where the registry stores the blob with this digest."""
        algorithm, hexdigest = digest.split(":", 1)
        return (self.storage / "docker/registry/v2/blobs" / algorithm / hexdigest[:2]
                / hexdigest / "data")

    def _get_manifest(self, name: str, reference: str) -> bytes:
        request = urllib.request.Request(
            f"http://{self.addr}/v2/{name}/manifests/{reference}",
            headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}, "
                               "application/vnd.docker.distribution.manifest.v2+json"})
        if self.credentials is not None:
            token = base64.b64encode(":".join(self.credentials).encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with _no_proxy_opener().open(request, timeout=10) as response:
            body: bytes = response.read()
            return body

    def manifest(self, name: str, reference: str) -> dict[str, Any]:
        """The manifest of name:reference as the registry serves it."""
        result: dict[str, Any] = json.loads(self._get_manifest(name, reference))
        return result

    def manifest_digest(self, name: str, reference: str) -> str:
        return f"sha256:{hashlib.sha256(self._get_manifest(name, reference)).hexdigest()}"


def build_index_image(registry_addr: str, name: str = "multiarch", tag: str = "latest", *,
                      credentials: tuple[str, str] | None = None) -> str:
    """An image index with two platforms: this machine's (busybox plus
    /platform = b"native") and another architecture's (busybox plus /platform
    = b"foreign")."""
    native = oci_architecture()
    foreign = "arm64" if native != "arm64" else "amd64"
    with tempfile.TemporaryDirectory(prefix="swarm-image-") as tmp:
        layout = new_layout(Path(tmp))
        manifests = [
            write_image(layout, [busybox_entries({"/platform": label.encode()})], None, True,
                         arch)
            for arch, label in ((foreign, "foreign"), (native, "native"))]
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        top = {"mediaType": OCI_INDEX, **blob(layout, json.dumps(index).encode())}
        return push_layout(layout, top, registry_addr, name, tag, credentials)


LAYERED_BASE_EXTRA: list[Entry] = [
    dir_entry("data"),
    file_entry("data/keep", b"keep\n"),
    file_entry("data/remove-me", b"gone\n"),
    dir_entry("data/removed-dir"),
    file_entry("data/removed-dir/inner", b"inner\n"),
    dir_entry("data/opaque", 0o750, 1000, 1000),
    file_entry("data/opaque/old", b"old\n"),
    file_entry("data/suid", b"#!/bin/sh\n", 0o4755, 1000, 1000),
    file_entry("data/linked", b"one inode\n"),
    hardlink_entry("data/hardlink", "data/linked"),
    symlink_entry("data/abs-link", "/etc/passwd"),
]
LAYERED_TOP: list[Entry] = [
    whiteout_entry("data/remove-me"),
    whiteout_entry("data/removed-dir"),
    opaque_entry("data/opaque"),
    file_entry("data/opaque/new", b"new\n"),
    file_entry("data/added", b"added\n", 0o600, 65534, 65534),
]


def build_layered_image(registry_addr: str, name: str = "layered", tag: str = "latest", *,
                        credentials: tuple[str, str] | None = None) -> str:
    """Two gzip layers: busybox plus /data (files, a setuid file owned by
    1000:1000, a hardlink, an absolute symlink), then a layer that deletes
    /data/remove-me and /data/removed-dir with whiteouts, makes /data/opaque
    opaque (adding /data/opaque/new) and adds /data/added (0600, 65534)."""
    return build_image(registry_addr, name, tag,
                       [busybox_entries() + LAYERED_BASE_EXTRA, LAYERED_TOP],
                       credentials=credentials)
