"""The runtime-option flags of `service create` and `service update` (issue 13):
capabilities, sysctls, ulimits, the pids limit, devices, groups, DNS, extra
hosts, --env-file and --tty, applied to a ContainerSpec.

Pure but for --env-file, which reads its files here, at the edge, as docker's
CLI does (the spec carries the variables, not the path). The meaning of each
value is swarm.api.runopts's, shared with the compose loader and the
controller's validation; a bad value is a BadFlag naming the flag (exit 2),
found before anything is sent. The flags themselves are declared in
cli/service/flags.py; these dataclasses are mixed into the options of
cli/service/options.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from swarm.api import runopts
from swarm.api.v1 import objects_pb2 as pb
from swarm.api.validation import signal_number

from . import parsing
from .errors import BadFlag

T = TypeVar("T")


@dataclass(kw_only=True)
class RuntimeTaskOptions:
    """The flags with one name on both commands. Empty or None: not given."""

    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    group_add: list[str] = field(default_factory=list)
    limit_pids: str | None = None
    tty: bool | None = None


@dataclass(kw_only=True)
class RuntimeCreateOptions:
    sysctls: list[str] = field(default_factory=list)
    ulimits: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    dns: list[str] = field(default_factory=list)
    dns_search: list[str] = field(default_factory=list)
    dns_options: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    env_files: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class RuntimeUpdateOptions:
    group_rm: list[str] = field(default_factory=list)
    sysctl_add: list[str] = field(default_factory=list)
    sysctl_rm: list[str] = field(default_factory=list)
    ulimit_add: list[str] = field(default_factory=list)
    ulimit_rm: list[str] = field(default_factory=list)
    device_add: list[str] = field(default_factory=list)
    device_rm: list[str] = field(default_factory=list)
    dns_add: list[str] = field(default_factory=list)
    dns_rm: list[str] = field(default_factory=list)
    dns_search_add: list[str] = field(default_factory=list)
    dns_search_rm: list[str] = field(default_factory=list)
    dns_option_add: list[str] = field(default_factory=list)
    dns_option_rm: list[str] = field(default_factory=list)
    host_add: list[str] = field(default_factory=list)
    host_rm: list[str] = field(default_factory=list)


def _parse(flag: str, parse: Callable[[str], T], text: str) -> T:
    try:
        return parse(text)
    except ValueError as error:
        raise BadFlag(flag, str(error)) from None


def _check(flag: str, problem: Callable[[str], str | None], text: str) -> str:
    found = problem(text)
    if found is not None:
        raise BadFlag(flag, found)
    return text


def _merge(current: Sequence[str], remove: Sequence[str], add: Sequence[str]) -> list[str]:
    """The current items without the removed ones, then the added ones not there yet."""
    kept = [item for item in current if item not in set(remove)]
    return kept + [item for item in dict.fromkeys(add) if item not in kept]


# ---------------------------------------------------------------- both commands


def apply_task_options(container: pb.ContainerSpec, options: RuntimeTaskOptions,
                       *, group_rm: Sequence[str] = ()) -> None:
    """--cap-add/--cap-drop as docker's `service update` applies them (an add
    takes the name out of the drops and the other way round, so that a later
    update can undo an earlier one), --group-add, --limit-pids, --tty."""
    adds = [_parse("--cap-add", runopts.capability_name, c) for c in options.cap_add]
    drops = [_parse("--cap-drop", runopts.capability_name, c) for c in options.cap_drop]
    both = set(adds) & set(drops)
    if both:
        raise BadFlag("--cap-add", f"{sorted(both)[0]} is both added and dropped")
    if adds or drops:
        container.cap_add[:] = _merge(container.cap_add, drops, adds)
        container.cap_drop[:] = _merge(container.cap_drop, adds, drops)
    groups = [_check("--group-add", runopts.group_problem, g) for g in options.group_add]
    removed = [_check("--group-rm", runopts.group_problem, g) for g in group_rm]
    if groups or removed:
        container.groups[:] = _merge(container.groups, removed, groups)
    if options.limit_pids is not None:
        container.pids_limit = parsing.count("--limit-pids", options.limit_pids, minimum=1,
                                             maximum=2**63 - 1)
    if options.tty is not None:
        container.tty = options.tty


def check_stop_signal(text: str) -> str:
    try:
        signal_number(text)
    except ValueError as error:
        raise BadFlag("--stop-signal", str(error)) from None
    return text


# ---------------------------------------------------------------- service create


def read_env_file(flag: str, path: str, environ: Mapping[str, str]) -> list[str]:
    """docker's --env-file: KEY=VALUE lines, as written (no quotes removed); a
    KEY alone takes the value of this shell's KEY, or is left out; '#' lines
    and blank lines are skipped."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise BadFlag(flag, f"cannot read {path!r}: {reason}") from None
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not key or any(char.isspace() for char in key):
            raise BadFlag(flag, f"{path}, line {number}: invalid variable name {key!r}: "
                          "expected KEY=VALUE")
        if sep:
            entries.append(f"{key}={value}")
        elif key in environ:
            entries.append(f"{key}={environ[key]}")
    return entries


def env_file_entries(paths: Sequence[str], environ: Mapping[str, str] | None = None
                     ) -> list[str]:
    env = os.environ if environ is None else environ
    return [entry for path in paths for entry in read_env_file("--env-file", path, env)]


def _ulimits(container: pb.ContainerSpec, flag: str, items: Sequence[str]) -> None:
    for item in items:
        name, soft, hard = _parse(flag, runopts.parse_ulimit, item)
        kept = [u for u in container.ulimits if u.name != name]
        del container.ulimits[:]
        container.ulimits.extend([*kept, pb.Ulimit(name=name, soft=soft, hard=hard)])


def _devices(container: pb.ContainerSpec, flag: str, items: Sequence[str]) -> None:
    for item in items:
        host, target, permissions = _parse(flag, runopts.parse_device, item)
        kept = [d for d in container.devices if (d.path_in_container or d.path_on_host) != target]
        del container.devices[:]
        container.devices.extend([*kept, pb.DeviceMapping(
            path_on_host=host, path_in_container=target, permissions=permissions)])


def _dns(container: pb.ContainerSpec, servers: tuple[Sequence[str], Sequence[str]],
         search: tuple[Sequence[str], Sequence[str]],
         options: tuple[Sequence[str], Sequence[str]], suffix: str) -> None:
    """Each pair is (removed, added)."""
    dns = container.dns_config
    for (removed, added), attribute, flag, problem in (
            (servers, "nameservers", "--dns", runopts.nameserver_problem),
            (search, "search", "--dns-search", runopts.search_domain_problem),
            (options, "options", "--dns-option", runopts.dns_option_problem)):
        if not removed and not added:
            continue
        for item in added:
            _check(f"{flag}{suffix}", problem, item)
        values: list[str] = _merge(getattr(dns, attribute), removed, added)
        getattr(dns, attribute)[:] = values
    if len(dns.nameservers) > runopts.MAX_NAMESERVERS:
        raise BadFlag(f"--dns{suffix}", f"at most {runopts.MAX_NAMESERVERS} DNS servers "
                      f"(got {len(dns.nameservers)})")
    if len(dns.search) > runopts.MAX_SEARCH_DOMAINS:
        raise BadFlag(f"--dns-search{suffix}", f"at most {runopts.MAX_SEARCH_DOMAINS} search "
                      f"domains (got {len(dns.search)})")


def apply_create_options(container: pb.ContainerSpec, options: RuntimeTaskOptions,
                         create: RuntimeCreateOptions) -> None:
    apply_task_options(container, options)
    for item in create.sysctls:
        name, value = _parse("--sysctl", runopts.parse_sysctl, item)
        container.sysctls[name] = value
    _ulimits(container, "--ulimit", create.ulimits)
    _devices(container, "--device", create.devices)
    _dns(container, ((), create.dns), ((), create.dns_search), ((), create.dns_options), "")
    for item in create.hosts:
        container.hosts.append(_parse("--host", runopts.parse_extra_host, item))


# ---------------------------------------------------------------- service update


def _host_removed(line: str, wanted: str) -> bool:
    """--host-rm HOST removes every line naming HOST; HOST:IP only that pair."""
    fields = line.split()
    name, _, address = wanted.partition(":")
    return name in fields[1:] and (not address or fields[0] == address)


def apply_update_options(container: pb.ContainerSpec, options: RuntimeTaskOptions,
                         update: RuntimeUpdateOptions) -> None:
    apply_task_options(container, options, group_rm=update.group_rm)
    for name in update.sysctl_rm:
        container.sysctls.pop(parsing.key_only("--sysctl-rm", name), None)
    for item in update.sysctl_add:
        name, value = _parse("--sysctl-add", runopts.parse_sysctl, item)
        container.sysctls[name] = value
    if update.ulimit_rm:
        removed = {name.strip().lower() for name in update.ulimit_rm}
        kept = [u for u in container.ulimits if u.name not in removed]
        del container.ulimits[:]
        container.ulimits.extend(kept)
    _ulimits(container, "--ulimit-add", update.ulimit_add)
    if update.device_rm:
        removed = set(update.device_rm)
        kept_devices = [d for d in container.devices
                        if (d.path_in_container or d.path_on_host) not in removed
                        and d.path_on_host not in removed]
        del container.devices[:]
        container.devices.extend(kept_devices)
    _devices(container, "--device-add", update.device_add)
    _dns(container, (update.dns_rm, update.dns_add),
         (update.dns_search_rm, update.dns_search_add),
         (update.dns_option_rm, update.dns_option_add), "-add")
    if update.host_rm or update.host_add:
        lines = [line for line in container.hosts
                 if not any(_host_removed(line, wanted) for wanted in update.host_rm)]
        for item in update.host_add:
            line = _parse("--host-add", runopts.parse_extra_host, item)
            if line not in lines:
                lines.append(line)
        container.hosts[:] = lines
