"""The container runtime on runc + conmon: pure config building, and real
containers from a one-layer busybox rootfs.

The container tests need root (runc, overlayfs, network namespaces, cgroups).
CI runs them as root; elsewhere they are skipped when not root. Every test's
runtime has its own state dir, runc root, cgroup parent and netns prefix, and
its fixture removes everything it made, also when the test fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from swarm.agent.runtime import (
    ContainerError,
    ImageConfig,
    ImageInput,
    RejectError,
    RuncRuntime,
    RuncSettings,
    spec,
)
from swarm.agent.runtime import rootfs as fs
from swarm.agent.runtime.runc import runc_deletes_only_files
from swarm.api.v1 import objects_pb2 as pb
from tests.agent.containers import leftovers, write_busybox_layer
from tests.agent.containers import runc_sync as _runc_sync
from tests.agent.containers import teardown as _teardown

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 and not os.environ.get("CI"),
    reason="runs real containers: needs root for runc, overlayfs, network namespaces and "
           "cgroups (CI runs it as root)")

APPLETS = ("sh", "sleep", "cat", "echo", "id", "true", "false", "ls", "wget", "httpd")
PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
          "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
          "www:x:1000:1000:www:/home/www:/bin/sh\n")
GROUP = "root:x:0:\nstaff:x:50:www\nwww:x:1000:\nnogroup:x:65534:\n"
MiB = 1024 * 1024


# ================================================================ pure: spec.py


def _container(**fields: object) -> pb.ContainerSpec:
    return pb.ContainerSpec(**fields)  # type: ignore[arg-type]


IMAGE = ImageConfig(entrypoint=("/entry",), cmd=("serve", "--port=80"),
                    env=("PATH=/opt/bin:/bin", "A=image", "B=image"), working_dir="/srv",
                    user="www", stop_signal="SIGQUIT")


def test_process_takes_the_image_entrypoint_and_cmd_by_default() -> None:
    plan = spec.plan_process(_container(), IMAGE, "host1")
    assert plan.args == ("/entry", "serve", "--port=80")
    assert plan.cwd == "/srv"
    assert plan.user == "www"


def test_args_replace_the_image_cmd() -> None:
    plan = spec.plan_process(_container(args=["x"]), IMAGE, "h")
    assert plan.args == ("/entry", "x")


def test_command_replaces_the_entrypoint_and_drops_the_image_cmd() -> None:
    assert spec.plan_process(_container(command=["/bin/sh"]), IMAGE, "h").args == ("/bin/sh",)
    assert spec.plan_process(_container(command=["/bin/sh"], args=["-c", "x"]), IMAGE,
                             "h").args == ("/bin/sh", "-c", "x")


def test_no_command_at_all_is_rejected() -> None:
    with pytest.raises(RejectError, match="no command specified"):
        spec.plan_process(_container(), ImageConfig(), "h")


def test_env_is_the_image_env_overlaid_by_the_spec_env() -> None:
    plan = spec.plan_process(_container(env=["B=spec", "C=spec", "A"]), IMAGE, "web1")
    assert plan.env == ("PATH=/opt/bin:/bin", "HOSTNAME=web1", "B=spec", "C=spec")


def test_defaults_path_cwd_and_user() -> None:
    plan = spec.plan_process(_container(command=["x"]), ImageConfig(), "h")
    assert plan.env[0] == f"PATH={spec.DEFAULT_PATH}"
    assert plan.cwd == "/"
    assert plan.user == ""
    with pytest.raises(RejectError, match="needs to be an absolute path"):
        spec.plan_process(_container(command=["x"], dir="rel"), ImageConfig(), "h")


def test_hostname_defaults_to_the_short_task_id() -> None:
    task = pb.Task(id="abcdefghijklmnopqrstuvwxy")
    assert spec.hostname_for(task) == "abcdefghijkl"
    task.spec.container.hostname = "web"
    assert spec.hostname_for(task) == "web"
    task.spec.container.hostname = "no/slashes"
    with pytest.raises(RejectError, match="invalid hostname"):
        spec.hostname_for(task)


@pytest.mark.parametrize(("user", "expected"), [
    ("", spec.User(0, 0, (), "/root")),
    ("root", spec.User(0, 0, (), "/root")),
    ("www", spec.User(1000, 1000, (50,), "/home/www")),
    ("1000", spec.User(1000, 1000, (50,), "/home/www")),
    ("www:staff", spec.User(1000, 50, (), "/home/www")),
    ("www:4000", spec.User(1000, 4000, (), "/home/www")),
    ("4242", spec.User(4242, 0, (), "/")),
    ("4242:4243", spec.User(4242, 4243, (), "/")),
])
def test_users_resolve_against_passwd_and_group(user: str, expected: spec.User) -> None:
    assert spec.resolve_user(user, PASSWD, GROUP) == expected


def test_unknown_user_and_group_are_rejected() -> None:
    with pytest.raises(RejectError) as error:
        spec.resolve_user("nope", PASSWD, GROUP)
    assert str(error.value) == "unable to find user nope: no matching entries in passwd file"
    with pytest.raises(RejectError) as error:
        spec.resolve_user("www:nope", PASSWD, GROUP)
    assert str(error.value) == "unable to find group nope: no matching entries in group file"
    with pytest.raises(RejectError, match="unable to find user www"):
        spec.resolve_user("www", None, None)


def test_signals_parse_by_name_or_number() -> None:
    assert spec.parse_signal("SIGTERM") == signal.SIGTERM
    assert spec.parse_signal("quit") == signal.SIGQUIT
    assert spec.parse_signal("9") == signal.SIGKILL
    with pytest.raises(RejectError):
        spec.parse_signal("SIGNOPE")
    assert spec.stop_signal(_container(), IMAGE) == "SIGQUIT"
    assert spec.stop_signal(_container(stop_signal="SIGINT"), IMAGE) == "SIGINT"
    assert spec.stop_signal(_container(), ImageConfig()) == "SIGTERM"


def _resources(memory: int = 0, cpus: float = 0, reserve_memory: int = 0,
               reserve_cpus: float = 0) -> pb.ResourceRequirements:
    return pb.ResourceRequirements(
        limits=pb.Resources(memory_bytes=memory, nano_cpus=int(cpus * 1e9)),
        reservations=pb.Resources(memory_bytes=reserve_memory,
                                  nano_cpus=int(reserve_cpus * 1e9)))


def test_resources_become_cgroup_values() -> None:
    resources = spec.plan_resources(_resources(64 * MiB, 0.5, 32 * MiB, 0.25),
                                    pids_limit=4096, cpu_count=2, swap_accounting=True)
    assert resources["memory"] == {"limit": 64 * MiB, "swap": 128 * MiB,
                                   "reservation": 32 * MiB}
    assert resources["cpu"] == {"quota": 50_000, "period": 100_000, "shares": 256}
    assert resources["pids"] == {"limit": 4096}
    assert resources["devices"] == [{"allow": False, "access": "rwm"}]
    bare = spec.plan_resources(_resources(), pids_limit=0, cpu_count=2, swap_accounting=False)
    assert set(bare) == {"devices"}


def test_limits_below_the_minimum_are_rejected() -> None:
    with pytest.raises(RejectError) as error:
        spec.plan_resources(_resources(memory=4 * MiB), pids_limit=1, cpu_count=2,
                            swap_accounting=False)
    assert str(error.value) == "memory limit 4MiB is below the minimum of 6MiB"
    with pytest.raises(RejectError, match=r"range of CPUs is from 0\.01 to 2\.00"):
        spec.plan_resources(_resources(cpus=0.001), pids_limit=1, cpu_count=2,
                            swap_accounting=False)
    with pytest.raises(RejectError, match="only 2 CPUs available"):
        spec.plan_resources(_resources(cpus=3), pids_limit=1, cpu_count=2,
                            swap_accounting=False)


@pytest.mark.parametrize(("mount", "message"), [
    (pb.Mount(type=pb.Mount.BIND, source="rel", target="/x"), "absolute path"),
    (pb.Mount(type=pb.Mount.VOLUME, source="x", target="rel"), "must be an absolute path"),
    (pb.Mount(type=pb.Mount.VOLUME, source="x", target="/"), "cannot mount over /"),
    (pb.Mount(type=pb.Mount.VOLUME, source="../etc", target="/x"), "invalid volume name"),
    (pb.Mount(type=pb.Mount.TMPFS, source="x", target="/x"), "source must be empty"),
])
def test_bad_mounts_are_rejected(mount: pb.Mount, message: str) -> None:
    with pytest.raises(RejectError, match=message):
        spec.check_mounts([mount])


def test_duplicate_mount_points_are_rejected() -> None:
    mounts = [pb.Mount(type=pb.Mount.TMPFS, target="/x"),
              pb.Mount(type=pb.Mount.VOLUME, source="v1", target="/x/")]
    with pytest.raises(RejectError, match="duplicate mount point: /x"):
        spec.check_mounts(mounts)


def test_config_has_docker_defaults_and_the_given_pieces() -> None:
    plan = spec.ContainerPlan(
        hostname="web1",
        process=spec.ProcessPlan(("/bin/sh",), ("PATH=/bin",), "/", "www"),
        user=spec.User(1000, 1000, (50,)),
        rootfs="/b/rootfs", read_only=True,
        mounts=(spec.MountPlan("bind", "/data/sub", "/v/sub"),
                spec.MountPlan("tmpfs", "/data", tmpfs_size=MiB, read_only=True),
                spec.MountPlan("bind", "/etc/hosts", "/mine")),
        files=(("/etc/hosts", "/b/hosts"), ("/etc/hostname", "/b/hostname")),
        netns_path="/run/netns/n1", cgroups_path="/swarm/t1",
        resources={"pids": {"limit": 10}}, nofile_limit=1024)
    config = spec.build_config(plan)
    assert config["root"] == {"path": "/b/rootfs", "readonly": True}
    assert config["hostname"] == "web1"
    process = config["process"]
    assert process["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [50]}
    assert process["capabilities"]["bounding"] == list(spec.DEFAULT_CAPABILITIES)
    assert process["capabilities"]["effective"] == []  # not root
    assert process["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    linux = config["linux"]
    assert {"type": "network", "path": "/run/netns/n1"} in linux["namespaces"]
    assert [n["type"] for n in linux["namespaces"]] == ["pid", "ipc", "uts", "mount", "network"]
    assert linux["cgroupsPath"] == "/swarm/t1"
    assert "/proc/kcore" in linux["maskedPaths"]
    assert "/proc/sys" in linux["readonlyPaths"]
    destinations = [m["destination"] for m in config["mounts"]]
    for system in ("/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys"):
        assert system in destinations
    # The user's /etc/hosts wins over the generated one; parents mount before children.
    assert destinations.count("/etc/hosts") == 1
    assert destinations.index("/data") < destinations.index("/data/sub")
    tmpfs = next(m for m in config["mounts"] if m["destination"] == "/data")
    assert tmpfs["type"] == "tmpfs"
    assert f"size={MiB}" in tmpfs["options"]
    assert "ro" in tmpfs["options"]
    json.dumps(config)  # serialisable


def test_resolv_conf_drops_loopback_nameservers() -> None:
    text = "nameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch example.org\n"
    assert spec.resolv_conf(text) == "nameserver 10.0.0.2\nsearch example.org\n"
    assert "127.0.0.1\tweb1" in spec.hosts_file("web1")


def test_resolv_conf_of_a_container_on_networks_points_at_the_embedded_dns() -> None:
    text = ("nameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch example.org\n"
            "options ndots:5 edns0\n")
    assert spec.resolv_conf(text, embedded_dns=True) == (
        "search example.org\nnameserver 127.0.0.11\noptions edns0 ndots:0\n")
    assert spec.resolv_conf("", embedded_dns=True) == "nameserver 127.0.0.11\noptions ndots:0\n"


def test_lookups_follow_symlinks_inside_the_rootfs(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "tool").write_text("#!/bin/sh\n")
    (root / "usr" / "bin" / "tool").chmod(0o755)
    (root / "bin").symlink_to("/usr/bin")  # absolute: relative to the rootfs, not the host
    (root / "escape").symlink_to("../../../../..")
    assert fs.resolve_in_root(root, "/bin/tool") == root / "usr/bin/tool"
    assert fs.resolve_in_root(root, "/escape/etc/passwd") == root / "etc/passwd"
    assert fs.find_executable(root, "tool", "/nope:/bin", "/") == "/bin/tool"
    assert fs.find_executable(root, "/bin/tool", "", "/") == "/bin/tool"
    with pytest.raises(RejectError) as error:
        fs.find_executable(root, "/bin/nope", "/bin", "/")
    assert str(error.value) == 'exec: "/bin/nope": not found'
    with pytest.raises(RejectError) as error:
        fs.find_executable(root, "nope", "/bin", "/")
    assert str(error.value) == 'exec: "nope": executable file not found in $PATH'


# ================================================================ real containers


def _state(start: int = 4635953, namespaces: list[dict[str, str]] | None = None,
           **config: object) -> dict[str, object]:
    """A runc 1.1 state.json, the fields runc_deletes_only_files reads."""
    return {"init_process_pid": 32384, "init_process_start": start, "intel_rdt_path": "",
            "config": {"namespaces": namespaces if namespaces is not None else
                       [{"type": "NEWPID", "path": ""}, {"type": "NEWNET", "path": "/run/netns/x"}],
                       "Hooks": None, **config}}


def _stat(state: str = "S", start: int = 4635953) -> str:
    """/proc/PID/stat of a process named with a space and a parenthesis."""
    fields = [state, "1", *["0"] * 17, str(start), "0"]
    return "32384 (sleep (x) y) " + " ".join(fields)


@pytest.mark.parametrize(("state", "stat", "expected"), [
    (_state(), None, True),  # the init is gone
    (_state(), _stat("Z"), True),  # a zombie
    (_state(), _stat("S", start=99), True),  # the pid now belongs to another process
    (_state(), _stat("S"), False),  # still running: runc kills it first
    (_state(), _stat("R"), False),
    (_state(), "32384 (sleep) S", False),  # a stat line we do not know: runc looks
    (_state(namespaces=[{"type": "NEWNET", "path": ""}]), None, False),  # the host's pids
    (_state(namespaces=[{"type": "NEWPID", "path": "/proc/1/ns/pid"}]), None, False),  # joined
    (_state(Hooks={"poststop": [{"path": "/bin/true"}]}), None, False),
    ({"init_process_pid": 1}, None, False),  # no config: not a state we know
])
def test_runc_delete_is_only_files_for_a_stopped_container(
        state: dict[str, object], stat: str | None, expected: bool) -> None:
    assert runc_deletes_only_files(state, stat) is expected


@pytest.fixture(scope="module")
def busybox_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-layer busybox rootfs."""
    layer = write_busybox_layer(tmp_path_factory.mktemp("busybox-layer"), APPLETS,
                                passwd=PASSWD, group=GROUP)
    (layer / "data").mkdir()
    (layer / "data" / "from-image").write_text("seed\n")
    return layer


@pytest.fixture
def image(busybox_layer: Path) -> ImageInput:
    return ImageInput(layers=(busybox_layer,), config=ImageConfig(cmd=("sh",)))


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[RuncSettings]:
    # Under /run and short: conmon's attach socket path must fit a sockaddr_un.
    state_dir = Path(tempfile.mkdtemp(prefix="swrt-", dir="/run"))
    (tmp_path / "allowed").mkdir()
    yield RuncSettings(state_dir=state_dir, cgroup_parent=f"swrt-{uuid.uuid4().hex[:8]}",
                       allowed_bind_roots=(tmp_path / "allowed",))
    shutil.rmtree(state_dir, ignore_errors=True)


def _cmdline(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


def _parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


@pytest.fixture
async def runtime(settings: RuncSettings) -> AsyncIterator[RuncRuntime]:
    try:
        yield RuncRuntime(settings)
    finally:
        extra = await _teardown(settings)
        assert not extra, f"remove() left things behind: {extra}"


def _task(*command: str, **container: object) -> pb.Task:
    task = pb.Task(id=uuid.uuid4().hex[:25], service_id="svc")
    task.spec.container.CopyFrom(pb.ContainerSpec(command=list(command), **container))  # type: ignore[arg-type]
    return task


def log_entries(runtime: RuncRuntime, task_id: str) -> list[tuple[str, str]]:
    """(stream, line) of the container's output, from conmon's CRI log
    ("<timestamp> stdout F <line>")."""
    lines = runtime.log_path(task_id).read_text().splitlines()
    return [(fields[1], fields[3]) for fields in (line.split(" ", 3) for line in lines)
            if len(fields) == 4]


def log_messages(runtime: RuncRuntime, task_id: str) -> list[str]:
    return [text for _, text in log_entries(runtime, task_id)]


async def run_to_exit(runtime: RuncRuntime, task: pb.Task, image: ImageInput) -> int:
    await runtime.prepare(task, image)
    await runtime.start(task.id)
    return await asyncio.wait_for(runtime.wait(task.id), 10)


async def wait_for_log(runtime: RuncRuntime, task_id: str, text: str) -> None:
    deadline = time.monotonic() + 5
    while not (runtime.log_path(task_id).exists()
               and any(text in m for m in log_messages(runtime, task_id))):
        assert time.monotonic() < deadline, f"{text!r} not logged"
        await asyncio.sleep(0.02)


@needs_root
async def test_sleep_runs_and_remove_leaves_nothing(runtime: RuncRuntime,
                                                    image: ImageInput) -> None:
    task = _task("sleep", "1000")
    await runtime.prepare(task, image)
    assert (await runtime.list())[task.id].status == "created"
    await runtime.prepare(task, image)  # prepared already: nothing to do
    pid = await runtime.start(task.id)
    os.kill(pid, 0)
    deadline = time.monotonic() + 5  # runc start returns before runc init has exec'd
    while _cmdline(pid)[:2] != [b"sleep", b"1000"]:
        assert time.monotonic() < deadline, _cmdline(pid)
        await asyncio.sleep(0.01)
    state = json.loads(_runc_sync(runtime.settings, "state", task.id))
    assert state["status"] == "running"
    assert state["pid"] == pid
    listed = (await runtime.list())[task.id]
    assert (listed.status, listed.pid, listed.exit_code) == ("running", pid, None)
    assert listed.monitor_pid is not None
    # The container has its own network namespace: ours, with loopback up.
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(runtime.netns_path(task.id)).st_ino
    await runtime.remove(task.id)
    assert leftovers(runtime, task.id) == []
    await runtime.remove(task.id)  # idempotent
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@needs_root
async def test_exit_code_and_output(runtime: RuncRuntime, image: ImageInput) -> None:
    task = _task("sh", "-c", "echo out; echo err >&2; hostname; exit 3")
    assert await run_to_exit(runtime, task, image) == 3
    entries = log_entries(runtime, task.id)  # two pipes: no order between the streams
    assert [text for stream, text in entries if stream == "stdout"] == ["out", task.id[:12]]
    assert [text for stream, text in entries if stream == "stderr"] == ["err"]
    state = (await runtime.list())[task.id]
    assert (state.status, state.exit_code, state.pid) == ("stopped", 3, 0)
    assert await runtime.wait(task.id) == 3  # again: read from the exit file
    await runtime.remove(task.id)
    assert leftovers(runtime, task.id) == []


@needs_root
async def test_shutdown_stops_a_process_that_handles_the_signal(
        runtime: RuncRuntime, image: ImageInput) -> None:
    task = _task("sh", "-c", "trap 'echo bye; exit 0' TERM; echo ready; "
                             "while true; do sleep 0.05; done")
    await runtime.prepare(task, image)
    await runtime.start(task.id)
    await wait_for_log(runtime, task.id, "ready")
    started = time.monotonic()
    await runtime.shutdown(task.id, "SIGTERM", grace=5)
    assert time.monotonic() - started < 3
    assert await runtime.wait(task.id) == 0
    assert "bye" in log_messages(runtime, task.id)


@needs_root
async def test_shutdown_kills_after_the_grace_period(runtime: RuncRuntime,
                                                     image: ImageInput) -> None:
    # sleep as PID 1 of its namespace has no handler: SIGTERM is ignored.
    task = _task("sleep", "1000")
    await runtime.prepare(task, image)
    await runtime.start(task.id)
    started = time.monotonic()
    await runtime.shutdown(task.id, "TERM", grace=0.5)
    assert time.monotonic() - started >= 0.5
    assert await runtime.wait(task.id) == 128 + signal.SIGKILL
    await runtime.shutdown(task.id, "TERM", grace=0.5)  # already stopped: fine


@needs_root
async def test_shutdown_of_a_container_never_started(runtime: RuncRuntime,
                                                     image: ImageInput) -> None:
    task = _task("sleep", "1000")
    await runtime.prepare(task, image)
    await runtime.shutdown(task.id, "SIGTERM", grace=5)
    assert await runtime.wait(task.id) == 128 + signal.SIGKILL


@needs_root
async def test_limits_are_in_the_cgroup_files(runtime: RuncRuntime, image: ImageInput) -> None:
    task = _task("sleep", "1000")
    task.spec.resources.CopyFrom(_resources(memory=64 * MiB, cpus=0.5))
    await runtime.prepare(task, image)
    cgroup = runtime.settings.cgroup_root
    relative = runtime.cgroups_path(task.id).lstrip("/")

    def read(controller: str, name: str) -> str:
        return (cgroup / controller / relative / name).read_text().strip()

    assert read("memory", "memory.limit_in_bytes") == str(64 * MiB)
    assert read("cpu", "cpu.cfs_quota_us") == "50000"
    assert read("cpu", "cpu.cfs_period_us") == "100000"
    assert read("pids", "pids.max") == str(spec.DEFAULT_PIDS_LIMIT)
    pid = await runtime.start(task.id)
    assert str(pid) in read("pids", "cgroup.procs").split()


@needs_root
async def test_a_memory_limit_below_6mib_is_rejected(runtime: RuncRuntime,
                                                      image: ImageInput) -> None:
    task = _task("sleep", "1000")
    task.spec.resources.CopyFrom(_resources(memory=5 * MiB))
    with pytest.raises(RejectError, match="below the minimum of 6MiB"):
        await runtime.prepare(task, image)
    assert leftovers(runtime, task.id) == []


@needs_root
async def test_read_only_rootfs(runtime: RuncRuntime, image: ImageInput) -> None:
    task = _task("sh", "-c", "echo x > /scratch/f && echo tmpfs-writable; "
                             "echo x > /probe || echo rootfs-read-only",
                 read_only=True, mounts=[pb.Mount(type=pb.Mount.TMPFS, target="/scratch",
                                                  tmpfs_size_bytes=MiB)])
    assert await run_to_exit(runtime, task, image) == 0
    messages = log_messages(runtime, task.id)
    assert "tmpfs-writable" in messages
    assert "rootfs-read-only" in messages
    assert any("Read-only file system" in m for m in messages)


@pytest.mark.parametrize(("user", "expected"), [
    ("www", "1000 1000 1000 50"),
    ("nobody", "65534 65534 65534"),
    ("1000:50", "1000 50 50"),
    ("4242", "4242 0 0"),
])
@needs_root
async def test_user_resolution(runtime: RuncRuntime, image: ImageInput, user: str,
                               expected: str) -> None:
    task = _task("sh", "-c", "echo $(id -u) $(id -g) $(id -G)", user=user)
    assert await run_to_exit(runtime, task, image) == 0
    assert log_messages(runtime, task.id) == [f"{expected}"]


@needs_root
async def test_unknown_user_is_rejected_and_leaves_nothing(runtime: RuncRuntime,
                                                           image: ImageInput) -> None:
    task = _task("id", user="nope")
    with pytest.raises(RejectError) as error:
        await runtime.prepare(task, image)
    assert str(error.value) == "unable to find user nope: no matching entries in passwd file"
    assert leftovers(runtime, task.id) == []


@needs_root
async def test_unknown_executable_is_rejected_and_leaves_nothing(runtime: RuncRuntime,
                                                                 image: ImageInput) -> None:
    task = _task("/bin/nope")
    with pytest.raises(RejectError) as error:
        await runtime.prepare(task, image)
    assert str(error.value) == 'exec: "/bin/nope": not found'
    assert leftovers(runtime, task.id) == []
    task = _task("nope")
    with pytest.raises(RejectError, match=r'exec: "nope": executable file not found in \$PATH'):
        await runtime.prepare(task, image)
    assert leftovers(runtime, task.id) == []


@needs_root
async def test_a_runc_failure_leaves_nothing(runtime: RuncRuntime, busybox_layer: Path,
                                             tmp_path: Path) -> None:
    # A layer where /etc/hosts is a directory: runc fails to bind the hosts file.
    upper = tmp_path / "upper-layer"
    (upper / "etc" / "hosts").mkdir(parents=True)
    broken = ImageInput(layers=(busybox_layer, upper))
    task = _task("sleep", "1000")
    with pytest.raises(ContainerError, match="not a directory") as error:
        await runtime.prepare(task, broken)
    assert not isinstance(error.value, RejectError)
    assert leftovers(runtime, task.id) == []
    assert await runtime.list() == {}


@needs_root
async def test_bind_mounts(runtime: RuncRuntime, image: ImageInput, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    task = _task("ls", "/mnt", mounts=[pb.Mount(type=pb.Mount.BIND, source=str(outside),
                                                target="/mnt")])
    with pytest.raises(RejectError) as error:
        await runtime.prepare(task, image)
    assert f'bind mount source "{outside}" is not under an allowed root' in str(error.value)
    assert leftovers(runtime, task.id) == []

    allowed = runtime.settings.allowed_bind_roots[0] / "data"
    allowed.mkdir()
    (allowed / "hello").write_text("from the host\n")
    task = _task("cat", "/mnt/hello", mounts=[pb.Mount(type=pb.Mount.BIND, source=str(allowed),
                                                       target="/mnt", read_only=True)])
    assert await run_to_exit(runtime, task, image) == 0
    assert log_messages(runtime, task.id) == ["from the host"]


@needs_root
async def test_bind_mounts_are_refused_without_allowed_roots(settings: RuncSettings,
                                                             image: ImageInput) -> None:
    runtime = RuncRuntime(RuncSettings(state_dir=settings.state_dir,
                                       cgroup_parent=settings.cgroup_parent))
    try:
        task = _task("true", mounts=[pb.Mount(type=pb.Mount.BIND, source="/etc", target="/x")])
        with pytest.raises(RejectError, match="bind mounts are disabled on this node"):
            await runtime.prepare(task, image)
        assert leftovers(runtime, task.id) == []
    finally:
        assert await _teardown(settings) == []


@needs_root
async def test_named_volume_persists_across_containers(runtime: RuncRuntime,
                                                       image: ImageInput) -> None:
    mount = pb.Mount(type=pb.Mount.VOLUME, source="appdata", target="/data")
    first = _task("sh", "-c", "cat /data/from-image && echo kept > /data/note", mounts=[mount])
    assert await run_to_exit(runtime, first, image) == 0
    assert log_messages(runtime, first.id) == ["seed"]  # copied from the image
    await runtime.remove(first.id)
    assert leftovers(runtime, first.id) == []
    second = _task("cat", "/data/note", mounts=[mount])
    assert await run_to_exit(runtime, second, image) == 0
    assert log_messages(runtime, second.id) == ["kept"]
    assert (runtime.settings.volumes_dir / "appdata" / "note").read_text() == "kept\n"


@needs_root
async def test_exec_for_health_checks(runtime: RuncRuntime, image: ImageInput) -> None:
    task = _task("sleep", "1000", user="www", env=["PROBE=yes"])
    await runtime.prepare(task, image)
    pid = await runtime.start(task.id)
    assert await runtime.exec(task.id, ["true"], timeout=5) == 0
    assert await runtime.exec(task.id, ["sh", "-c", "exit 4"], timeout=5) == 4
    # With the container's user and env.
    assert await runtime.exec(task.id, ["sh", "-c", '[ "$(id -u)" = 1000 ] && [ "$PROBE" = yes ]'],
                              timeout=5) == 0
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await runtime.exec(task.id, ["sleep", "30"], timeout=0.5)
    assert time.monotonic() - started < 3
    procs = (runtime.settings.cgroup_root / "pids" / runtime.cgroups_path(task.id).lstrip("/")
             / "cgroup.procs")
    deadline = time.monotonic() + 3
    while procs.read_text().split() != [str(pid)]:  # the timed-out process was killed
        assert time.monotonic() < deadline, procs.read_text()
        await asyncio.sleep(0.05)


ADOPT_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from swarm.agent.runtime import ImageConfig, ImageInput, RuncRuntime, RuncSettings
from swarm.api.v1 import objects_pb2 as pb

async def main():
    args = json.loads(sys.argv[1])
    runtime = RuncRuntime(RuncSettings(state_dir=Path(args["state_dir"]),
                                       cgroup_parent=args["cgroup_parent"]))
    task = pb.Task(id=args["id"])
    task.spec.container.command.extend(["sleep", "1000"])
    await runtime.prepare(task, ImageInput(layers=(Path(args["layer"]),)))
    print(await runtime.start(task.id))

asyncio.run(main())
"""


@needs_root
async def test_containers_outlive_the_agent_and_are_adopted(
        runtime: RuncRuntime, settings: RuncSettings, busybox_layer: Path) -> None:
    task_id = uuid.uuid4().hex[:25]
    # "The agent": another process that starts a container and exits.
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ADOPT_SCRIPT,
        json.dumps({"state_dir": str(settings.state_dir), "id": task_id,
                    "cgroup_parent": settings.cgroup_parent, "layer": str(busybox_layer)}),
        stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).parents[2])
    out, _ = await asyncio.wait_for(agent.communicate(), 30)
    assert agent.returncode == 0
    pid = int(out.decode().split()[-1])

    # A new runtime with the same settings finds it running, with the same pid.
    state = (await RuncRuntime(settings).list())[task_id]
    assert (state.status, state.pid, state.exit_code) == ("running", pid, None)
    assert state.monitor_pid is not None
    assert _parent_pid(state.monitor_pid) != os.getpid()

    # It ends while no agent runs: the exit code waits in conmon's exit file.
    os.kill(pid, signal.SIGKILL)
    exit_file = settings.exits_dir / task_id
    deadline = time.monotonic() + 5
    while not exit_file.exists():
        assert time.monotonic() < deadline, "conmon wrote no exit file"
        await asyncio.sleep(0.02)
    adopted = RuncRuntime(settings)
    state = (await adopted.list())[task_id]
    assert (state.status, state.exit_code, state.monitor_pid) == ("stopped", 137, None)
    assert await adopted.wait(task_id) == 137
    await adopted.remove(task_id)
    assert leftovers(adopted, task_id) == []


@needs_root
async def test_wait_follows_a_container_started_by_an_earlier_runtime(
        runtime: RuncRuntime, settings: RuncSettings, image: ImageInput) -> None:
    task = _task("sh", "-c", "sleep 0.3; exit 7")
    await runtime.prepare(task, image)
    await runtime.start(task.id)
    assert await asyncio.wait_for(RuncRuntime(settings).wait(task.id), 10) == 7


@needs_root
async def test_a_pending_wait_survives_remove(runtime: RuncRuntime, image: ImageInput) -> None:
    task = _task("sleep", "1000")
    await runtime.prepare(task, image)
    await runtime.start(task.id)
    waiter = asyncio.create_task(runtime.wait(task.id))
    await asyncio.sleep(0.1)
    await runtime.remove(task.id)
    assert await asyncio.wait_for(waiter, 10) == 128 + signal.SIGKILL
    assert leftovers(runtime, task.id) == []


@needs_root
async def test_containers_prepare_concurrently(runtime: RuncRuntime, image: ImageInput) -> None:
    tasks = [_task("sh", "-c", f"exit {n}") for n in range(5)]
    await asyncio.gather(*(runtime.prepare(task, image) for task in tasks))
    await asyncio.gather(*(runtime.start(task.id) for task in tasks))
    codes = await asyncio.wait_for(asyncio.gather(*(runtime.wait(t.id) for t in tasks)), 10)
    assert codes == list(range(5))
    await asyncio.gather(*(runtime.remove(task.id) for task in tasks))
    assert await runtime.list() == {}


@needs_root
async def test_an_oom_kill_is_reported(runtime: RuncRuntime, image: ImageInput) -> None:
    task = _task("sh", "-c", "a=xxxxxxxx; while true; do a=$a$a; done")
    task.spec.resources.CopyFrom(_resources(memory=16 * MiB))
    assert await run_to_exit(runtime, task, image) == 128 + signal.SIGKILL
    state = (await runtime.list())[task.id]
    assert state.oom_killed



def _record_runc(runtime: RuncRuntime) -> list[tuple[str, ...]]:
    """From now on, the arguments of every runc process the runtime runs."""
    commands: list[tuple[str, ...]] = []
    real_runc = runtime._runc

    async def recording(*args: str, limit: float | None = None) -> tuple[int, str, str]:
        commands.append(args)
        return await real_runc(*args, limit=limit)

    runtime._runc = recording  # type: ignore[method-assign]
    return commands


@needs_root
async def test_start_releases_the_init_through_runcs_exec_fifo(runtime: RuncRuntime,
                                                              image: ImageInput) -> None:
    """start() does what `runc start` does (open runc's exec FIFO, read, remove
    it) without running runc; runc then sees the container running."""
    task = _task("sleep", "1000")
    await runtime.prepare(task, image)
    fifo = runtime.settings.runc_root_dir / task.id / "exec.fifo"
    assert fifo.exists()
    commands = _record_runc(runtime)
    pid = await runtime.start(task.id)
    assert commands == []  # no runc process on the way
    assert not fifo.exists()
    state = json.loads(_runc_sync(runtime.settings, "state", task.id))
    assert (state["status"], state["pid"]) == ("running", pid)
    deadline = time.monotonic() + 5  # its FIFO closes early in the exec, before argv is set
    while _cmdline(pid)[:2] != [b"sleep", b"1000"]:
        assert time.monotonic() < deadline, _cmdline(pid)
        await asyncio.sleep(0.01)
    # A second start: no FIFO any more, so runc is asked (it refuses: running).
    assert await runtime.start(task.id) == pid
    assert [args[0] for args in commands] == ["start", "state"]
    await runtime.remove(task.id)
    assert leftovers(runtime, task.id) == []


@needs_root
async def test_start_of_a_container_whose_init_died_fails(runtime: RuncRuntime,
                                                          image: ImageInput) -> None:
    task = _task("sleep", "1000")
    await runtime.prepare(task, image)
    init = int((runtime.bundle_dir(task.id) / "pidfile").read_text())
    os.kill(init, signal.SIGKILL)
    with pytest.raises(ContainerError, match=r"already dead|not running|stopped|cannot start"):
        await asyncio.wait_for(runtime.start(task.id), 10)
    await runtime.remove(task.id)
    assert leftovers(runtime, task.id) == []



@needs_root
async def test_removal_of_a_stopped_container_runs_no_runc(runtime: RuncRuntime,
                                                           image: ImageInput) -> None:
    """remove() of an exited container does what `runc delete` would (its
    cgroups and runc's state directory) without a runc process; a running
    one is killed by runc, and once dead deleted the same way."""
    exited, running = _task("sh", "-c", "exit 4"), _task("sleep", "1000")
    assert await run_to_exit(runtime, exited, image) == 4
    await runtime.prepare(running, image)
    await runtime.start(running.id)
    assert any(d.exists() for d in runtime.cgroup_dirs(exited.id))
    commands = _record_runc(runtime)
    await runtime.remove(exited.id)
    assert commands == []
    assert leftovers(runtime, exited.id) == []
    assert not (runtime.settings.runc_root_dir / exited.id).exists()
    assert await runtime.wait(exited.id) == 4  # remembered
    await runtime.remove(running.id)
    assert [args[0] for args in commands] == ["state", "kill"]
    assert leftovers(runtime, running.id) == []

BURST_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from swarm.agent.runtime import ImageInput, RuncRuntime, RuncSettings
from swarm.api.v1 import objects_pb2 as pb

async def main():
    args = json.loads(sys.argv[1])
    runtime = RuncRuntime(RuncSettings(state_dir=Path(args["state_dir"]),
                                       cgroup_parent=args["cgroup_parent"]))

    async def up(task_id):
        task = pb.Task(id=task_id)
        task.spec.container.command.extend(["sleep", "1000"])
        await runtime.prepare(task, ImageInput(layers=(Path(args["layer"]),)))
        await runtime.start(task_id)
        print("started", task_id, flush=True)

    print("go", flush=True)
    await asyncio.gather(*(up(task_id) for task_id in args["ids"]))
    await asyncio.sleep(1000)

asyncio.run(main())
"""


@needs_root
async def test_an_agent_killed_during_a_burst_of_starts_leaves_nothing_after_removal(
        runtime: RuncRuntime, settings: RuncSettings, busybox_layer: Path) -> None:
    """SIGKILL while containers are half made (namespaces made in the loop's
    thread, overlays mounted, some created, some started): a new runtime
    finds every one of them and removing them leaves nothing behind (the
    runtime fixture checks the whole state dir, runc root, cgroups and
    namespaces too)."""
    ids = [uuid.uuid4().hex[:25] for _ in range(6)]
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", BURST_SCRIPT,
        json.dumps({"state_dir": str(settings.state_dir), "ids": ids,
                    "cgroup_parent": settings.cgroup_parent, "layer": str(busybox_layer)}),
        stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).parents[2])
    assert agent.stdout is not None
    assert await asyncio.wait_for(agent.stdout.readline(), 30) == b"go\n"
    assert (await asyncio.wait_for(agent.stdout.readline(), 30)).startswith(b"started ")
    agent.kill()  # one started, the others anywhere on their way
    await agent.wait()

    adopted = RuncRuntime(settings)
    found = await adopted.list()
    made = [task_id for task_id in ids if adopted.netns_path(task_id).exists()
            or adopted.bundle_dir(task_id).exists()]
    assert set(made) <= set(found)  # whatever was begun is listed
    assert any(state.status == "running" for state in found.values())
    for task_id in found:
        await adopted.shutdown(task_id, "SIGKILL", grace=1)
        await adopted.remove(task_id)
    for task_id in ids:
        assert leftovers(adopted, task_id) == []
