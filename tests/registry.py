"""A real image registry for tests, and OCI images built by hand to push to it.

`RegistryServer.start(tmp_dir)` runs Debian's reference registry
(/usr/bin/docker-registry) on a free loopback port with a generated config and
filesystem storage in a directory of its own, optionally behind htpasswd basic
auth; `stop()` ends it by its PID and removes the directory.

`build_busybox_image()` assembles an OCI image layout in Python (tar, gzip,
JSON, sha256) whose single layer is a small rootfs around Debian's static
busybox, and pushes it with `skopeo copy`. `build_layered_image()` adds a
second layer with whiteouts; `build_image()` pushes any layers made of the
`*_entry` helpers below.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import gzip
import hashlib
import io
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.etcd_server import free_port

REGISTRY_BINARY = "/usr/bin/docker-registry"
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
            config: dict[str, Any] = {
                "version": 0.1,
                "log": {"level": "warn", "accesslog": {"disabled": True}},
                "storage": {"filesystem": {"rootdirectory": str(directory / "storage")},
                            "delete": {"enabled": True}},
                "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
            }
            if credentials is not None:
                hashed = bcrypt_hash(credentials[1])
                if hashed is None:
                    raise RuntimeError("no bcrypt in libcrypt: cannot write an htpasswd file")
                (directory / "htpasswd").write_text(f"{credentials[0]}:{hashed}\n")
                config["auth"] = {"htpasswd": {"realm": "swarm-test",
                                               "path": str(directory / "htpasswd")}}
            # JSON is YAML: the registry reads it as its config file.
            (directory / "config.yml").write_text(json.dumps(config))
            log = open(directory / "registry.log", "wb")  # noqa: SIM115 - owned by the process
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}  # no REGISTRY_* overrides
            process = subprocess.Popen([REGISTRY_BINARY, "serve", str(directory / "config.yml")],
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
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
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


# ------------------------------------------------------------------ layers

Entry = tuple[tarfile.TarInfo, bytes | None]


def _info(path: str, kind: bytes, mode: int, uid: int, gid: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path.lstrip("/"))
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    info.mtime = FIXED_MTIME
    return info


def dir_entry(path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Entry:
    return _info(path, tarfile.DIRTYPE, mode, uid, gid), None


def file_entry(path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
    info = _info(path, tarfile.REGTYPE, mode, uid, gid)
    info.size = len(data)
    return info, data


def symlink_entry(path: str, target: str) -> Entry:
    info = _info(path, tarfile.SYMTYPE, 0o777, 0, 0)
    info.linkname = target
    return info, None


def hardlink_entry(path: str, target: str) -> Entry:
    info = _info(path, tarfile.LNKTYPE, 0o644, 0, 0)
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


def _blob(layout: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _new_layout(directory: Path) -> Path:
    layout = directory / "layout"
    (layout / "blobs/sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return layout


def _write_image(layout: Path, layers: Sequence[Sequence[Entry]],
                 config: Mapping[str, Any] | None, compress: bool,
                 architecture: str) -> dict[str, Any]:
    """Layer, config and manifest blobs into layout; the manifest's descriptor."""
    descriptors, diff_ids = [], []
    for entries in layers:
        tar = layer_tar(entries)
        diff_ids.append(f"sha256:{hashlib.sha256(tar).hexdigest()}")
        blob = gzip.compress(tar, compresslevel=6, mtime=0) if compress else tar
        descriptors.append({"mediaType": OCI_LAYER_GZIP if compress else OCI_LAYER_TAR,
                            **_blob(layout, blob)})
    image_config = {
        "architecture": architecture, "os": "linux",
        "config": dict(config) if config is not None else {"Cmd": ["sh"], "Env": [PATH_ENV]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "tests/registry.py"} for _ in layers],
    }
    config_descriptor = {"mediaType": OCI_CONFIG,
                         **_blob(layout, json.dumps(image_config).encode())}
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": config_descriptor, "layers": descriptors}
    return {"mediaType": OCI_MANIFEST, **_blob(layout, json.dumps(manifest).encode()),
            "platform": {"architecture": architecture, "os": "linux"}}


def _push(layout: Path, top: dict[str, Any], registry_addr: str, name: str, tag: str,
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
        layout = _new_layout(Path(tmp))
        descriptor = _write_image(layout, layers, config, compress,
                                  architecture or oci_architecture())
        descriptor.pop("platform")
        return _push(layout, descriptor, registry_addr, name, tag, credentials)


def build_index_image(registry_addr: str, name: str = "multiarch", tag: str = "latest", *,
                      credentials: tuple[str, str] | None = None) -> str:
    """An image index with two platforms: this machine's (busybox plus
    /platform = b"native") and another architecture's (busybox plus /platform
    = b"foreign")."""
    native = oci_architecture()
    foreign = "arm64" if native != "arm64" else "amd64"
    with tempfile.TemporaryDirectory(prefix="swarm-image-") as tmp:
        layout = _new_layout(Path(tmp))
        manifests = [
            _write_image(layout, [busybox_entries({"/platform": label.encode()})], None, True,
                         arch)
            for arch, label in ((foreign, "foreign"), (native, "native"))]
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        top = {"mediaType": OCI_INDEX, **_blob(layout, json.dumps(index).encode())}
        return _push(layout, top, registry_addr, name, tag, credentials)


def build_busybox_image(registry_addr: str, name: str = "busybox", tag: str = "latest",
                        extra_files: dict[str, bytes] | None = None, *,
                        config: Mapping[str, Any] | None = None,
                        credentials: tuple[str, str] | None = None) -> str:
    """Push a one-layer (gzip) busybox image; returns its reference. Cmd ["sh"]
    and PATH unless `config` replaces the container config."""
    return build_image(registry_addr, name, tag, [busybox_entries(extra_files)], config,
                       credentials=credentials)


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
