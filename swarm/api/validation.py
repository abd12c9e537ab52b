"""Validation and defaulting of API input, at the controller's edge.

Every write goes through one of the `normalize_*` functions before anything is
stored: they check the whole spec, stop at the first problem with a
ValidationError naming the field by its proto path
("spec.task.container.image: invalid image reference ..."), and otherwise
return a new spec with the ecosystem's defaults filled in (see DESIGN.md):
replicated with 1 replica, stop grace period 10 s, restart on any exit after
5 s, update and rollback one task at a time with a 5 s monitor, pausing on
failure, stopping the old task first, VIP endpoints, the overlay driver.

Normalising is idempotent: a normalised spec normalises to itself. The input is
never modified. Everything here is pure (no store, no clock).
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from swarm.api.units import format_duration, format_memory
from swarm.api.v1 import objects_pb2 as pb

from . import generic_resources, logopts, runopts
from .constraints import parse_constraint
from .refs import resolve_ref
from .schedule import BadSchedule, parse_schedule
from .security import BadProfile, check_profile

MAX_REPLICAS = 100_000
MIN_MEMORY_LIMIT = 6 * 1024 * 1024  # runc refuses less
MAX_PORT = 65_535

DEFAULT_REPLICAS = 1
DEFAULT_STOP_GRACE_PERIOD_NS = 10_000_000_000
DEFAULT_RESTART_DELAY_NS = 5_000_000_000
DEFAULT_UPDATE_PARALLELISM = 1
DEFAULT_UPDATE_DELAY_NS = 0
DEFAULT_MONITOR_NS = 5_000_000_000
DEFAULT_NETWORK_DRIVER = "overlay"

_SECOND = 1_000_000_000
_MAX_DURATION_SECONDS = 315_576_000_000  # google.protobuf.Duration's range: 10,000 years
_MAX_NANOS = 999_999_999
_MIN_PREFIX, _MAX_PREFIX = 8, 29

_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?")
_NAME_EXPECTED = ("expected 1-63 lowercase letters, digits, '-' or '_', "
                  "starting and ending with a letter or digit")
_VOLUME_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")

# Image references, after docker's reference grammar:
#   [HOST[:PORT]/]COMPONENT[/COMPONENT...][:TAG][@sha256:HEX64]
_PATH_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_HOST_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_REGISTRY_RE = re.compile(
    rf"(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[([0-9a-fA-F:.]+)\])(?::[0-9]+)?")
_TAG_RE = re.compile(r"\w[\w.-]{0,127}", re.ASCII)
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_MAX_REPOSITORY_NAME = 255
_IMAGE_EXPECTED = "expected [REGISTRY[:PORT]/]NAME[:TAG][@sha256:DIGEST], e.g. nginx:1.25"

# Linux signal numbers (the containers run on Linux whatever the controller's OS).
_SIGNALS = {
    "HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "IOT": 6, "BUS": 7,
    "FPE": 8, "KILL": 9, "USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14,
    "TERM": 15, "STKFLT": 16, "CHLD": 17, "CONT": 18, "STOP": 19, "TSTP": 20, "TTIN": 21,
    "TTOU": 22, "URG": 23, "XCPU": 24, "XFSZ": 25, "VTALRM": 26, "PROF": 27, "WINCH": 28,
    "IO": 29, "POLL": 29, "PWR": 30, "SYS": 31,
}
_SIGRTMIN, _SIGRTMAX = 34, 64
_RT_SIGNAL_RE = re.compile(r"RTMIN(?:\+([0-9]{1,2}))?|RTMAX(?:-([0-9]{1,2}))?")

T = TypeVar("T")

_HEALTH_KINDS = ("NONE", "CMD", "CMD-SHELL")


class ValidationError(ValueError):
    """One problem with API input: the field's proto path and what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.field}: {self.problem}"


# ---------------------------------------------------------------- small helpers


def _show(text: str, limit: int = 64) -> str:
    """A user's string quoted for a one-line message (repr escapes newlines)."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _fmt_duration(nanos: int) -> str:
    return f"-{format_duration(-nanos)}" if nanos < 0 else format_duration(nanos)


def _fmt_memory(num_bytes: int) -> str:
    return f"-{format_memory(-num_bytes)}" if num_bytes < 0 else format_memory(num_bytes)


def _check_enum(message: Message, name: str, path: str) -> None:
    """Proto3 enums are open: refuse numbers the enum does not define."""
    enum_type = message.DESCRIPTOR.fields_by_name[name].enum_type
    assert enum_type is not None, f"{name} is not an enum field"
    value: int = getattr(message, name)
    if value not in enum_type.values_by_number:
        names = [v.name for v in enum_type.values]
        expected = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
        raise ValidationError(f"{path}.{name}", f"unknown value {value} (expected {expected})")


def _check_labels(labels: Mapping[str, str], path: str) -> None:
    for key, value in labels.items():
        if not key.strip():
            raise ValidationError(path, f"label keys must not be empty (got {_show(key)}="
                                        f"{_show(value)})")


def _duration(message: Message, name: str, path: str, default_ns: int | None = None) -> int:
    """The duration field in nanoseconds, refusing negative and malformed ones; an
    absent one is set to `default_ns` when given (and counts as 0 otherwise)."""
    if not message.HasField(name):
        if default_ns is None:
            return 0
        duration: Duration = getattr(message, name)
        duration.FromNanoseconds(default_ns)
        return default_ns
    duration = getattr(message, name)
    seconds, nanos = duration.seconds, duration.nanos
    if abs(nanos) > _MAX_NANOS or (seconds > 0 > nanos) or (seconds < 0 < nanos):
        raise ValidationError(f"{path}.{name}", f"malformed duration (seconds={seconds}, "
                              f"nanos={nanos}): nanos must be within +/-{_MAX_NANOS} and have the "
                              "sign of seconds")
    if abs(seconds) > _MAX_DURATION_SECONDS:
        raise ValidationError(f"{path}.{name}", f"duration out of range (seconds={seconds}, "
                              f"at most {_MAX_DURATION_SECONDS})")
    total = seconds * _SECOND + nanos
    if total < 0:
        raise ValidationError(f"{path}.{name}",
                              f"must not be negative (got {_fmt_duration(total)})")
    return total


def _check_name(name: str, field: str, example: str) -> None:
    if not name:
        raise ValidationError(field, f"required (e.g. {example})")
    if not _NAME_RE.fullmatch(name):
        raise ValidationError(field, f"invalid name {_show(name)}: {_NAME_EXPECTED}")


# ---------------------------------------------------------------- public helpers


def validate_replicas(value: int, field: str = "replicas") -> None:
    if value < 0:
        raise ValidationError(field, f"must not be negative (got {value})")
    if value > MAX_REPLICAS:
        raise ValidationError(field, f"must be at most {MAX_REPLICAS} (got {value})")


JOB_MODES = ("replicated_job", "global_job")


def is_job(spec: pb.ServiceSpec) -> bool:
    """A job's tasks run to completion (replicated-job, global-job)."""
    return spec.WhichOneof("mode") in JOB_MODES


def is_global(spec: pb.ServiceSpec) -> bool:
    """One task per eligible node (global, global-job)."""
    return spec.WhichOneof("mode") in ("global", "global_job")


def _check_job(spec: pb.ServiceSpec) -> None:
    """A job's counts and schedule; no rolling-update settings (a job is re-run,
    not rolled: Swarm refuses them too); a schedule only on a job."""
    if not is_job(spec):
        if spec.schedule:
            raise ValidationError("spec.schedule", "applies to jobs only (mode replicated-job "
                                  "or global-job)")
        return
    for which in ("update", "rollback"):
        if spec.HasField(which):
            raise ValidationError(f"spec.{which}", "a job has no rolling update settings: an "
                                  "update re-runs it")
    if spec.schedule:
        try:
            parse_schedule(spec.schedule)
        except BadSchedule as error:
            raise ValidationError("spec.schedule", str(error)) from None
    if spec.WhichOneof("mode") == "replicated_job":
        job = spec.replicated_job
        validate_replicas(job.total_completions, "spec.mode.replicated_job.total_completions")
        if job.max_concurrent < 1:
            raise ValidationError("spec.mode.replicated_job.max_concurrent",
                                  f"must be at least 1 (got {job.max_concurrent})")
        if job.max_concurrent > MAX_REPLICAS:
            raise ValidationError("spec.mode.replicated_job.max_concurrent",
                                  f"must be at most {MAX_REPLICAS} (got {job.max_concurrent})")


def image_reference_problem(image: str) -> str | None:
    """Why `image` is not a valid docker image reference, or None when it is."""
    if not image:
        return "required"
    if any(char.isspace() for char in image):
        return "contains whitespace; " + _IMAGE_EXPECTED
    name_and_tag, at, digest = image.partition("@")
    if at and not _DIGEST_RE.fullmatch(digest):
        return f"the digest must be sha256: and 64 lowercase hex digits, not {_show(digest)}"
    last_slash = name_and_tag.rfind("/")
    colon = name_and_tag.rfind(":")
    name = name_and_tag
    if colon > last_slash:
        name, tag = name_and_tag[:colon], name_and_tag[colon + 1:]
        if not _TAG_RE.fullmatch(tag):
            return (f"invalid tag {_show(tag)}: expected up to 128 letters, digits, '_', '.' or "
                    "'-', not starting with '.' or '-'")
    if not name:
        return "no repository name; " + _IMAGE_EXPECTED
    if len(name) > _MAX_REPOSITORY_NAME:
        return f"the repository name is longer than {_MAX_REPOSITORY_NAME} characters"
    components = name.split("/")
    first = components[0]
    if len(components) > 1 and (any(c in first for c in ".:") or first == "localhost"
                                or first != first.lower()):
        registry = _REGISTRY_RE.fullmatch(first)
        if registry is None:
            return f"invalid registry {_show(first)}: expected HOST or HOST:PORT"
        if registry.group(1) is not None:
            try:
                ipaddress.IPv6Address(registry.group(1))
            except ValueError:
                return f"invalid registry {_show(first)}: not an IPv6 address in brackets"
        components = components[1:]
    for component in components:
        if _PATH_COMPONENT_RE.fullmatch(component):
            continue
        if _PATH_COMPONENT_RE.fullmatch(component.lower()):
            return "repository names are lowercase"
        if not component:
            return "empty path component; " + _IMAGE_EXPECTED
        return (f"invalid path component {_show(component)}: expected lowercase letters and "
                "digits, separated by '.', '_', '__' or dashes")
    return None


def signal_number(text: str) -> int:
    """A stop signal as docker takes it ('SIGTERM', 'term', '15', 'SIGRTMIN+3') ->
    its Linux number; ValueError when it is not one."""
    if text.isascii() and text.isdigit():
        number = int(text) if len(text) <= 4 else 0  # no huge ints from user input
        if 1 <= number <= _SIGRTMAX:
            return number
        raise ValueError(f"invalid signal {_show(text)}: numbers go from 1 to {_SIGRTMAX}")
    name = text.upper().removeprefix("SIG")
    if name in _SIGNALS:
        return _SIGNALS[name]
    realtime = _RT_SIGNAL_RE.fullmatch(name)
    if realtime is not None:
        plus, minus = realtime.groups()
        number = (_SIGRTMIN + int(plus or 0) if name.startswith("RTMIN")
                  else _SIGRTMAX - int(minus or 0))
        if _SIGRTMIN <= number <= _SIGRTMAX:
            return number
    raise ValueError(f"unknown signal {_show(text)}: expected a name such as SIGTERM, TERM or "
                     f"SIGKILL, or a number from 1 to {_SIGRTMAX}")


# ---------------------------------------------------------------- services


def _check_container(container: pb.ContainerSpec, path: str) -> None:
    problem = image_reference_problem(container.image)
    if problem == "required":
        raise ValidationError(f"{path}.image", "required (e.g. nginx:1.25)")
    if problem is not None:
        raise ValidationError(f"{path}.image",
                              f"invalid image reference {_show(container.image)} ({problem})")
    for index, entry in enumerate(container.env):
        key = entry.partition("=")[0]
        if not key or any(char.isspace() for char in key) or "\0" in entry:
            raise ValidationError(
                f"{path}.env[{index}]",
                f"invalid environment variable {_show(entry)}: expected KEY=VALUE (or KEY alone "
                "to unset it) with a non-empty KEY without whitespace, and no NUL characters")
    if container.dir and not container.dir.startswith("/"):
        raise ValidationError(f"{path}.dir", f"the working directory {_show(container.dir)} "
                              "must be an absolute path")
    _check_mounts(container, path)
    if container.stop_signal:
        try:
            signal_number(container.stop_signal)
        except ValueError as error:
            raise ValidationError(f"{path}.stop_signal", str(error)) from None
    _duration(container, "stop_grace_period", path, DEFAULT_STOP_GRACE_PERIOD_NS)
    check_drain_timeout(_duration(container, "drain_timeout", path), f"{path}.drain_timeout")
    if container.HasField("healthcheck"):
        _check_healthcheck(container.healthcheck, f"{path}.healthcheck")
    _check_labels(container.labels, f"{path}.labels")
    check_runtime_options(container, path)
    _check_privileges(container.privileges, f"{path}.privileges")


def _first_problem(items: Sequence[T], problem: Callable[[T], str | None],
                   path: str) -> None:
    for index, item in enumerate(items):
        found = problem(item)
        if found is not None:
            raise ValidationError(f"{path}[{index}]", found)


def check_runtime_options(container: pb.ContainerSpec, path: str) -> None:
    """Capabilities, sysctls, ulimits, the pids limit, devices, groups, DNS and
    extra hosts (swarm.api.runopts says what is acceptable)."""
    _first_problem(container.cap_add, runopts.capability_problem, f"{path}.cap_add")
    _first_problem(container.cap_drop, runopts.capability_problem, f"{path}.cap_drop")
    for name, value in container.sysctls.items():
        problem = runopts.sysctl_problem(name, value)
        if problem is not None:
            raise ValidationError(f"{path}.sysctls[{name!r}]", problem)
    seen: dict[str, int] = {}
    for index, ulimit in enumerate(container.ulimits):
        problem = runopts.ulimit_problem(ulimit.name, ulimit.soft, ulimit.hard)
        if problem is None and ulimit.name in seen:
            problem = f"ulimit {ulimit.name} is already set by ulimits[{seen[ulimit.name]}]"
        if problem is not None:
            raise ValidationError(f"{path}.ulimits[{index}]", problem)
        seen[ulimit.name] = index
    if container.pids_limit < 0:
        raise ValidationError(f"{path}.pids_limit", f"must not be negative (got "
                              f"{container.pids_limit}); 0 means the node's default")
    for index, device in enumerate(container.devices):
        problem = runopts.device_problem(device.path_on_host, device.path_in_container,
                                         device.permissions or runopts.DEVICE_PERMISSIONS)
        if problem is not None:
            raise ValidationError(f"{path}.devices[{index}]", problem)
    _first_problem(container.groups, runopts.group_problem, f"{path}.groups")
    dns = container.dns_config
    if len(dns.nameservers) > runopts.MAX_NAMESERVERS:
        raise ValidationError(f"{path}.dns_config.nameservers", f"at most "
                              f"{runopts.MAX_NAMESERVERS} (got {len(dns.nameservers)})")
    _first_problem(dns.nameservers, runopts.nameserver_problem, f"{path}.dns_config.nameservers")
    if len(dns.search) > runopts.MAX_SEARCH_DOMAINS:
        raise ValidationError(f"{path}.dns_config.search", f"at most "
                              f"{runopts.MAX_SEARCH_DOMAINS} (got {len(dns.search)})")
    _first_problem(dns.search, runopts.search_domain_problem, f"{path}.dns_config.search")
    _first_problem(dns.options, runopts.dns_option_problem, f"{path}.dns_config.options")
    _first_problem(container.hosts, runopts.host_entry_problem, f"{path}.hosts")


def _check_privileges(privileges: pb.Privileges, path: str) -> None:
    seccomp = privileges.seccomp
    _check_enum(seccomp, "mode", f"{path}.seccomp")
    _check_enum(privileges.apparmor, "mode", f"{path}.apparmor")
    if seccomp.mode == pb.Privileges.Seccomp.CUSTOM:
        try:
            check_profile(seccomp.profile)
        except BadProfile as error:
            raise ValidationError(f"{path}.seccomp.profile", str(error)) from None
    elif seccomp.profile:
        raise ValidationError(f"{path}.seccomp.profile", "only with mode CUSTOM")


def _check_log_driver(driver: pb.Driver, path: str) -> None:
    if driver.name not in logopts.FILE_DRIVERS:
        raise ValidationError(f"{path}.name", f"unsupported log driver {_show(driver.name)} "
                              "(the nodes keep rotated files: json-file, local or k8s-file)")
    for key, value in driver.options.items():
        try:
            logopts.check_option(key, value)
        except ValueError as error:
            raise ValidationError(f"{path}.options", str(error)) from None


# Drain before stop waits well under a second when every node answers; the
# bound only matters when one does not, and a long one would hold every
# rollout up by that much per task.
MAX_DRAIN_TIMEOUT_NS = 5 * 60 * _SECOND


def check_drain_timeout(nanoseconds: int, field: str) -> None:
    """The drain bound (ContainerSpec.drain_timeout): 0 (no wait) to 5m."""
    if nanoseconds < 0:
        raise ValidationError(field, f"must not be negative (got {_fmt_duration(nanoseconds)})")
    if nanoseconds > MAX_DRAIN_TIMEOUT_NS:
        raise ValidationError(field, f"at most {_fmt_duration(MAX_DRAIN_TIMEOUT_NS)} (got "
                              f"{_fmt_duration(nanoseconds)}): it bounds a wait that takes "
                              "well under a second when every node answers")


def _check_mounts(container: pb.ContainerSpec, path: str) -> None:
    targets: dict[str, int] = {}
    for index, mount in enumerate(container.mounts):
        where = f"{path}.mounts[{index}]"
        _check_enum(mount, "type", where)
        if not mount.target.startswith("/"):
            raise ValidationError(f"{where}.target", f"must be an absolute path (got "
                                  f"{_show(mount.target)})")
        target = posixpath.normpath(mount.target)
        if target == "/":
            raise ValidationError(f"{where}.target", "cannot mount over the root directory '/'")
        if target in targets:
            raise ValidationError(f"{where}.target", f"{_show(target)} is already mounted by "
                                  f"mounts[{targets[target]}]")
        targets[target] = index
        # No source is an anonymous volume, as in docker (`--mount type=volume,target=/x`):
        # the agent makes it per container and deletes it with the container.
        if (mount.type == pb.Mount.VOLUME and mount.source
                and not _VOLUME_NAME_RE.fullmatch(mount.source)):
            raise ValidationError(f"{where}.source", f"a volume name is letters, digits, '_', "
                                  f"'.' or '-', starting with a letter or digit (got "
                                  f"{_show(mount.source)}); leave it out for an anonymous "
                                  f"volume")
        if mount.type == pb.Mount.BIND and not mount.source.startswith("/"):
            raise ValidationError(f"{where}.source", f"a bind mount needs an absolute source "
                                  f"path (got {_show(mount.source)})")
        if mount.type == pb.Mount.TMPFS and mount.source:
            raise ValidationError(f"{where}.source", f"a tmpfs mount takes no source (got "
                                  f"{_show(mount.source)})")
        if mount.tmpfs_size_bytes < 0:
            raise ValidationError(f"{where}.tmpfs_size_bytes",
                                  f"must not be negative (got {mount.tmpfs_size_bytes})")
        if mount.tmpfs_size_bytes and mount.type != pb.Mount.TMPFS:
            raise ValidationError(f"{where}.tmpfs_size_bytes", "applies to tmpfs mounts only")


def _check_healthcheck(health: pb.HealthConfig, path: str) -> None:
    test = list(health.test)
    if test:
        kind, rest = test[0], test[1:]
        if kind not in _HEALTH_KINDS:
            raise ValidationError(f"{path}.test[0]", f"unknown kind {_show(kind)} (expected "
                                  "NONE, CMD or CMD-SHELL)")
        if kind == "NONE" and rest:
            raise ValidationError(f"{path}.test", f"NONE takes nothing after it (got "
                                  f"{len(rest)} more element(s))")
        if kind == "CMD" and (not rest or not rest[0]):
            raise ValidationError(f"{path}.test", "CMD needs an executable after it, e.g. "
                                  "['CMD', 'curl', '-f', 'http://localhost/']")
        if kind == "CMD-SHELL" and (len(rest) != 1 or not rest[0].strip()):
            raise ValidationError(f"{path}.test", f"CMD-SHELL needs exactly one non-empty shell "
                                  f"command after it (got {len(rest)} element(s))")
    for name in ("interval", "timeout", "start_period", "start_interval"):
        _duration(health, name, path)


def _check_resources(resources: pb.ResourceRequirements, path: str) -> None:
    limits, reservations = resources.limits, resources.reservations
    for which, values in (("limits", limits), ("reservations", reservations)):
        if values.nano_cpus < 0:
            raise ValidationError(f"{path}.{which}.nano_cpus",
                                  f"must not be negative (got {values.nano_cpus})")
        if values.memory_bytes < 0:
            raise ValidationError(f"{path}.{which}.memory_bytes",
                                  f"must not be negative (got {values.memory_bytes})")
    if limits.generic:
        raise ValidationError(f"{path}.limits.generic", "generic resources are reserved, not "
                              "limited (use reservations)")
    for index, resource in enumerate(reservations.generic):
        if error := generic_resources.item_error(resource):
            raise ValidationError(f"{path}.reservations.generic[{index}]", error)
    if error := generic_resources.list_error(reservations.generic, reservation=True):
        raise ValidationError(f"{path}.reservations.generic", error)
    if 0 < limits.memory_bytes < MIN_MEMORY_LIMIT:
        raise ValidationError(f"{path}.limits.memory_bytes",
                              f"must be at least {format_memory(MIN_MEMORY_LIMIT)}, runc's "
                              f"minimum (got {_fmt_memory(limits.memory_bytes)})")
    if limits.nano_cpus and reservations.nano_cpus > limits.nano_cpus:
        raise ValidationError(f"{path}.reservations.nano_cpus",
                              f"the reservation ({reservations.nano_cpus}) exceeds the limit "
                              f"({limits.nano_cpus})")
    if limits.memory_bytes and reservations.memory_bytes > limits.memory_bytes:
        raise ValidationError(f"{path}.reservations.memory_bytes",
                              f"the reservation ({_fmt_memory(reservations.memory_bytes)}) "
                              f"exceeds the limit ({_fmt_memory(limits.memory_bytes)})")


def _check_restart(task: pb.TaskSpec, path: str) -> None:
    restart = task.restart
    restart.SetInParent()  # unset: condition ANY (and the delay below)
    _check_enum(restart, "condition", path)
    _duration(restart, "delay", path, DEFAULT_RESTART_DELAY_NS)
    _duration(restart, "window", path)


def _is_node_key(key: str) -> bool:
    """Whether `key` names a node attribute constraints understand (node.labels.X, ...)."""
    try:
        parse_constraint(f"{key}==worker")
    except ValueError:
        return False
    return True


def _check_placement(spec: pb.ServiceSpec, path: str) -> None:
    placement = spec.task.placement
    for index, text in enumerate(placement.constraints):
        try:
            parse_constraint(text)
        except ValueError as error:
            raise ValidationError(f"{path}.constraints[{index}]", str(error)) from None
    for index, preference in enumerate(placement.preferences):
        if not _is_node_key(preference.spread):
            raise ValidationError(
                f"{path}.preferences[{index}].spread",
                f"unknown key {_show(preference.spread)} (expected node.labels.NAME, "
                "engine.labels.NAME, node.id, node.hostname, node.role, node.platform.os or "
                "node.platform.arch)")
    if placement.max_replicas_per_node and is_global(spec):
        raise ValidationError(f"{path}.max_replicas_per_node",
                              "applies to replicated services only, not to a global one")


def _resolve_networks(task: pb.TaskSpec, networks: Mapping[str, pb.Network],
                      path: str) -> list[pb.Network]:
    """The attached networks; their targets become IDs."""
    seen: dict[str, int] = {}
    attached: list[pb.Network] = []
    for index, attachment in enumerate(task.networks):
        where = f"{path}[{index}].target"
        if not attachment.target:
            raise ValidationError(where, "required (a network name or ID)")
        try:
            network = resolve_ref(attachment.target, networks, lambda n: n.spec.name, "network")
        except LookupError as error:
            raise ValidationError(where, str(error.args[0])) from None
        if network.spec.ingress:
            raise ValidationError(where, f"network {_show(attachment.target)} is the ingress "
                                  "network: tasks join it through ports published in ingress "
                                  "mode (--publish), not by name")
        if network.id in seen:
            raise ValidationError(where, f"network {_show(attachment.target)} is already "
                                  f"attached by networks[{seen[network.id]}]")
        seen[network.id] = index
        attachment.target = network.id
        attached.append(network)
    return attached


def _update_config(spec: pb.ServiceSpec, which: str) -> None:
    path = f"spec.{which}"
    config: pb.UpdateConfig = getattr(spec, which)
    if not spec.HasField(which):  # type: ignore[arg-type]
        config.parallelism = DEFAULT_UPDATE_PARALLELISM
        config.failure_action = pb.UpdateConfig.PAUSE
        config.order = pb.UpdateConfig.STOP_FIRST
    _duration(config, "delay", path, DEFAULT_UPDATE_DELAY_NS)
    _duration(config, "monitor", path, DEFAULT_MONITOR_NS)
    _check_enum(config, "failure_action", path)
    if which == "rollback" and config.failure_action == pb.UpdateConfig.ROLLBACK:
        raise ValidationError(f"{path}.failure_action",
                              "a rollback cannot roll back (expected PAUSE or CONTINUE)")
    _check_enum(config, "order", path)
    ratio = config.max_failure_ratio
    if not 0.0 <= ratio <= 1.0:  # also refuses NaN
        raise ValidationError(f"{path}.max_failure_ratio",
                              f"must be between 0 and 1 (got {ratio:g})")


def _check_endpoint(endpoint: pb.EndpointSpec, path: str) -> None:
    _check_enum(endpoint, "mode", path)
    published: dict[tuple[int, int], int] = {}
    for index, port in enumerate(endpoint.ports):
        where = f"{path}.ports[{index}]"
        _check_enum(port, "protocol", where)
        _check_enum(port, "publish_mode", where)
        _check_enum(port, "proxy_protocol", where)
        if port.proxy_protocol != pb.PortConfig.PROXY_NONE and (
                port.protocol != pb.PortConfig.TCP
                or port.publish_mode != pb.PortConfig.INGRESS):
            raise ValidationError(f"{where}.proxy_protocol", "only for TCP ports published in "
                                  "ingress mode (a PROXY header starts a TCP stream; a host-mode "
                                  "task sees the client's address without it)")
        if not 1 <= port.target_port <= MAX_PORT:
            raise ValidationError(f"{where}.target_port", f"must be between 1 and {MAX_PORT} "
                                  f"(got {port.target_port})")
        if port.published_port > MAX_PORT:
            raise ValidationError(f"{where}.published_port", f"must be between 0 (assigned by "
                                  f"the controller) and {MAX_PORT} (got {port.published_port})")
        if endpoint.mode == pb.EndpointSpec.DNSRR and port.publish_mode == pb.PortConfig.INGRESS:
            raise ValidationError(f"{where}.publish_mode",
                                  "INGRESS ports cannot be used with endpoint mode DNSRR (use "
                                  "publish_mode HOST, or endpoint mode VIP)")
        if port.published_port:
            key = (port.protocol, port.published_port)
            if key in published:
                protocol = pb.PortConfig.Protocol.Name(port.protocol).lower()
                raise ValidationError(f"{where}.published_port",
                                      f"port {port.published_port}/{protocol} is already "
                                      f"published by ports[{published[key]}]")
            published[key] = index


def _check_internal(endpoint: pb.EndpointSpec, attached: list[pb.Network], path: str) -> None:
    """An internal network has no path out of the cluster, and a published
    port is one: a service on one publishes nothing (docker refuses it too)."""
    if not endpoint.ports:
        return
    for network in attached:
        if network.spec.internal:
            raise ValidationError(path, f"cannot publish ports: network "
                                  f"{_show(network.spec.name)} is internal (no path out of "
                                  "the cluster); drop the published ports (--publish) or "
                                  "the network")


# The largest service spec accepted (serialized). Every task record carries a
# copy of the spec (and so does each of the 5 history tasks kept per slot), and
# every status report rewrites its task: at 32 KiB a 20 KiB environment
# fits, 1,000 replicas with their history take about 200 MB (a tenth of
# etcd's default 2 GiB quota), and a 1 MiB transaction still carries 30 task
# writes, far from etcd's 1.5 MiB request limit. Larger data belongs in a
# volume or an image, not in the spec.
MAX_SERVICE_SPEC_BYTES = 32 * 1024


def check_spec_size(size: int, limit: int = MAX_SERVICE_SPEC_BYTES,
                    path: str = "spec") -> None:
    if size > limit:
        raise ValidationError(path, f"the service spec is {size} bytes ({size / 1024:.1f} KiB), "
                              f"over the limit of {limit} bytes ({limit // 1024} KiB): keep "
                              "large data in a volume or the image, not in env, args or labels")


def normalize_service_spec(spec: pb.ServiceSpec,
                           networks: Mapping[str, pb.Network]) -> pb.ServiceSpec:
    """Validate a service spec; return a new one with the defaults filled in and the
    network targets resolved to IDs. Raises ValidationError on the first problem."""
    check_spec_size(spec.ByteSize())
    out = pb.ServiceSpec()
    out.CopyFrom(spec)
    _check_name(out.name, "spec.name", "web")
    _check_labels(out.labels, "spec.labels")
    mode = out.WhichOneof("mode")
    if mode is None:
        out.replicated.replicas = DEFAULT_REPLICAS
    elif mode == "replicated":
        validate_replicas(out.replicated.replicas, "spec.mode.replicated.replicas")
    _check_job(out)
    task = out.task
    _check_container(task.container, "spec.task.container")
    _check_resources(task.resources, "spec.task.resources")
    _check_log_driver(task.log_driver, "spec.task.log_driver")
    _check_restart(task, "spec.task.restart")
    _check_placement(out, "spec.task.placement")
    attached = _resolve_networks(task, networks, "spec.task.networks")
    if not is_job(out):
        _update_config(out, "update")
        _update_config(out, "rollback")
    out.endpoint.SetInParent()  # unset: mode VIP, no ports
    _check_endpoint(out.endpoint, "spec.endpoint")
    _check_internal(out.endpoint, attached, "spec.endpoint.ports")
    check_host_network(out)
    return out


HOST_NETWORK = "host"  # `--network host`, compose `network_mode: host`


def check_host_network(spec: pb.ServiceSpec) -> None:
    """A host-network task binds the node's ports itself and is reached on the
    node's addresses: it cannot publish ports (the routing mesh and mode=host
    forward into a task's own namespace), join networks or have a VIP (both live
    in a namespace of its own)."""
    if not spec.task.host_network:
        return
    if spec.endpoint.ports:
        raise ValidationError("spec.endpoint.ports", "a host-network service (--network host) "
                              "cannot publish ports: it binds the node's ports itself")
    if spec.task.networks:
        raise ValidationError("spec.task.networks", "a host-network service (--network host) "
                              "cannot join other networks")


# ---------------------------------------------------------------- nodes and networks


def normalize_node_spec(spec: pb.NodeSpec) -> pb.NodeSpec:
    """Validate a node spec (labels, role, availability); return a copy."""
    out = pb.NodeSpec()
    out.CopyFrom(spec)
    _check_labels(out.labels, "spec.labels")
    _check_enum(out, "role", "spec")
    _check_enum(out, "availability", "spec")
    return out


def _check_ipam(ipam: pb.IPAMConfig, path: str) -> None:
    if not ipam.subnet:
        if ipam.gateway:
            raise ValidationError(f"{path}.gateway", "a gateway needs a subnet")
        return
    subnet_text = ipam.subnet
    if not re.fullmatch(r"[0-9.]+/[0-9]{1,2}", subnet_text):
        raise ValidationError(f"{path}.subnet", f"invalid subnet {_show(subnet_text)}: "
                              "expected an IPv4 network in CIDR form, e.g. 10.10.0.0/24")
    try:
        subnet = ipaddress.IPv4Network(subnet_text, strict=True)
    except ValueError as error:
        raise ValidationError(f"{path}.subnet", f"invalid subnet {_show(subnet_text)}: "
                              f"{error} (expected e.g. 10.10.0.0/24)") from None
    if not _MIN_PREFIX <= subnet.prefixlen <= _MAX_PREFIX:
        raise ValidationError(f"{path}.subnet", f"the prefix of {_show(subnet_text)} must be "
                              f"between /{_MIN_PREFIX} and /{_MAX_PREFIX}")
    ipam.subnet = str(subnet)
    if not ipam.gateway:
        return
    try:
        gateway = ipaddress.IPv4Address(ipam.gateway)
    except ValueError:
        raise ValidationError(f"{path}.gateway", f"invalid gateway {_show(ipam.gateway)}: "
                              "expected an IPv4 address, e.g. 10.10.0.1") from None
    if gateway not in subnet:
        raise ValidationError(f"{path}.gateway", f"the gateway {gateway} is not in the "
                              f"subnet {subnet}")
    if gateway in (subnet.network_address, subnet.broadcast_address):
        raise ValidationError(f"{path}.gateway", f"the gateway {gateway} is the network or "
                              f"broadcast address of {subnet}, not a host address")
    ipam.gateway = str(gateway)


def normalize_network_spec(spec: pb.NetworkSpec) -> pb.NetworkSpec:
    """Validate a network spec; return a copy with the driver defaulted to overlay
    and the subnet and gateway in canonical form."""
    out = pb.NetworkSpec()
    out.CopyFrom(spec)
    _check_name(out.name, "spec.name", "backend")
    if out.name == HOST_NETWORK:
        raise ValidationError("spec.name", f"{HOST_NETWORK!r} is reserved: `--network host` "
                              "shares the node's network namespace")
    _check_labels(out.labels, "spec.labels")
    if not out.driver:
        out.driver = DEFAULT_NETWORK_DRIVER
    if out.driver != DEFAULT_NETWORK_DRIVER:
        raise ValidationError("spec.driver", f"unsupported driver {_show(out.driver)} "
                              f"(only {DEFAULT_NETWORK_DRIVER!r} is supported)")
    if out.HasField("ipam"):
        _check_ipam(out.ipam, "spec.ipam")
    if out.ingress and (out.internal or out.attachable):
        raise ValidationError("spec.ingress", "the ingress network can be neither internal nor "
                              "attachable")
    return out
