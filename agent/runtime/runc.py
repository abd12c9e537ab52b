"""The runtime on runc, with conmon as each container's monitor.

conmon (`conmon ... -r runc -b BUNDLE`) runs `runc create` and stays as the
container's parent: it writes the container's output to a CRI-format log file
and its exit code to an exit file, and it is reparented away from the agent
(it forks and the first process exits), so an agent restart loses nothing. A
new RuncRuntime with the same settings finds every container again through
runc's state (its own runc --root) and the files under its state dir.

Layout under RuncSettings.state_dir:

    bundles/ID/      config.json, rootfs (overlay mount), upper, work, hosts,
                     hostname, resolv.conf, pidfile, conmon.pid, persist/,
                     payloads/ (a tmpfs: the task's secrets and configs)
                     log-limits.json (the task's max-size and max-file)
    exits/ID         the exit code, written by conmon
    logs/ID.log      the container's output (k8s-file format); ID.log.1, ...
                     its rotated files, ID.log.0 the agent's hold on the
                     current one (agent/logfile.py)
    volumes/NAME/    named volumes (kept across containers)
    sock/ID          conmon's attach-socket link
    runc/            runc --root (unless set elsewhere)

Modes: the state dir and every directory the runtime makes are 0700 (a
container's environment is in its config.json, its output in its log),
config.json and the other bundle files are 0600, and conmon makes the logs
0640 (root's group only). The files a container sees (hosts, hostname,
resolv.conf) are 0644: they are bind-mounted into it, where its user reads
them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import posixpath
import re
import resource
import shutil
import signal
import threading
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from swarm.api import generic_resources, logopts
from swarm.api.v1 import objects_pb2 as pb
from swarm.host import fsflags, mounts
from swarm.host.netns import NetnsMaker, netns_path, remove_netns

from .. import timing
from ..logfile import keep_rotated, log_files
from ..node_resources import DeviceBacking, device_paths
from . import rootfs as fs
from . import seccomp
from .base import (
    ContainerError,
    ContainerState,
    ContainerStatus,
    ImageInput,
    NoSuchContainer,
    PayloadFile,
    RejectError,
)
from .spec import (
    DEFAULT_PATH,
    DEFAULT_PIDS_LIMIT,
    ContainerPlan,
    DevicePlan,
    MountPlan,
    ProcessPlan,
    SecurityPlan,
    build_config,
    capabilities_for,
    check_container_id,
    check_mounts,
    env_value,
    hostname_for,
    hosts_file,
    merge_env,
    parse_signal,
    plan_device,
    plan_process,
    plan_resources,
    plan_security,
    resolv_conf,
    resolve_groups,
    resolve_user,
)

log = logging.getLogger(__name__)

_SUN_PATH_MAX = 107  # bytes of a unix socket path, without the NUL
_LOGRUS_MSG_RE = re.compile(r'msg="((?:[^"\\]|\\.)*)"')
_MONITOR_EXIT_WAIT = 5.0
_UNKNOWN_EXIT = 255
_SIGKILL = int(signal.SIGKILL)
_MAX_NOFILE = 1_048_576
_REMEMBERED_EXITS = 1024
_LIST_ATTEMPTS = 5
_LayerChains = list[tuple[Path, ...]]  # (the class's list() hides the builtin inside it)


@dataclass(frozen=True)
class RuncSettings:
    """One agent's runtime. Several agents on one machine need distinct
    state_dir, runc_root, cgroup_parent and netns_prefix (the defaults of the
    last two derive from cgroup_parent)."""

    state_dir: Path
    cgroup_parent: str = "swarm"
    runc_root: Path | None = None  # default: state_dir/runc
    netns_prefix: str = ""  # default: "<cgroup_parent>-"
    log_dir: Path | None = None  # default: state_dir/logs
    socket_dir: Path | None = None  # default: state_dir/sock (keep it short: unix socket paths)
    runc_path: Path = Path("/usr/sbin/runc")
    conmon_path: Path = Path("/usr/bin/conmon")
    allowed_bind_roots: tuple[Path, ...] = ()  # empty: bind mounts refused
    pids_limit: int = DEFAULT_PIDS_LIMIT
    # A task's log: rotated at max_size, max_file files kept (unless the
    # service's --log-opt says otherwise; swarm/api/logopts.py).
    log_limits: logopts.LogLimits = field(default_factory=logopts.LogLimits)
    apparmor_profile: str = ""  # loaded by the agent (agent/apparmor.py); "": none
    command_timeout: float = 30.0  # for any one runc or conmon invocation
    cgroup_root: Path = Path("/sys/fs/cgroup")
    host_resolv_conf: Path = Path("/etc/resolv.conf")
    extra_annotations: tuple[tuple[str, str], ...] = ()
    # Device-backed generic resource units (agent/node_resources.py): a task
    # given one of these units gets its device nodes.
    resource_devices: tuple[DeviceBacking, ...] = ()

    def __post_init__(self) -> None:
        parent = self.cgroup_parent.strip("/")
        if not parent or any(part in ("", ".", "..") for part in parent.split("/")):
            raise ValueError(f"invalid cgroup parent {self.cgroup_parent!r}")

    @property
    def runc_root_dir(self) -> Path:
        return self.runc_root or self.state_dir / "runc"

    @property
    def logs_dir(self) -> Path:
        return self.log_dir or self.state_dir / "logs"

    @property
    def sockets_dir(self) -> Path:
        return self.socket_dir or self.state_dir / "sock"

    @property
    def bundles_dir(self) -> Path:
        return self.state_dir / "bundles"

    @property
    def exits_dir(self) -> Path:
        return self.state_dir / "exits"

    @property
    def volumes_dir(self) -> Path:
        return self.state_dir / "volumes"

    @property
    def netns_name_prefix(self) -> str:
        return self.netns_prefix or self.cgroup_parent.strip("/").replace("/", "-") + "-"


def _runc_message(text: str) -> str:
    """The msg="..." of runc's logrus lines, or the text itself."""
    messages = []
    for match in _LOGRUS_MSG_RE.finditer(text):
        raw = match.group(1)
        try:
            messages.append(json.loads(f'"{raw}"'))
        except ValueError:
            messages.append(raw.replace('\\"', '"'))
    return "; ".join(messages) if messages else text.strip()


def host_device(mapping: pb.DeviceMapping) -> DevicePlan:
    """The node's device for a --device: a node without it rejects the task,
    with docker's words."""
    try:
        found = os.stat(mapping.path_on_host)
    except OSError as error:
        raise RejectError(f"error gathering device information while adding custom device "
                          f"{mapping.path_on_host!r}: {error.strerror or error}") from None
    return plan_device(mapping, found.st_mode, found.st_rdev, found.st_uid, found.st_gid)


async def wait_pid_exit(pid: int) -> None:
    """Until the process (any process, not only a child) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _write_private(path: Path, text: str) -> None:
    """A new file only root can read (0600 whatever the umask)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(fd, 0o600)
        file.write(text)


def runc_deletes_only_files(state: Mapping[str, Any], init_stat: str | None) -> bool:
    """Whether `runc delete` of this container would only remove its cgroups
    and its state directory: runc calls it stopped (libcontainer's runType():
    the init process that state.json names, by pid and start time in clock
    ticks, is gone, a zombie, or the pid now belongs to a process started
    at another time), it had a pid namespace of its own (so the kernel
    killed every process in it with its init; with a shared one runc kills
    what is left in the cgroup), and no poststop hooks or Intel RDT group.
    init_stat: the text of /proc/PID/stat for that pid (None: no such pid).
    runc 1.1's delete.go and destroy() in libcontainer/state_linux.go."""
    config = state.get("config")
    if not isinstance(config, Mapping):
        return False
    own_pid = any(isinstance(ns, Mapping) and ns.get("type") == "NEWPID" and not ns.get("path")
                  for ns in config.get("namespaces") or ())
    hooks = config.get("Hooks") or {}
    if not own_pid or (isinstance(hooks, Mapping) and hooks.get("poststop")) \
            or state.get("intel_rdt_path"):
        return False
    if init_stat is None:
        return True
    fields = init_stat.rpartition(")")[2].split()
    if len(fields) < 20:
        return False  # not a stat line we know: let runc look
    if fields[0] in ("Z", "X"):
        return True
    return fields[19] != str(state.get("init_process_start"))


def _process_alive(pid: int) -> bool:
    """Running (a zombie is not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as file:
            state = file.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


class RuncRuntime:
    """The Runtime protocol on runc + conmon (see module doc)."""

    def __init__(self, settings: RuncSettings) -> None:
        self.settings = settings
        # Where the filesystem can, the directories where containers' files
        # come and go (each container's bundle and runc state directory; the
        # logs, exit files and socket links) each get block groups of their
        # own: ext4 without a journal delays the reuse of freed inodes, and a
        # creation scans past the group's recently freed ones (see
        # swarm/host/fsflags.py). The state dir first, so that its
        # subdirectories are spread as they are made.
        spread = (settings.state_dir, settings.bundles_dir, settings.runc_root_dir)
        for directory in (settings.state_dir, settings.bundles_dir, settings.exits_dir,
                          settings.volumes_dir, settings.logs_dir, settings.sockets_dir,
                          settings.runc_root_dir):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            directory.chmod(0o700)  # also when an older agent made it with the umask's mode
            if directory in spread:
                try:
                    fsflags.spread_subdirectories(directory)
                except OSError as error:
                    log.info("cannot set the TOPDIR flag on %s: %s", directory, error)
        self._rotation = threading.Lock()  # rotation passes vs a container's removal
        self._log_limits: dict[str, logopts.LogLimits] = {}  # read once per container
        self._arch = seccomp.native_arch()
        self._kernel = seccomp.kernel_version()
        self._cpu_count = os.cpu_count() or 1
        self._swap_accounting = (
            settings.cgroup_root / "memory" / "memory.memsw.limit_in_bytes").exists()
        self._locks: dict[str, asyncio.Lock] = {}
        self._netns = NetnsMaker()  # in the loop's thread: see NetnsMaker
        # Exit codes of containers removed here, for a wait() that was still
        # pending when remove() deleted the exit file (bounded, oldest first out).
        self._removed_exits: dict[str, int] = {}
        # Containers get the agent's hard limit of open files as both limits
        # (docker gives 1048576, which needs CAP_SYS_RESOURCE to raise to).
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        self._nofile = _MAX_NOFILE if hard == resource.RLIM_INFINITY else min(hard, _MAX_NOFILE)

    # ------------------------------------------------------------ paths

    def bundle_dir(self, task_id: str) -> Path:
        return self.settings.bundles_dir / task_id

    def log_path(self, task_id: str) -> Path:
        """The container's output, one CRI log line per line written."""
        return self.settings.logs_dir / f"{task_id}.log"

    def netns_name(self, task_id: str) -> str:
        return self.settings.netns_name_prefix + task_id

    def netns_path(self, task_id: str) -> Path:
        """The container's network namespace (for the network attachments)."""
        return netns_path(self.netns_name(task_id))

    def cgroups_path(self, task_id: str) -> str:
        return f"/{self.settings.cgroup_parent.strip('/')}/{task_id}"

    def cgroup_dirs(self, task_id: str) -> list[Path]:
        """The container's cgroup directory in every mounted hierarchy."""
        relative = self.cgroups_path(task_id).lstrip("/")
        root = self.settings.cgroup_root
        if not root.is_dir():
            return []
        return [hierarchy / relative for hierarchy in sorted(root.iterdir())
                if hierarchy.is_dir() and not hierarchy.is_symlink()]

    def _exit_file(self, task_id: str) -> Path:
        return self.settings.exits_dir / task_id

    def _lock(self, task_id: str) -> asyncio.Lock:
        return self._locks.setdefault(task_id, asyncio.Lock())

    # ------------------------------------------------------------ runc

    async def _runc(self, *args: str, limit: float | None = None) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            str(self.settings.runc_path), "--root", str(self.settings.runc_root_dir), *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(process.communicate(),
                                              limit or self.settings.command_timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise
        assert process.returncode is not None
        return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    async def _runc_state(self, task_id: str) -> dict[str, Any] | None:
        code, out, _ = await self._runc("state", task_id)
        if code != 0:
            return None
        return cast(dict[str, Any], json.loads(out))

    # ------------------------------------------------------------ the monitor

    def _monitor_pid(self, task_id: str) -> int | None:
        """The live conmon of this container, if any."""
        try:
            pid = int((self.bundle_dir(task_id) / "conmon.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        if not cmdline or not cmdline[0].endswith(b"conmon"):
            return None
        wanted = [b"-c", task_id.encode()]
        if not any(cmdline[i:i + 2] == wanted for i in range(len(cmdline) - 1)):
            return None
        return pid if _process_alive(pid) else None

    def _read_exit_code(self, task_id: str) -> int | None:
        try:
            return int(self._exit_file(task_id).read_text().strip())
        except (OSError, ValueError):
            return None

    async def _spawn_monitor(self, task_id: str, bundle: Path, log_size_max: int, *,
                             terminal: bool = False) -> int:
        """conmon + `runc create`; returns the container pid once CREATED."""
        settings = self.settings
        socket_link = settings.sockets_dir / task_id
        if len(f"{socket_link}/attach".encode()) > _SUN_PATH_MAX:
            raise ContainerError(f"socket dir {settings.sockets_dir} is too long for a unix "
                                 "socket path; set a shorter RuncSettings.socket_dir")
        args = [
            "--api-version", "1",
            "-c", task_id, "-u", task_id, "-n", task_id,
            "-r", str(settings.runc_path),
            "-b", str(bundle),
            "-p", str(bundle / "pidfile"),
            "-P", str(bundle / "conmon.pid"),
            "-l", f"k8s-file:{self.log_path(task_id)}",
            "--exit-dir", str(settings.exits_dir),
            "--persist-dir", str(bundle / "persist"),
            "--socket-dir-path", str(settings.sockets_dir),
            "--runtime-arg", f"--root={settings.runc_root_dir}",
        ]
        if log_size_max > 0:
            args += ["--log-size-max", str(log_size_max)]
        if terminal:  # conmon holds the pty's master and logs what the task writes to it
            args.append("--terminal")
        read_fd, write_fd = os.pipe()
        env = {"PATH": os.environ.get("PATH", DEFAULT_PATH), "_OCI_SYNCPIPE": str(write_fd)}
        try:
            process = await asyncio.create_subprocess_exec(
                str(settings.conmon_path), *args, env=env, cwd=bundle, pass_fds=(write_fd,),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE)
        except OSError as error:
            os.close(read_fd)
            raise ContainerError(f"cannot run conmon {settings.conmon_path}: {error}") from error
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        try:
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", 0))
        except BaseException:
            os.close(read_fd)
            raise
        try:
            # The first conmon exits as soon as it has forked the monitor.
            _, err = await asyncio.wait_for(process.communicate(), settings.command_timeout)
            if process.returncode != 0:
                raise ContainerError(f"conmon failed ({process.returncode}): "
                                     f"{err.decode(errors='replace').strip()}")
            timing.mark("conmon")
            # The monitor writes the container pid (or runc's error) once created.
            line = await asyncio.wait_for(reader.readline(), settings.command_timeout)
        finally:
            transport.close()
        if not line:
            raise ContainerError("conmon exited before the container was created")
        message = json.loads(line)
        pid = int(message.get("data", -1))
        if pid <= 0:
            text = _runc_message(str(message.get("message", ""))) or "no error message"
            raise ContainerError(text if text.startswith("runc create failed")
                                 else f"runc create failed: {text}")
        return pid

    # ------------------------------------------------------------ prepare

    async def prepare(self, task: pb.Task, image: ImageInput,
                      files: Sequence[PayloadFile] = ()) -> None:
        task_id = task.id
        check_container_id(task_id)
        container = task.spec.container
        hostname = hostname_for(task)
        process = plan_process(container, image.config, hostname)
        assigned = task.assigned_generic_resources
        if assigned:  # after the service's own env, as docker appends it
            process = dataclasses.replace(
                process, env=tuple(merge_env(process.env, generic_resources.env(assigned))))
        check_mounts(container.mounts)
        resources = plan_resources(task.spec.resources,
                                   pids_limit=container.pids_limit or self.settings.pids_limit,
                                   cpu_count=self._cpu_count,
                                   swap_accounting=self._swap_accounting)
        security = plan_security(container.privileges,
                                 apparmor_profile=self.settings.apparmor_profile,
                                 arch=self._arch, kernel=self._kernel)
        log_limits = logopts.limits(task.spec.log_driver, self.settings.log_limits)
        binds = {index: fs.check_bind_source(mount.source, self.settings.allowed_bind_roots)
                 for index, mount in enumerate(container.mounts)
                 if mount.type == pb.Mount.BIND}
        mappings = list(container.devices)
        given = {m.path_on_host for m in mappings}
        mappings += [pb.DeviceMapping(path_on_host=host, path_in_container=target)
                     for host, target in device_paths(self.settings.resource_devices, assigned)
                     if host not in given]
        devices = tuple(host_device(mapping) for mapping in mappings)
        timing.mark("plan")
        async with self._lock(task_id):
            self._removed_exits.pop(task_id, None)
            if self.bundle_dir(task_id).exists() or self._exit_file(task_id).exists():
                state = await self._runc_state(task_id)
                if state is not None:
                    if state.get("status") == "created":
                        return  # prepared already (e.g. before an agent restart)
                    raise ContainerError(f"container {task_id} already exists "
                                         f"({state.get('status')})")
                log.info("task %s: removing leftovers of an earlier attempt", task_id)
                await self._cleanup(task_id)
            created_volumes: list[Path] = []
            try:
                await self._prepare(task, image, hostname, process, resources, binds,
                                    devices, created_volumes, files, security=security,
                                    log_limits=log_limits)
            except BaseException as error:
                log.info("task %s: prepare failed (%s); cleaning up", task_id, error)
                await asyncio.shield(self._cleanup(task_id, created_volumes,
                                                   failed_prepare=True))
                raise

    async def _prepare(self, task: pb.Task, image: ImageInput, hostname: str,
                       process: ProcessPlan, resources: dict[str, Any], binds: dict[int, Path],
                       devices: tuple[DevicePlan, ...], created_volumes: list[Path],
                       payload_files: Sequence[PayloadFile] = (), *, security: SecurityPlan,
                       log_limits: logopts.LogLimits) -> None:
        task_id = task.id
        container = task.spec.container
        self._log_limits[task_id] = log_limits  # before the rotation pass sees the bundle
        bundle = self.bundle_dir(task_id)
        bundle.mkdir(mode=0o700, parents=True)
        # The merged root takes the upper dir's mode: 0755, or a container
        # user other than root could not even look up /bin/sh.
        (bundle / "upper").mkdir()
        (bundle / "upper").chmod(0o755)
        for name in ("work", "persist"):
            (bundle / name).mkdir(mode=0o700)
        root = bundle / "rootfs"
        layers = image.layers
        if not layers:
            (bundle / "empty").mkdir()
            layers = (bundle / "empty",)
        fs.mount_overlay(layers, bundle / "upper", bundle / "work", root)
        timing.mark("mount")

        group_file = fs.read_in_root(root, "/etc/group")
        user = resolve_groups(resolve_user(process.user, fs.read_in_root(root, "/etc/passwd"),
                                           group_file), container.groups, group_file)
        fs.find_executable(root, process.args[0], env_value(process.env, "PATH") or "",
                           process.cwd)

        mounts: list[MountPlan] = []
        for index, mount in enumerate(container.mounts):
            target = posixpath.normpath(mount.target)
            if mount.type == pb.Mount.BIND:
                mounts.append(MountPlan("bind", target, str(binds[index]), mount.read_only))
            elif mount.type == pb.Mount.VOLUME:
                if mount.source:
                    directory = self.settings.volumes_dir / mount.source
                else:  # anonymous: lives and dies with the container
                    directory = bundle / "volumes" / str(index)
                created = await asyncio.to_thread(fs.ensure_volume, directory, root, target)
                if created and mount.source:
                    created_volumes.append(directory)
                mounts.append(MountPlan("bind", target, str(directory), mount.read_only))
            else:
                mounts.append(MountPlan("tmpfs", target, read_only=mount.read_only,
                                        tmpfs_size=mount.tmpfs_size_bytes))

        if payload_files:
            mounts += await asyncio.to_thread(self._write_payloads, bundle, payload_files)
        timing.mark("rootfs-lookups")

        try:
            host_resolv = self.settings.host_resolv_conf.read_text()
        except OSError:
            host_resolv = ""
        (bundle / "hosts").write_text(hosts_file(hostname, extra=container.hosts))
        (bundle / "hostname").write_text(hostname + "\n")
        (bundle / "resolv.conf").write_text(
            resolv_conf(host_resolv, embedded_dns=bool(task.networks),
                        dns=container.dns_config))
        files = (("/etc/hosts", str(bundle / "hosts")),
                 ("/etc/hostname", str(bundle / "hostname")),
                 ("/etc/resolv.conf", str(bundle / "resolv.conf")))

        # Host networking: no namespace of its own (none to remove later either:
        # remove_netns of a name never made is a no-op).
        timing.mark("bundle-files")
        netns = None if task.spec.host_network else self._netns.make(self.netns_name(task_id))
        timing.mark("netns")
        plan = ContainerPlan(
            hostname=hostname, process=process, user=user, rootfs=str(root),
            read_only=container.read_only, mounts=tuple(mounts), files=files,
            netns_path=None if netns is None else str(netns),
            cgroups_path=self.cgroups_path(task_id),
            resources=resources, nofile_limit=self._nofile,
            capabilities=tuple(capabilities_for(container)),
            sysctls=tuple(sorted(container.sysctls.items())), ulimits=tuple(container.ulimits),
            devices=devices, terminal=container.tty,
            annotations=(("swarm.task.id", task_id), ("swarm.service.id", task.service_id),
                         *self.settings.extra_annotations),
            security=security)
        # Compact: json's indenting encoder is the pure-Python one, five times
        # slower (0.26 vs 0.05 ms with the default seccomp profile), per start.
        _write_private(bundle / "config.json", json.dumps(build_config(plan)))
        _write_private(bundle / "log-limits.json", json.dumps(
            {"max_size": log_limits.max_size, "max_file": log_limits.max_file}))
        timing.mark("config")
        pid = await self._spawn_monitor(task_id, bundle, log_limits.max_size,
                                        terminal=container.tty)
        timing.mark("conmon-create")
        log.info("task %s: container created (pid %d)", task_id, pid)

    # ------------------------------------------------------------ secrets and configs

    def payloads_dir(self, task_id: str) -> Path:
        return self.bundle_dir(task_id) / "payloads"

    def _write_payloads(self, bundle: Path, files: Sequence[PayloadFile]) -> list[MountPlan]:
        """A tmpfs under the bundle with one file per payload (its uid, gid
        and mode), each bind-mounted read-only at its place in the container
        (agent/payloads.py). Never on persistent disk."""
        directory = bundle / "payloads"
        directory.mkdir(mode=0o700)
        mounts.mount_tmpfs(directory, sum(len(f.data) + 4096 for f in files) + 4096)
        plans = []
        for index, file in enumerate(files):
            host = directory / f"{file.kind}-{index}"
            fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, file.data)
                os.fchown(fd, file.uid, file.gid)
                os.fchmod(fd, file.mode)
            finally:
                os.close(fd)
            plans.append(MountPlan("bind", file.path, str(host), read_only=True))
        return plans

    async def release_payloads(self, task_id: str) -> None:
        directory = self.payloads_dir(task_id)
        if not directory.exists():
            return
        await asyncio.to_thread(mounts.remove_tree, directory)
        log.info("task %s: secrets and configs removed", task_id)

    # ------------------------------------------------------------ cleanup

    async def _stop_monitor(self, task_id: str) -> None:
        pid = self._monitor_pid(task_id)
        if pid is None:
            return
        try:
            await asyncio.wait_for(wait_pid_exit(pid), _MONITOR_EXIT_WAIT)
        except TimeoutError:
            log.warning("task %s: conmon %d did not exit; killing it", task_id, pid)
            if self._monitor_pid(task_id) == pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    async def _cleanup(self, task_id: str, created_volumes: Sequence[Path] = (), *,
                       failed_prepare: bool = False) -> None:
        """Delete everything of the container; every step runs even if an
        earlier one failed, and the first error is raised at the end."""
        errors: list[BaseException] = []

        async def step(what: str, action: Callable[[], object]) -> None:
            try:
                result = action()
                if isinstance(result, Awaitable):
                    await result
            except Exception as error:
                log.warning("task %s: cleanup: %s failed: %s", task_id, what, error)
                errors.append(error)

        async def kill() -> None:
            # Kill and let conmon reap: `runc delete --force` of a live container
            # would poll for its death in 100 ms steps.
            if self._read_exit_code(task_id) is not None and self._monitor_pid(task_id) is None:
                return  # conmon recorded the exit and is gone: nothing to kill, no `runc state`
            state = await self._runc_state(task_id)
            if state is None or state.get("status") == "stopped":
                return
            await self._runc("kill", task_id, str(_SIGKILL))
            try:
                await asyncio.wait_for(self._wait_exit(task_id), _MONITOR_EXIT_WAIT)
            except TimeoutError:
                log.warning("task %s: still alive %.0fs after SIGKILL", task_id,
                            _MONITOR_EXIT_WAIT)

        async def runc_delete() -> None:
            if self._delete_stopped(task_id):
                return
            code, _, err = await self._runc("delete", "--force", task_id)
            if code != 0 and "not exist" not in err:
                raise ContainerError(f"runc delete: {_runc_message(err)}")

        bundle = self.bundle_dir(task_id)
        await step("kill", kill)
        await step("runc delete", runc_delete)
        await step("stop conmon", lambda: self._stop_monitor(task_id))
        if failed_prepare and await self._runc_state(task_id) is not None:
            await step("runc delete", runc_delete)  # the create was still running
        failures = len(errors)
        # The one read of the mount table for this container (rootfs overlay,
        # secrets tmpfs); the files' removal trusts it unless it failed.
        await step("unmount", lambda: mounts.unmount_all_under(bundle))
        unmounted = len(errors) == failures
        await step("remove netns", lambda: remove_netns(self.netns_name(task_id)))
        await step("remove cgroups", lambda: self._remove_cgroups(task_id))
        self._remember_exit(task_id)
        await step("remove files", lambda: asyncio.to_thread(self._remove_files, task_id,
                                                             unmounted=unmounted))
        for volume in created_volumes:
            await step(f"remove volume {volume}",
                       functools.partial(asyncio.to_thread, fs.remove_tree, volume))
        if errors:
            raise ContainerError(f"cleanup of {task_id} incomplete: {errors[0]}") from errors[0]

    def _delete_stopped(self, task_id: str) -> bool:
        """`runc delete` of a stopped container without a runc process (a Go
        binary: several ms of CPU each, 50 of them when a service of 50 goes,
        at the same time as other starts): its cgroups, then its state
        directory, as runc 1.1's destroy() does. False when runc must do it
        (not known stopped, a shared pid namespace, a cgroup still busy):
        the caller asks `runc delete --force`, which says why."""
        root = self.settings.runc_root_dir / task_id
        try:
            state = json.loads((root / "state.json").read_text())
        except FileNotFoundError:
            # No such container: nothing to delete. A directory without a
            # state (a create under way?) is runc's call.
            return not root.exists()
        except (OSError, ValueError):
            return False
        pid = state.get("init_process_pid")
        try:
            init_stat: str | None = Path(f"/proc/{int(pid)}/stat").read_text(
                encoding="ascii", errors="replace")
        except (OSError, TypeError, ValueError):
            init_stat = None
        if not runc_deletes_only_files(state, init_stat):
            return False
        try:
            self._remove_cgroups(task_id)
        except OSError as error:
            log.debug("task %s: cgroups not removed (%s): asking runc", task_id, error)
            return False
        shutil.rmtree(root, ignore_errors=True)
        return not root.exists()

    def _remove_cgroups(self, task_id: str) -> None:
        for directory in self.cgroup_dirs(task_id):
            if not directory.is_dir():
                continue
            # Nested groups first (runc makes none, but a container might).
            nested = sorted((p for p in directory.rglob("*") if p.is_dir()),
                            key=lambda p: len(p.parts), reverse=True)
            for path in [*nested, directory]:
                with contextlib.suppress(FileNotFoundError):
                    path.rmdir()

    def _remember_exit(self, task_id: str) -> None:
        code = self._read_exit_code(task_id)
        if code is not None:
            self._removed_exits[task_id] = code
            while len(self._removed_exits) > _REMEMBERED_EXITS:
                del self._removed_exits[next(iter(self._removed_exits))]

    def _remove_files(self, task_id: str, *, unmounted: bool = False) -> None:
        with self._rotation:
            self._log_limits.pop(task_id, None)
            for path in (self._exit_file(task_id), *map(Path, log_files(str(self.log_path(task_id)))),
                         self.settings.sockets_dir / task_id):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        fs.remove_tree(self.bundle_dir(task_id), unmounted=unmounted)

    # ------------------------------------------------------------ lifecycle

    async def start(self, task_id: str) -> int:
        pid = self._read_pid(task_id)
        started = await self._release_init(task_id, pid) if pid else False
        if started:
            return pid
        code, _, err = await self._runc("start", task_id)
        if code != 0:
            state = await self._runc_state(task_id)
            if state is None:
                raise NoSuchContainer(f"no such container: {task_id}")
            if state.get("status") != "running":
                raise ContainerError(f"runc start {task_id}: {_runc_message(err)}")
        pid = self._read_pid(task_id)
        if pid:
            return pid
        state = await self._runc_state(task_id)
        return int(state.get("pid", 0)) if state else 0

    def _read_pid(self, task_id: str) -> int:
        """The container's pid as conmon wrote it after `runc create` (0: none)."""
        try:
            return int((self.bundle_dir(task_id) / "pidfile").read_text().strip())
        except (OSError, ValueError):
            return 0

    async def _release_init(self, task_id: str, pid: int) -> bool:
        """What `runc start` does for a created container, without a runc
        process (a Go binary: about 5 ms of CPU and, during a burst of
        starts, 100+ ms of waiting for a core): runc's init waits in the
        container, blocked opening runc's exec FIFO for writing, until someone
        opens it for reading; it then writes one byte and execs the task's
        process (the FIFO's write end is close-on-exec: EOF). runc start reads
        everything and removes the FIFO (runc then calls the container running:
        its status is "created" while the FIFO exists). runc 1.1's
        libcontainer/container_linux.go exec(), verified with runc 1.1.5.

        False when there is no FIFO (not created by runc as we know it, or
        started already): the caller asks `runc start` itself, which says
        why. Raises ContainerError when the init dies before it exec'd."""
        fifo = self.settings.runc_root_dir / task_id / "exec.fifo"
        try:
            # Non-blocking: the open returns at once (and wakes the init's open);
            # the data comes when it comes. Linux signals no hang-up on a FIFO
            # whose writer never opened it, so readiness means data or EOF.
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            received = await self._drain_fifo(fd, pid)
        finally:
            os.close(fd)
        if not received:
            raise ContainerError(f"runc start {task_id}: container process is already dead")
        with contextlib.suppress(FileNotFoundError):
            fifo.unlink()
        return True

    async def _drain_fifo(self, fd: int, pid: int) -> bytes:
        """Everything written to the FIFO until its writer is gone (the init
        exec'd or died), or b"" if the init (pid) exits without writing."""
        loop = asyncio.get_running_loop()
        received = bytearray()
        done: asyncio.Future[None] = loop.create_future()

        def on_readable() -> None:
            while not done.done():
                try:
                    chunk = os.read(fd, 64)
                except BlockingIOError:
                    return  # the writer is still there: more to come
                if not chunk:
                    done.set_result(None)  # EOF: the writer closed it (exec)
                    return
                received.extend(chunk)

        loop.add_reader(fd, on_readable)
        # The init may be dead already (killed while created): then nobody
        # ever opens the write end and the FIFO never turns readable.
        died = asyncio.ensure_future(wait_pid_exit(pid))
        try:
            await asyncio.wait({done, died}, timeout=self.settings.command_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
            if not done.done() and died.done():
                on_readable()  # what it wrote before it went
            elif not done.done() and not received:
                raise ContainerError(f"the container's init (pid {pid}) did not go ahead within "
                                     f"{self.settings.command_timeout:g}s")
        finally:
            loop.remove_reader(fd)
            if not done.done():
                done.cancel()
            died.cancel()
            # Its pidfd closed now, not whenever the task is collected (wait():
            # a cancel of our own still propagates).
            await asyncio.wait({died})
        return bytes(received)

    async def wait(self, task_id: str) -> int:
        if not self.bundle_dir(task_id).exists() and not self._exit_file(task_id).exists():
            if task_id in self._removed_exits:
                return self._removed_exits[task_id]
            raise NoSuchContainer(f"no such container: {task_id}")
        return await self._wait_exit(task_id)

    async def _wait_exit(self, task_id: str) -> int:
        while True:
            code = self._read_exit_code(task_id)
            if code is None:
                code = self._removed_exits.get(task_id)
            if code is not None:
                return code
            monitor = self._monitor_pid(task_id)
            if monitor is not None:
                await wait_pid_exit(monitor)
                continue
            code = self._read_exit_code(task_id)  # it may have just finished
            if code is not None:
                return code
            # The monitor is gone without an exit file (killed?): follow the
            # container process itself; its exit code is lost.
            state = await self._runc_state(task_id)
            pid = int(state.get("pid", 0)) if state else 0
            if pid > 0 and state and state.get("status") in ("created", "running", "paused"):
                log.warning("task %s: conmon is gone; watching pid %d directly", task_id, pid)
                await wait_pid_exit(pid)
            log.warning("task %s: exit code unknown (no conmon exit file)", task_id)
            return _UNKNOWN_EXIT

    async def shutdown(self, task_id: str, signal: str, grace: float) -> None:
        number = parse_signal(signal)
        if self._read_exit_code(task_id) is not None and self._monitor_pid(task_id) is None:
            return  # conmon recorded the exit: stopped, no need to ask runc
        state = await self._runc_state(task_id)
        if state is None or state.get("status") == "stopped":
            return
        if state.get("status") == "created":
            number = _SIGKILL  # never started: nothing to ask politely
        else:
            await self._kill(task_id, number)
            try:
                await asyncio.wait_for(self._wait_exit(task_id), grace)
                return
            except TimeoutError:
                log.info("task %s: still running %.1fs after signal %d; killing", task_id,
                         grace, number)
        await self._kill(task_id, _SIGKILL)
        await asyncio.wait_for(self._wait_exit(task_id), self.settings.command_timeout)

    async def _kill(self, task_id: str, number: int) -> None:
        code, _, err = await self._runc("kill", task_id, str(number))
        if code != 0:
            state = await self._runc_state(task_id)
            if state is not None and state.get("status") not in ("stopped",):
                raise ContainerError(f"runc kill {task_id} {number}: {_runc_message(err)}")

    async def remove(self, task_id: str) -> None:
        async with self._lock(task_id):
            await self._cleanup(task_id)
        self._locks.pop(task_id, None)

    async def list(self) -> dict[str, ContainerState]:
        for _ in range(_LIST_ATTEMPTS):
            code, out, err = await self._runc("list", "--format", "json")
            # `runc list` fails outright when a container's state directory
            # goes away between its readdir and its stat (a concurrent
            # delete, seen when scaling down 50 containers): just list again.
            if code == 0 or "no such file or directory" not in err:
                break
        if code != 0:
            raise ContainerError(f"runc list: {_runc_message(err)}")
        known = {entry["id"]: entry for entry in (json.loads(out or "null") or [])}
        ids = set(known)
        with contextlib.suppress(FileNotFoundError):
            ids.update(path.name for path in self.settings.bundles_dir.iterdir())
        states = {}
        for task_id in sorted(ids):
            entry = known.get(task_id)
            status = cast(ContainerStatus, entry["status"]) if entry else "unknown"
            states[task_id] = ContainerState(
                id=task_id, status=status,
                pid=int(entry.get("pid", 0)) if entry and status != "stopped" else 0,
                exit_code=self._read_exit_code(task_id),
                monitor_pid=self._monitor_pid(task_id),
                oom_killed=(self.bundle_dir(task_id) / "persist" / "oom").exists())
        return states

    def log_limits(self, task_id: str) -> logopts.LogLimits:
        """The limits the container's log was created with (the node's
        defaults for a container of an older agent)."""
        limits = self._log_limits.get(task_id)
        if limits is None:
            try:
                saved = json.loads((self.bundle_dir(task_id) / "log-limits.json").read_text())
                limits = logopts.LogLimits(max_size=int(saved["max_size"]),
                                           max_file=int(saved["max_file"]))
            except OSError:
                return self.settings.log_limits  # not written yet: ask again next time
            except (ValueError, KeyError, TypeError):
                limits = self.settings.log_limits
            self._log_limits[task_id] = limits
        return limits

    def rotate_logs(self) -> int:
        """One rotation pass over the logs of every container (blocking: run
        it in a thread); returns how many files were rotated."""
        rotated = 0
        try:
            task_ids = [path.name for path in self.settings.bundles_dir.iterdir()]
        except FileNotFoundError:
            return 0
        for task_id in task_ids:
            try:
                with self._rotation:
                    if keep_rotated(str(self.log_path(task_id)),
                                    self.log_limits(task_id).max_file):
                        rotated += 1
            except OSError as error:
                log.warning("task %s: log rotation: %s", task_id, error)
        return rotated

    async def rotate_logs_forever(self, interval: float = 0.25) -> None:
        """rotate_logs every `interval` seconds (a stat or two per container):
        often enough that a task writing less than max-size per interval
        loses none of its rotated files."""
        while True:
            await asyncio.to_thread(self.rotate_logs)
            await asyncio.sleep(interval)

    def mounted_layers(self) -> _LayerChains:
        """The image layers (lowest first) of every container's rootfs mount
        of this runtime, running or not: what the image collector must keep."""
        return fs.overlay_lowers_under(self.settings.bundles_dir)

    async def exec(self, task_id: str, argv: Sequence[str],
                   timeout: float) -> int:
        if not argv:
            raise ValueError("exec needs a command")
        if not self.bundle_dir(task_id).is_dir():
            raise NoSuchContainer(f"no such container: {task_id}")
        pid_file = self.bundle_dir(task_id) / f"exec-{uuid.uuid4().hex[:12]}.pid"
        process = await asyncio.create_subprocess_exec(
            str(self.settings.runc_path), "--root", str(self.settings.runc_root_dir),
            "exec", "--pid-file", str(pid_file), task_id, *argv,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        try:
            try:
                _, err = await asyncio.wait_for(process.communicate(), timeout)
            except TimeoutError:
                self._kill_exec(pid_file)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
                raise TimeoutError(f"{argv[0]} ran longer than {timeout:.1f}s") from None
            except BaseException:
                self._kill_exec(pid_file)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
                raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                pid_file.unlink()
        assert process.returncode is not None
        if process.returncode != 0 and err:
            log.debug("task %s: exec %s: %s", task_id, argv[0],
                      _runc_message(err.decode(errors="replace")))
        return process.returncode

    @staticmethod
    def _kill_exec(pid_file: Path) -> None:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
