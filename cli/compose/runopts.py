"""A compose service's runtime options -> its ContainerSpec: cap_add, cap_drop,
sysctls, ulimits, pids_limit, devices, group_add, dns, dns_search, dns_opt,
extra_hosts, tty (deploy.resources.limits.pids is read with the other
limits, in services.py).

The values mean what they mean for `docker stack deploy` and are checked by
swarm.api.runopts, as swarmctl's flags are: a bad one fails the whole file
with its line and key path before anything is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from swarm.api import runopts
from swarm.api.v1 import objects_pb2 as pb

from .model import Node, quote
from .schema import (
    as_boolean,
    as_integer,
    as_list,
    as_mapping,
    as_scalar_text,
    as_string,
    fail,
)

T = TypeVar("T")
_INT64_MAX = 2**63 - 1


def _parsed(node: Node, path: str, parse: Callable[[str], T], text: str) -> T:
    try:
        return parse(text)
    except ValueError as error:
        fail(node, path, str(error))


def _checked(node: Node, path: str, problem: Callable[[str], str | None], text: str) -> str:
    found = problem(text)
    if found is not None:
        fail(node, path, found)
    return text


def _one_or_many(node: Node, path: str) -> list[tuple[Node, str]]:
    """`dns: 8.8.8.8` or `dns: [8.8.8.8, 1.1.1.1]`, each with its own path."""
    if isinstance(node.value, str):
        return [(node, path)]
    return [(item, f"{path}[{index}]") for index, item in enumerate(as_list(node, path))]


def _sysctls(container: pb.ContainerSpec, node: Node, path: str) -> None:
    """The map form (`net.core.somaxconn: 1024`) or the list form (`- NAME=VALUE`)."""
    if isinstance(node.value, list):
        for index, item in enumerate(node.value):
            where = f"{path}[{index}]"
            name, value = _parsed(item, where, runopts.parse_sysctl, as_string(item, where))
            container.sysctls[name] = value
        return
    for name, value_node in as_mapping(node, path).items():
        where = f"{path}.{name}"
        value = as_scalar_text(value_node, where)
        problem = runopts.sysctl_problem(name, value)
        if problem is not None:
            fail(value_node, where, problem)
        container.sysctls[name] = value.strip()


def _limit(node: Node, path: str) -> int:
    return as_integer(node, path, minimum=runopts.UNLIMITED, maximum=_INT64_MAX)


def _ulimits(container: pb.ContainerSpec, node: Node, path: str) -> None:
    """`nofile: 1024` (soft = hard) or `nofile: {soft: 1024, hard: 2048}`."""
    for name, value in as_mapping(node, path).items():
        where = f"{path}.{name}"
        if isinstance(value.value, dict):
            limits = as_mapping(value, where)
            unknown = set(limits) - {"soft", "hard"}
            if unknown or set(limits) != {"soft", "hard"}:
                fail(value, where, "expected `soft:` and `hard:` (or a single number)")
            soft, hard = _limit(limits["soft"], f"{where}.soft"), _limit(limits["hard"],
                                                                          f"{where}.hard")
        else:
            soft = hard = _limit(value, where)
        problem = runopts.ulimit_problem(name, soft, hard)
        if problem is not None:
            fail(value, where, problem)
        container.ulimits.add(name=name, soft=soft, hard=hard)


def _devices(container: pb.ContainerSpec, node: Node, path: str) -> None:
    """`/dev/x[:/dev/y[:rwm]]` or the long form {source, target, permissions}."""
    for index, item in enumerate(as_list(node, path)):
        where = f"{path}[{index}]"
        if isinstance(item.value, dict):
            options = as_mapping(item, where)
            unknown = set(options) - {"source", "target", "permissions"}
            if unknown or "source" not in options:
                fail(item, where, "expected source:, target: and permissions:")
            host = as_string(options["source"], f"{where}.source")
            target = (as_string(options["target"], f"{where}.target") if "target" in options
                      else host)
            permissions = (as_string(options["permissions"], f"{where}.permissions")
                           if "permissions" in options else runopts.DEVICE_PERMISSIONS)
            problem = runopts.device_problem(host, target, permissions)
            if problem is not None:
                fail(item, where, problem)
        else:
            host, target, permissions = _parsed(item, where, runopts.parse_device,
                                                as_string(item, where, allow_number=False))
        container.devices.add(path_on_host=host, path_in_container=target,
                              permissions=permissions)


def _extra_hosts(container: pb.ContainerSpec, node: Node, path: str) -> None:
    """`- "db:10.0.0.5"` (also `db=10.0.0.5`) or the map form `db: 10.0.0.5`."""
    if isinstance(node.value, dict):
        for name, value in as_mapping(node, path).items():
            where = f"{path}.{name}"
            addresses = [as_string(v, w) for v, w in _one_or_many(value, where)]
            for address in addresses:
                container.hosts.append(_parsed(value, where, runopts.parse_extra_host,
                                               f"{name}={address}"))
        return
    for index, item in enumerate(as_list(node, path)):
        where = f"{path}[{index}]"
        container.hosts.append(_parsed(item, where, runopts.parse_extra_host,
                                       as_string(item, where, allow_number=False)))


def convert_runtime_options(container: pb.ContainerSpec, fields: Mapping[str, Node],
                            path: str) -> None:
    for key, attribute in (("cap_add", "cap_add"), ("cap_drop", "cap_drop")):
        if key in fields:
            for item, where in _one_or_many(fields[key], f"{path}.{key}"):
                name = _parsed(item, where, runopts.capability_name, as_string(item, where))
                if name not in getattr(container, attribute):
                    getattr(container, attribute).append(name)
    both = set(container.cap_add) & set(container.cap_drop)
    if both:
        fail(fields["cap_drop"], f"{path}.cap_drop",
             f"{quote(sorted(both)[0])} is also in cap_add")
    if "sysctls" in fields:
        _sysctls(container, fields["sysctls"], f"{path}.sysctls")
    if "ulimits" in fields:
        _ulimits(container, fields["ulimits"], f"{path}.ulimits")
    if "pids_limit" in fields:
        set_pids_limit(container, fields["pids_limit"], f"{path}.pids_limit")
    if "devices" in fields:
        _devices(container, fields["devices"], f"{path}.devices")
    if "group_add" in fields:
        for item, where in _one_or_many(fields["group_add"], f"{path}.group_add"):
            container.groups.append(_checked(item, where, runopts.group_problem,
                                             as_string(item, where)))
    dns = container.dns_config
    for key, values, problem, limit in (
            ("dns", dns.nameservers, runopts.nameserver_problem, runopts.MAX_NAMESERVERS),
            ("dns_search", dns.search, runopts.search_domain_problem,
             runopts.MAX_SEARCH_DOMAINS),
            ("dns_opt", dns.options, runopts.dns_option_problem, 0)):
        if key not in fields:
            continue
        items = _one_or_many(fields[key], f"{path}.{key}")
        if limit and len(items) > limit:
            fail(fields[key], f"{path}.{key}", f"at most {limit} (got {len(items)})")
        for item, where in items:
            values.append(_checked(item, where, problem, as_string(item, where)))
    if "extra_hosts" in fields:
        _extra_hosts(container, fields["extra_hosts"], f"{path}.extra_hosts")
    if "tty" in fields:
        container.tty = as_boolean(fields["tty"], f"{path}.tty")


def set_pids_limit(container: pb.ContainerSpec, node: Node, path: str) -> None:
    """pids_limit or deploy.resources.limits.pids: at least 1 (compose's -1,
    unlimited, is refused: a task always has a bound here, the node's default
    when none is given)."""
    container.pids_limit = as_integer(node, path, minimum=1)
