"""Looking at and cleaning up what a RuncRuntime leaves on the host, for the
agent's container tests (runtime, worker, end to end)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest

from swarm.agent.logfile import log_files
from swarm.agent.runtime import RuncRuntime, RuncSettings
from swarm.host import mounts
from swarm.host import netns as netns_module
from tests.agent.conftest import require_root_and_tools
from tests.registry import BUSYBOX_BINARY


def write_busybox_layer(layer: Path, applets: Iterable[str], *, passwd: str | None = None,
                        group: str | None = None) -> Path:
    """A one-layer rootfs at layer: the static busybox as bin/busybox, each
    applet a link to it, and /etc/passwd and /etc/group when given."""
    (layer / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX_BINARY, layer / "bin" / "busybox")
    for applet in applets:
        (layer / "bin" / applet).symlink_to("busybox")
    if passwd is not None or group is not None:
        (layer / "etc").mkdir(exist_ok=True)
    if passwd is not None:
        (layer / "etc" / "passwd").write_text(passwd)
    if group is not None:
        (layer / "etc" / "group").write_text(group)
    return layer


def require_containers() -> None:
    """Skip outside CI without root, the registry tools, runc or conmon; in
    CI (CI set) everything is required, so a missing piece fails loudly."""
    require_root_and_tools()
    if os.environ.get("CI"):
        return
    defaults = RuncSettings(state_dir=Path("/nonexistent"))
    for binary in (defaults.runc_path, defaults.conmon_path):
        if not binary.exists():
            pytest.skip(f"{binary} missing (apt-get install runc conmon)")


def runc_sync(settings: RuncSettings, *args: str) -> str:
    return subprocess.run([str(settings.runc_path), "--root", str(settings.runc_root_dir), *args],
                          capture_output=True, text=True, check=True).stdout


def runc_ids(settings: RuncSettings) -> list[str]:
    return runc_sync(settings, "list", "-q").split()


async def teardown(settings: RuncSettings) -> list[str]:
    """Remove everything the test's runtime made; returns what needed more
    than remove() (which should be nothing)."""
    runtime = RuncRuntime(settings)
    for task_id in await runtime.list():
        with contextlib.suppress(Exception):
            await runtime.remove(task_id)
    extra = []
    for point in mounts.mounts_under(settings.state_dir):
        extra.append(f"mount {point}")
        mounts.unmount(Path(point))
    if netns_module.NETNS_DIR.is_dir():
        for name in os.listdir(netns_module.NETNS_DIR):
            if name.startswith(settings.netns_name_prefix):
                extra.append(f"netns {name}")
                await netns_module.remove_netns(name)
    for task_id in runc_ids(settings):
        extra.append(f"runc container {task_id}")
        runc_sync(settings, "delete", "--force", task_id)
    for hierarchy in settings.cgroup_root.iterdir():
        parent = hierarchy / settings.cgroup_parent
        if parent.is_dir():
            for child in sorted((p for p in parent.rglob("*") if p.is_dir()),
                                key=lambda p: len(p.parts), reverse=True):
                extra.append(f"cgroup {child}")
                with contextlib.suppress(OSError):
                    child.rmdir()
            with contextlib.suppress(OSError):
                parent.rmdir()
    return extra


def leftovers(runtime: RuncRuntime, task_id: str) -> list[str]:
    """Everything a container can leave on the host."""
    found = []
    bundle = runtime.bundle_dir(task_id)
    found += [f"mount {p}" for p in mounts.mount_points()
              if p.startswith(str(bundle)) or runtime.netns_name(task_id) in p]
    if runtime.netns_path(task_id).exists():
        found.append(f"netns {runtime.netns_path(task_id)}")
    found += [f"cgroup {d}" for d in runtime.cgroup_dirs(task_id) if d.exists()]
    if task_id in runc_ids(runtime.settings):
        found.append("runc state")
    for path in (bundle, runtime.settings.exits_dir / task_id, runtime.log_path(task_id),
                 runtime.settings.sockets_dir / task_id):
        if os.path.lexists(path):
            found.append(f"file {path}")
    found += [f"file {path}" for path in log_files(str(runtime.log_path(task_id)))
              if os.path.lexists(path) and path != str(runtime.log_path(task_id))]
    return found
