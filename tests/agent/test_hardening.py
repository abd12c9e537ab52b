"""Container isolation and bounded logs, in real runc containers on this
kernel: the default seccomp profile (unshare, keyctl-class and mount calls
fail; /proc/PID/status shows `Seccomp: 2`), seccomp=unconfined, masked /proc
paths, no-new-privileges, the modes of the agent's files, and a task
writing 80 MB to stdout keeping its logs under the cap.

The probe is a tiny static C program built once per module (gcc is on the
machine): it makes each system call and prints `name=errno`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from swarm.agent.logfile import LogFile, log_chain
from swarm.agent.runtime import ImageConfig, ImageInput, RuncRuntime, RuncSettings
from swarm.api import logopts
from swarm.api.v1 import objects_pb2 as pb
from tests.agent import test_runtime
from tests.agent.containers import leftovers
from tests.agent.test_runtime import _task, log_messages, needs_root, run_to_exit

# The runtime tests' fixtures: a one-layer busybox rootfs, a runtime of its own per test.
busybox_layer = test_runtime.busybox_layer
settings = test_runtime.settings
runtime = test_runtime.runtime

PROBE_SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <unistd.h>

static void report(const char *name, long result) {
    printf("%s=%d\n", name, result < 0 ? errno : 0);
}

int main(void) {
    report("unshare_user", unshare(CLONE_NEWUSER));
    report("unshare_net", unshare(CLONE_NEWNET));
    report("keyctl", syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3, 0));
    report("add_key", syscall(SYS_add_key, "user", "probe", "x", 1, -3));
    report("request_key", syscall(SYS_request_key, "user", "probe", NULL, 0));
    report("mount", mount("none", "/mnt", "tmpfs", 0, NULL));
    errno = 0;
    report("getpid", syscall(SYS_getpid));  /* raw: glibc's getpid never sets errno */
    fflush(stdout);
    return 0;
}
"""


@pytest.fixture(scope="module")
def probe_layer(busybox_layer: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The busybox layer plus /bin/probe and /mnt."""
    gcc = shutil.which("gcc")
    if gcc is None:
        if os.environ.get("CI"):
            pytest.fail("gcc missing: it builds the system-call probe")
        pytest.skip("gcc missing")
    layer = tmp_path_factory.mktemp("probe-layer")
    shutil.copytree(busybox_layer, layer, symlinks=True, dirs_exist_ok=True)
    source = tmp_path_factory.mktemp("probe-src") / "probe.c"
    source.write_text(PROBE_SOURCE)
    subprocess.run([gcc, "-static", "-O1", "-o", str(layer / "bin" / "probe"), str(source)],
                   check=True, capture_output=True)
    (layer / "mnt").mkdir()
    for applet in ("unshare", "mount", "grep", "head", "yes", "seq", "sed", "wc"):
        if not (layer / "bin" / applet).exists():
            (layer / "bin" / applet).symlink_to("busybox")
    return layer


@pytest.fixture
def probe_image(probe_layer: Path) -> ImageInput:
    return ImageInput(layers=(probe_layer,), config=ImageConfig(cmd=("sh",)))


def _results(lines: list[str]) -> dict[str, int]:
    return {name: int(value) for name, _, value in (line.partition("=") for line in lines)
            if value.isdigit()}


def _privileges(**fields: object) -> pb.Privileges:
    return pb.Privileges(**fields)  # type: ignore[arg-type]


EPERM = 1


def _existing(*paths: str) -> list[str]:
    """Those of the paths this kernel has (this one has no /proc/kcore)."""
    return [path for path in paths if os.path.exists(path)]


def _sizes(files: list[str]) -> list[int]:
    return [os.path.getsize(name) for name in files]


@needs_root
async def test_the_default_profile_blocks_namespaces_keys_and_mounts(
        runtime: RuncRuntime, probe_image: ImageInput) -> None:
    task = _task("sh", "-c", "grep '^Seccomp:' /proc/self/status; probe; unshare -U true; "
                             "echo unshare=$?")
    assert await run_to_exit(runtime, task, probe_image) == 0
    messages = log_messages(runtime, task.id)
    assert "Seccomp:\t2" in messages
    results = _results(messages)
    # CLONE_NEWUSER and CLONE_NEWNET: the filter's EPERM (root in the
    # container could otherwise make a user namespace: CVE-2022-0185's way in).
    assert results["unshare_user"] == EPERM
    assert results["unshare_net"] == EPERM
    for call in ("keyctl", "add_key", "request_key", "mount"):
        assert results[call] == EPERM, (call, messages)
    assert results["getpid"] == 0
    assert results["unshare"] != 0  # busybox's unshare -U failed too
    config = json.loads((runtime.bundle_dir(task.id) / "config.json").read_text())
    assert config["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    assert config["process"]["noNewPrivileges"] is False
    await runtime.remove(task.id)


@needs_root
async def test_unconfined_has_no_filter(runtime: RuncRuntime,
                                        probe_image: ImageInput) -> None:
    task = _task("sh", "-c", "grep '^Seccomp:' /proc/self/status; probe")
    task.spec.container.privileges.CopyFrom(_privileges(
        seccomp=pb.Privileges.Seccomp(mode=pb.Privileges.Seccomp.UNCONFINED)))
    assert await run_to_exit(runtime, task, probe_image) == 0
    messages = log_messages(runtime, task.id)
    assert "Seccomp:\t0" in messages
    # Without the filter the kernel answers: keyctl on a missing keyring is
    # not EPERM (the keyring calls are reachable), unshare(CLONE_NEWNET) is
    # refused by the capability check (no CAP_SYS_ADMIN), also EPERM.
    assert _results(messages)["keyctl"] != EPERM
    await runtime.remove(task.id)


@needs_root
async def test_a_custom_profile_and_no_new_privileges(runtime: RuncRuntime,
                                                      probe_image: ImageInput) -> None:
    profile = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}
    task = _task("sh", "-c", "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; probe")
    task.spec.container.privileges.CopyFrom(_privileges(
        seccomp=pb.Privileges.Seccomp(mode=pb.Privileges.Seccomp.CUSTOM,
                                      profile=json.dumps(profile).encode()),
        no_new_privileges=True))
    assert await run_to_exit(runtime, task, probe_image) == 0
    messages = log_messages(runtime, task.id)
    assert "Seccomp:\t2" in messages
    assert "NoNewPrivs:\t1" in messages
    config = json.loads((runtime.bundle_dir(task.id) / "config.json").read_text())
    assert _results(messages)["getpid"] == 13, (config["linux"]["seccomp"], messages)
    await runtime.remove(task.id)


@needs_root
async def test_proc_paths_are_masked(runtime: RuncRuntime,
                                     probe_image: ImageInput) -> None:
    masked = _existing("/proc/kcore", "/proc/interrupts", "/proc/keys", "/proc/timer_list")
    assert "/proc/interrupts" in masked
    task = _task("sh", "-c", f"for f in {' '.join(masked)}; do echo $f=$(wc -c < $f); done; "
                             "echo 0 > /proc/sys/vm/overcommit_memory; echo sys=$?")
    assert await run_to_exit(runtime, task, probe_image) == 0
    messages = log_messages(runtime, task.id)
    for path in masked:
        assert f"{path}=0" in messages, messages  # /dev/null over it
    assert "sys=1" in messages, messages  # read-only
    await runtime.remove(task.id)


@needs_root
async def test_file_modes(runtime: RuncRuntime, probe_image: ImageInput) -> None:
    # As a user other than root: the private modes must not reach into the
    # container (its root directory is the overlay's upper dir).
    task = _task("sh", "-c", "echo hello; sleep 100", user="www")
    await runtime.prepare(task, probe_image)
    await runtime.start(task.id)
    paths = runtime.settings
    for directory in (paths.state_dir, paths.bundles_dir, paths.logs_dir,
                      paths.exits_dir, paths.volumes_dir, paths.runc_root_dir,
                      runtime.bundle_dir(task.id)):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    for name in ("config.json", "log-limits.json"):
        assert stat.S_IMODE((runtime.bundle_dir(task.id) / name).stat().st_mode) == 0o600
    deadline = time.monotonic() + 5
    while not runtime.log_path(task.id).exists():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    mode = stat.S_IMODE(runtime.log_path(task.id).stat().st_mode)
    assert mode & 0o037 == 0, oct(mode)  # 0640 or stricter
    deadline = time.monotonic() + 5
    while "hello" not in log_messages(runtime, task.id):  # it ran, as www
        assert time.monotonic() < deadline, log_messages(runtime, task.id)
        await asyncio.sleep(0.02)
    await runtime.remove(task.id)
    assert leftovers(runtime, task.id) == []


async def test_an_existing_state_dir_is_made_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "bundles").mkdir(parents=True, mode=0o755)
    state.chmod(0o755)
    RuncRuntime(RuncSettings(state_dir=state, cgroup_parent="swrt-modes"))
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "bundles").stat().st_mode) == 0o700


@needs_root
async def test_80_megabytes_of_output_stay_under_the_cap(
        runtime: RuncRuntime, probe_image: ImageInput) -> None:
    """The default limits (10 MiB x 3); the rotation pass running as the
    agent runs it; the newest lines readable at the end, across files."""
    rotation = asyncio.create_task(runtime.rotate_logs_forever())
    try:
        # 80 MB of 100-byte lines, then a numbered tail to find.
        task = _task("sh", "-c", "yes 0123456789012345678901234567890123456789012345678901234567"
                                 "8901234567890123456789012345678901234567 | head -n 800000; "
                                 "seq 1 5 | sed 's/^/last /'")
        assert await asyncio.wait_for(run_to_exit(runtime, task, probe_image), 120) == 0
        await asyncio.sleep(0.5)  # a last rotation pass
        path = str(runtime.log_path(task.id))
        limits = logopts.LogLimits()
        files = log_chain(path)
        sizes = _sizes(files)
        assert len(files) <= limits.max_file, files
        assert all(size <= limits.max_size for size in sizes), sizes
        assert sum(sizes) <= limits.max_file * limits.max_size
        assert len(files) >= 2  # it did rotate, and kept the rotated files
        logfile = LogFile(path)
        assert logfile.start(tail=5)
        lines = []
        while (size := logfile.size()) is not None and logfile.offset < size:
            lines += logfile.read(size, 1 << 20)
            if logfile.live:
                break
        logfile.close()
        assert [line.data.decode() for line in lines] == [f"last {i}" for i in range(1, 6)]
        await runtime.remove(task.id)
        assert log_chain(path) == []
        assert leftovers(runtime, task.id) == []
    finally:
        rotation.cancel()
