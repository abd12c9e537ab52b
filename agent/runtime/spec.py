"""Pure building of a container's OCI runtime config (config.json).

Everything here is a function of its arguments: the task's ContainerSpec
merged with the image config as docker merges them, user names resolved
against the text of the rootfs's /etc/passwd and /etc/group, limits turned
into cgroup values, docker's default mounts, capabilities and masked paths.
The executor (runc.py) gathers the inputs from the filesystem and writes the
result.
"""

from __future__ import annotations

import os
import posixpath
import re
import signal as signal_module
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from swarm.api import runopts
from swarm.api.security import BadProfile, check_profile
from swarm.api.units import format_memory
from swarm.api.v1 import objects_pb2 as pb

from . import seccomp
from .base import ImageConfig, RejectError

OCI_VERSION = "1.0.2-dev"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOSTNAME_LENGTH = 12  # docker's short container ID
MIN_MEMORY_BYTES = 6 * 1024 * 1024  # docker's minimum memory limit
CPU_PERIOD_US = 100_000  # CFS period docker uses for --cpus
MIN_CPU_QUOTA_US = 1_000  # the kernel refuses a quota below 1 ms
NANO_CPUS = 1_000_000_000
DEFAULT_PIDS_LIMIT = 4096

# Docker's default capability set (moby oci/caps/defaults.go).
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

# Docker's default masked and read-only paths (moby oci/defaults.go), with
# /proc/interrupts (per-CPU interrupt counts: a side channel on the host's
# activity), which newer Docker masks too.
MASKED_PATHS: tuple[str, ...] = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

_SYSTEM_MOUNTS: tuple[dict[str, Any], ...] = (
    {"destination": "/proc", "type": "proc", "source": "proc",
     "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs",
     "options": ["nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
     "options": ["ro", "nosuid", "noexec", "nodev"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
     "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
     "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
)

_VOLUME_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
_HOSTNAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
_CONTAINER_ID_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$")


# ---------------------------------------------------------------- process


@dataclass(frozen=True)
class ProcessPlan:
    args: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str
    user: str  # as written ("www", "1000:1000", ""), resolved later against the rootfs


def check_container_id(container_id: str) -> None:
    if not _CONTAINER_ID_RE.match(container_id):
        raise RejectError(f"invalid container ID {container_id!r}: expected 1 to 64 of "
                          "[a-zA-Z0-9_.-], starting with a letter or digit")


def hostname_for(task: pb.Task) -> str:
    hostname = task.spec.container.hostname or task.id[:HOSTNAME_LENGTH]
    if not _HOSTNAME_RE.match(hostname):
        raise RejectError(f"invalid hostname {hostname!r}: expected up to 63 letters, digits, "
                          "'-', '_' and '.'")
    return hostname


def merge_env(base: Iterable[str], overlay: Iterable[str]) -> list[str]:
    """docker's ReplaceOrAppendEnvValues: a KEY=VALUE of the overlay replaces the
    base's KEY in place or is appended; a bare KEY removes it."""
    merged = list(base)
    for entry in overlay:
        key, has_value, _ = entry.partition("=")
        index = next((i for i, old in enumerate(merged) if old.partition("=")[0] == key), None)
        if not has_value:
            if index is not None:
                del merged[index]
        elif index is None:
            merged.append(entry)
        else:
            merged[index] = entry
    return merged


def plan_process(container: pb.ContainerSpec, image: ImageConfig, hostname: str) -> ProcessPlan:
    """The process docker would run: `command` replaces the image entrypoint and
    `args` its cmd; a command without args drops the image cmd."""
    if container.command:
        entrypoint = list(container.command)
        cmd = list(container.args)
    else:
        entrypoint = list(image.entrypoint)
        cmd = list(container.args) if container.args else list(image.cmd)
    args = tuple(entrypoint + cmd)
    if not args or not args[0]:
        raise RejectError("no command specified: neither the service nor the image "
                          "gives an entrypoint or a command")
    env = merge_env([f"PATH={DEFAULT_PATH}", f"HOSTNAME={hostname}"],
                    merge_env(image.env, container.env))
    cwd = container.dir or image.working_dir or "/"
    if not cwd.startswith("/"):
        raise RejectError(f"the working directory '{cwd}' is invalid, it needs to be an "
                          "absolute path")
    return ProcessPlan(args=args, env=tuple(env), cwd=posixpath.normpath(cwd),
                       user=container.user or image.user)


def env_value(env: Iterable[str], key: str) -> str | None:
    for entry in env:
        name, has_value, value = entry.partition("=")
        if name == key and has_value:
            return value
    return None


# ---------------------------------------------------------------- users


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


@dataclass(frozen=True)
class User:
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    home: str = "/"


def _int_or_none(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def parse_passwd(text: str) -> list[PasswdEntry]:
    entries = []
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) < 4 or line.lstrip().startswith("#"):
            continue
        uid, gid = _int_or_none(fields[2]), _int_or_none(fields[3])
        if uid is None or gid is None:
            continue
        home = fields[5] if len(fields) > 5 and fields[5] else "/"
        entries.append(PasswdEntry(fields[0], uid, gid, home))
    return entries


def parse_group(text: str) -> list[GroupEntry]:
    entries = []
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) < 3 or line.lstrip().startswith("#"):
            continue
        gid = _int_or_none(fields[2])
        if gid is None:
            continue
        members = tuple(m for m in fields[3].split(",") if m) if len(fields) > 3 else ()
        entries.append(GroupEntry(fields[0], gid, members))
    return entries


def resolve_user(user: str, passwd: str | None, group: str | None) -> User:
    """"name", "uid", "name:group", "uid:gid" (or mixes) resolved as runc and
    docker do: names must exist in the files, numbers need not; without an
    explicit group the user's primary group and its supplementary groups apply."""
    user_arg, _, group_arg = (user or "0").partition(":")
    users = parse_passwd(passwd or "")
    groups = parse_group(group or "")
    numeric_uid = _int_or_none(user_arg)
    entry = next((u for u in users if u.name == user_arg or u.uid == numeric_uid), None)
    if entry is None:
        if numeric_uid is None:
            raise RejectError(f"unable to find user {user_arg}: no matching entries in "
                              "passwd file")
        entry = PasswdEntry(user_arg, numeric_uid, 0, "/")
    if group_arg:
        numeric_gid = _int_or_none(group_arg)
        found = next((g for g in groups if g.name == group_arg or g.gid == numeric_gid), None)
        if found is not None:
            gid = found.gid
        elif numeric_gid is not None:
            gid = numeric_gid
        else:
            raise RejectError(f"unable to find group {group_arg}: no matching entries in "
                              "group file")
        return User(uid=entry.uid, gid=gid, home=entry.home)
    supplementary = tuple(dict.fromkeys(
        g.gid for g in groups if entry.name in g.members and g.gid != entry.gid))
    return User(uid=entry.uid, gid=entry.gid, additional_gids=supplementary, home=entry.home)


def resolve_groups(user: User, groups: Sequence[str], group: str | None) -> User:
    """--group-add: names looked up in the rootfs's /etc/group (as docker does),
    numbers taken as they are; added after the user's own supplementary groups."""
    if not groups:
        return user
    entries = parse_group(group or "")
    gids = list(user.additional_gids)
    for name in groups:
        if name.isdigit():
            gid = int(name)
        else:
            found = next((g for g in entries if g.name == name), None)
            if found is None:
                raise RejectError(f"unable to find group {name}: no matching entries in "
                                  "group file")
            gid = found.gid
        if gid not in gids:
            gids.append(gid)
    return User(uid=user.uid, gid=user.gid, additional_gids=tuple(gids), home=user.home)


# ---------------------------------------------------------------- signals


def parse_signal(name: str) -> int:
    """"SIGTERM", "TERM", "sigterm" or "15" -> 15."""
    text = name.strip().upper()
    if text.isdigit():
        number = int(text)
        if 0 < number < signal_module.NSIG:
            return number
    else:
        try:
            return int(signal_module.Signals[text if text.startswith("SIG") else "SIG" + text])
        except KeyError:
            pass
    raise RejectError(f"invalid signal {name!r}")


def stop_signal(container: pb.ContainerSpec, image: ImageConfig) -> str:
    """The signal that asks the container to stop: the service's, else the
    image's, else SIGTERM."""
    return container.stop_signal or image.stop_signal or "SIGTERM"


# ---------------------------------------------------------------- resources


def plan_resources(requirements: pb.ResourceRequirements, *, pids_limit: int, cpu_count: int,
                   swap_accounting: bool) -> dict[str, Any]:
    """linux.resources: the limits docker derives from --memory, --cpus,
    --reserve-memory and --reserve-cpu, a pids limit, and a device cgroup that
    denies everything but runc's default devices."""
    limits, reservations = requirements.limits, requirements.reservations
    resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    memory: dict[str, int] = {}
    if limits.memory_bytes < 0 or reservations.memory_bytes < 0:
        raise RejectError("memory limits and reservations cannot be negative")
    if limits.memory_bytes:
        if limits.memory_bytes < MIN_MEMORY_BYTES:
            raise RejectError(
                f"memory limit {format_memory(limits.memory_bytes)} is below the minimum "
                f"of {format_memory(MIN_MEMORY_BYTES)}")
        memory["limit"] = limits.memory_bytes
        if swap_accounting:  # docker: as much swap as memory, unless told otherwise
            memory["swap"] = 2 * limits.memory_bytes
    if reservations.memory_bytes:
        if limits.memory_bytes and reservations.memory_bytes > limits.memory_bytes:
            raise RejectError("memory reservation must be below the memory limit")
        memory["reservation"] = reservations.memory_bytes
    if memory:
        resources["memory"] = memory
    cpu: dict[str, int] = {}
    if limits.nano_cpus < 0 or reservations.nano_cpus < 0:
        raise RejectError("CPU limits and reservations cannot be negative")
    if limits.nano_cpus:
        quota = limits.nano_cpus * CPU_PERIOD_US // NANO_CPUS
        if quota < MIN_CPU_QUOTA_US or limits.nano_cpus > cpu_count * NANO_CPUS:
            raise RejectError(f"range of CPUs is from 0.01 to {cpu_count}.00, as there are "
                              f"only {cpu_count} CPUs available")
        cpu["quota"] = quota
        cpu["period"] = CPU_PERIOD_US
    if reservations.nano_cpus:
        cpu["shares"] = max(2, reservations.nano_cpus * 1024 // NANO_CPUS)
    if cpu:
        resources["cpu"] = cpu
    if pids_limit > 0:
        resources["pids"] = {"limit": pids_limit}
    return resources


# ---------------------------------------------------------------- runtime options

RLIM_INFINITY = 2**64 - 1  # an OCI rlimit is a uint64


def plan_rlimits(ulimits: Sequence[pb.Ulimit], nofile_default: int) -> list[dict[str, Any]]:
    """process.rlimits: the task's ulimits; RLIMIT_NOFILE defaults to
    `nofile_default` (soft = hard) unless the task sets it (0: inherit)."""
    limits: dict[str, dict[str, Any]] = {}
    if nofile_default > 0:
        limits["RLIMIT_NOFILE"] = {"type": "RLIMIT_NOFILE", "hard": nofile_default,
                                   "soft": nofile_default}
    for ulimit in ulimits:
        kind = runopts.ULIMITS.get(ulimit.name)
        if kind is None:
            raise RejectError(f"unknown ulimit {ulimit.name!r}")

        def value(number: int) -> int:
            return RLIM_INFINITY if number == runopts.UNLIMITED else number

        limits[kind] = {"type": kind, "hard": value(ulimit.hard), "soft": value(ulimit.soft)}
    return list(limits.values())


@dataclass(frozen=True)
class DevicePlan:
    """A host device as the container gets it (linux.devices and the device
    cgroup's allow rule)."""

    path: str  # in the container
    kind: Literal["c", "b"]
    major: int
    minor: int
    file_mode: int
    uid: int
    gid: int
    permissions: str


def plan_device(mapping: pb.DeviceMapping, st_mode: int, st_rdev: int, st_uid: int,
                st_gid: int) -> DevicePlan:
    """From the host device's stat (taken by the executor)."""
    host = mapping.path_on_host
    if stat.S_ISCHR(st_mode):
        kind: Literal["c", "b"] = "c"
    elif stat.S_ISBLK(st_mode):
        kind = "b"
    else:
        raise RejectError(f"error gathering device information while adding custom device "
                          f"{host!r}: not a device node")
    target = mapping.path_in_container or host
    if not target.startswith("/") or target.startswith(("/proc/", "/sys/")):
        raise RejectError(f"invalid device path in the container {target!r}")
    return DevicePlan(path=posixpath.normpath(target), kind=kind, major=os.major(st_rdev),
                      minor=os.minor(st_rdev), file_mode=stat.S_IMODE(st_mode), uid=st_uid,
                      gid=st_gid, permissions=mapping.permissions or runopts.DEVICE_PERMISSIONS)


def capabilities_for(container: pb.ContainerSpec) -> list[str]:
    """Docker's default set with the task's --cap-add/--cap-drop."""
    return runopts.effective_capabilities(DEFAULT_CAPABILITIES, list(container.cap_add),
                                          list(container.cap_drop))


# ---------------------------------------------------------------- mounts


@dataclass(frozen=True)
class MountPlan:
    """A user mount with its host side resolved: volumes and binds are both
    binds of a host directory here."""

    kind: Literal["bind", "tmpfs"]
    target: str
    source: str = ""
    read_only: bool = False
    tmpfs_size: int = 0


def check_mounts(mounts: Sequence[pb.Mount]) -> None:
    """What can be said of the mounts without looking at the host."""
    seen: set[str] = set()
    for mount in mounts:
        target = mount.target
        if not target.startswith("/"):
            raise RejectError(f"invalid mount target, must be an absolute path: {target!r}")
        target = posixpath.normpath(target)
        if target == "/":
            raise RejectError("invalid mount target: cannot mount over /")
        if target in seen:
            raise RejectError(f"duplicate mount point: {target}")
        seen.add(target)
        if mount.type == pb.Mount.BIND:
            if not mount.source.startswith("/"):
                raise RejectError(f'invalid mount config for type "bind": source must be an '
                                  f"absolute path: {mount.source!r}")
        elif mount.type == pb.Mount.VOLUME:
            if mount.source and not _VOLUME_NAME_RE.match(mount.source):
                raise RejectError(f'invalid volume name "{mount.source}": only '
                                  '"[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed')
        elif mount.type == pb.Mount.TMPFS:
            if mount.source:
                raise RejectError('invalid mount config for type "tmpfs": source must be empty')
            if mount.tmpfs_size_bytes < 0:
                raise RejectError('invalid mount config for type "tmpfs": negative size')
        else:
            raise RejectError(f"unsupported mount type {mount.type}")


def _oci_mount(plan: MountPlan) -> dict[str, Any]:
    if plan.kind == "tmpfs":
        options = ["nosuid", "nodev", "noexec", "mode=1777"]
        if plan.tmpfs_size:
            options.append(f"size={plan.tmpfs_size}")
        if plan.read_only:
            options.append("ro")
        return {"destination": plan.target, "type": "tmpfs", "source": "tmpfs",
                "options": options}
    options = ["rbind", "rprivate"]
    if plan.read_only:
        options.append("ro")
    return {"destination": plan.target, "type": "bind", "source": plan.source,
            "options": options}


# ---------------------------------------------------------------- files


def hosts_file(hostname: str, addresses: Sequence[str] = (), extra: Sequence[str] = ()) -> str:
    """/etc/hosts: localhost, the hostname on the container's addresses
    (loopback until it has others), then the service's extra hosts (`--host`,
    compose extra_hosts: "IP NAME" lines), as docker appends them."""
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "ff00::0\tip6-mcastprefix",
        "ff02::1\tip6-allnodes",
        "ff02::2\tip6-allrouters",
    ]
    lines += [f"{address}\t{hostname}" for address in (addresses or ("127.0.0.1",))]
    lines += ["\t".join(line.split()) for line in extra]
    return "\n".join(lines) + "\n"


EMBEDDED_DNS = "127.0.0.11"  # the agent's responder in a task's namespace (agent/network/dns.py)


def resolv_conf(host_text: str, embedded_dns: bool = False,
                dns: pb.DNSConfig | None = None) -> str:
    """The host's resolv.conf without loopback nameservers (unreachable from
    the container's network namespace), as docker filters it. With the
    embedded DNS (a container on overlay networks), the host's search list
    and options stay, the nameserver is 127.0.0.11 alone (it forwards what
    is not the cluster's), and ndots:0 makes a bare name like `web` asked
    as it is, first, as docker writes it.

    The task's DNS config (`--dns`, `--dns-search`, `--dns-option`) replaces
    the host's nameservers, search list and options, each on its own, as
    docker's does; with the embedded DNS its nameservers are not written here
    (127.0.0.11 stays, so the service names keep resolving) but are where the
    responder forwards other names (agent/discovery.py), and an ndots the
    task gives wins over ndots:0."""
    dns = dns or pb.DNSConfig()
    kept = []
    options: list[str] = []
    for line in host_text.splitlines():
        fields = line.split()
        keyword = fields[0] if fields else ""
        if len(fields) >= 2 and keyword == "nameserver" and (
                embedded_dns or dns.nameservers or fields[1].startswith("127.")
                or fields[1] == "::1"):
            continue
        if keyword in ("search", "domain") and dns.search:
            continue
        if keyword == "options" and (embedded_dns or dns.options):
            if not dns.options:
                options += [o for o in fields[1:] if not o.startswith("ndots:")]
            continue
        kept.append(line)
    if dns.search:
        kept.append("search " + " ".join(dns.search))
    if embedded_dns:
        options += list(dns.options)
        if not any(o.startswith("ndots:") for o in dns.options):
            options.append("ndots:0")
        kept += [f"nameserver {EMBEDDED_DNS}", " ".join(["options", *options])]
    else:
        kept += [f"nameserver {server}" for server in dns.nameservers]
        if dns.options:
            kept.append("options " + " ".join(dns.options))
    return "\n".join(kept).strip() + "\n"


# ---------------------------------------------------------------- security


@dataclass(frozen=True)
class SecurityPlan:
    """Seccomp, no-new-privileges and AppArmor of one container."""

    profile: Mapping[str, Any] | None  # seccomp, Docker's format (checked); None: unconfined
    no_new_privileges: bool = False
    apparmor_profile: str = ""  # loaded on the node; "": none
    arch: str = ""  # libseccomp's native architecture (seccomp.native_arch())
    kernel: tuple[int, int] = (0, 0)


def plan_security(privileges: pb.Privileges, *, apparmor_profile: str, arch: str,
                  kernel: tuple[int, int]) -> SecurityPlan:
    """The service's --security-opt over the defaults: the project's seccomp
    profile, the node's AppArmor profile (when it has one loaded), and
    noNewPrivileges off as Docker and the kubelet leave it (an image's setuid
    helpers -- su, ping on older images -- keep working; it is one option away)."""
    mode = privileges.seccomp.mode
    profile: Mapping[str, Any] | None
    if mode == pb.Privileges.Seccomp.UNCONFINED:
        profile = None
    elif mode == pb.Privileges.Seccomp.CUSTOM:
        try:
            profile = check_profile(privileges.seccomp.profile)
        except BadProfile as error:
            raise RejectError(f"invalid seccomp profile: {error}") from None
    else:
        profile = seccomp.default_profile()
    apparmor = "" if privileges.apparmor.mode == pb.Privileges.AppArmor.DISABLED \
        else apparmor_profile
    return SecurityPlan(profile=profile, no_new_privileges=privileges.no_new_privileges,
                        apparmor_profile=apparmor, arch=arch, kernel=kernel)


# ---------------------------------------------------------------- config.json


@dataclass(frozen=True)
class ContainerPlan:
    """Everything config.json is made of, resolved."""

    hostname: str
    process: ProcessPlan
    user: User
    rootfs: str  # absolute host path of the (mounted) root filesystem
    read_only: bool
    mounts: tuple[MountPlan, ...]
    files: tuple[tuple[str, str], ...]  # (container path, host file) bind-mounted: hosts, ...
    netns_path: str | None  # None: host networking, the namespace runc runs in (the node's)
    cgroups_path: str
    resources: dict[str, Any]
    nofile_limit: int = 0  # RLIMIT_NOFILE (soft = hard); 0: inherit the monitor's
    annotations: tuple[tuple[str, str], ...] = ()
    capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES
    sysctls: tuple[tuple[str, str], ...] = ()
    ulimits: tuple[pb.Ulimit, ...] = ()
    devices: tuple[DevicePlan, ...] = ()
    terminal: bool = False
    security: SecurityPlan | None = None  # None: no seccomp filter, no AppArmor


def _depth(path: str) -> int:
    return len([part for part in path.split("/") if part])


def build_config(plan: ContainerPlan) -> dict[str, Any]:
    """The OCI runtime config for runc."""
    caps = list(plan.capabilities)
    root = plan.user.uid == 0
    process: dict[str, Any] = {
        "terminal": plan.terminal,
        "user": {"uid": plan.user.uid, "gid": plan.user.gid},
        "args": list(plan.process.args),
        "env": list(plan.process.env),
        "cwd": plan.process.cwd,
        "capabilities": {
            "bounding": caps,
            # A non-root process keeps no capabilities across execve anyway.
            "effective": caps if root else [],
            "permitted": caps if root else [],
        },
        "noNewPrivileges": bool(plan.security and plan.security.no_new_privileges),
    }
    rlimits = plan_rlimits(plan.ulimits, plan.nofile_limit)
    if rlimits:
        process["rlimits"] = rlimits
    if plan.security and plan.security.apparmor_profile:
        process["apparmorProfile"] = plan.security.apparmor_profile
    if plan.user.additional_gids:
        process["user"]["additionalGids"] = list(plan.user.additional_gids)

    user_targets = {m.target for m in plan.mounts}
    mounts = [dict(m) for m in _SYSTEM_MOUNTS if m["destination"] not in user_targets]
    mounts += [{"destination": target, "type": "bind", "source": source,
                "options": ["rbind", "rprivate"]}
               for target, source in plan.files if target not in user_targets]
    # Parents before children, as docker sorts them.
    mounts += [_oci_mount(m) for m in sorted(plan.mounts, key=lambda m: _depth(m.target))]

    config: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": plan.rootfs, "readonly": plan.read_only},
        "hostname": plan.hostname,
        "mounts": mounts,
        "linux": {
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                # No entry at all for host networking: the container stays in the
                # node's network namespace, as docker's --network host.
                *([] if plan.netns_path is None else
                  [{"type": "network", "path": plan.netns_path}]),
            ],
            "cgroupsPath": plan.cgroups_path,
            "resources": plan.resources,
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }
    if plan.sysctls:
        config["linux"]["sysctl"] = dict(plan.sysctls)
    if plan.devices:
        config["linux"]["devices"] = [
            {"path": d.path, "type": d.kind, "major": d.major, "minor": d.minor,
             "fileMode": d.file_mode, "uid": d.uid, "gid": d.gid} for d in plan.devices]
        # After the deny-all rule: the device cgroup lets these through.
        config["linux"]["resources"] = {**plan.resources, "devices": [
            *plan.resources.get("devices", []),
            *({"allow": True, "type": d.kind, "major": d.major, "minor": d.minor,
               "access": d.permissions} for d in plan.devices)]}
    if plan.security and plan.security.profile is not None:
        # After the capabilities: the capability-gated syscall groups follow them.
        config["linux"]["seccomp"] = seccomp.resolve(
            plan.security.profile, caps, arch=plan.security.arch, kernel=plan.security.kernel)
    if plan.annotations:
        config["annotations"] = dict(plan.annotations)
    return config
