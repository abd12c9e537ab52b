"""What a compose file may hold: the keys we support and those we warn about, the
values of enumerated keys, and typed access to Nodes that fails with the key path."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import NoReturn, TypeVar

from swarm.api import units

from .model import Location, Node, StackError, kind_of, quote

E = TypeVar("E", bound=int)

NAMESPACE_LABEL = "com.docker.stack.namespace"
DEFAULT_NETWORK = "default"

UINT32_MAX = 2**32 - 1
_INT64_MAX = 2**63 - 1
MAX_PORT = 65_535
MAX_DEPTH = 100  # YAML nesting; deeper is refused rather than recursing further
# The most values one file may expand to. Aliases share a node, so a small
# file can name an exponential number of values ("billion laughs": 9 lines of
# 10 aliases each are 10^9 values); expanding it would take minutes and
# gigabytes. A real stack is a few thousand values. (Merge keys, `<<: *name`,
# are no bomb: PyYAML 6's flatten_mapping keeps each merged key once.)
MAX_NODES = 50_000
STACK_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")
ENV_KEY_RE = re.compile(r"[^=\s]+")

# Keys compose defines that have no meaning here. They are warned about, with their
# line, and ignored: a file written for docker still deploys.
UNSUPPORTED_SERVICE_KEYS = frozenset({
    "annotations", "attach", "blkio_config", "build", "cgroup",
    "cgroup_parent", "container_name", "cpu_count", "cpu_percent", "cpu_period",
    "cpu_quota", "cpu_rt_period", "cpu_rt_runtime", "cpu_shares", "cpus", "cpuset",
    "credential_spec", "depends_on", "develop", "device_cgroup_rules",
    "domainname", "expose", "extends", "external_links",
    "ipc", "isolation", "links", "mac_address",
    "mem_limit", "mem_reservation", "mem_swappiness", "memswap_limit",
    "oom_kill_disable", "oom_score_adj", "pid", "platform", "privileged",
    "profiles", "pull_policy", "restart", "runtime", "scale",
    "shm_size", "stdin_open", "storage_opt", "userns_mode",
    "uts", "volumes_from",
})
SERVICE_KEYS = frozenset({
    "image", "command", "entrypoint", "environment", "env_file", "ports", "networks",
    "volumes", "healthcheck", "stop_grace_period", "stop_signal", "labels", "hostname",
    "user", "working_dir", "read_only", "tmpfs", "init", "deploy", "secrets", "configs",
    "security_opt", "logging",
    # Runtime options (swarm.api.runopts).
    "cap_add", "cap_drop", "sysctls", "ulimits", "pids_limit", "devices", "group_add", "dns",
    "dns_search", "dns_opt", "extra_hosts", "tty",
    # Only `host` (the node's network namespace); other modes are refused.
    "network_mode",
})
# deploy keys warned about and ignored (none left: reservations' generic_resources
# and devices are cli/compose/resources.py's).
UNSUPPORTED_DEPLOY_KEYS: frozenset[str] = frozenset()
TOP_LEVEL_KEYS = frozenset({"version", "name", "services", "networks", "volumes", "secrets",
                            "configs"})
UNSUPPORTED_TOP_LEVEL_KEYS = frozenset({"include"})


def fail(node: Node, path: str, problem: str) -> NoReturn:
    raise StackError(node.location, path, problem)


def as_mapping(node: Node, path: str) -> dict[str, Node]:
    if node.value is None:
        return {}
    if not isinstance(node.value, dict):
        fail(node, path, f"expected a mapping, got {kind_of(node.value)}")
    return node.value


def as_list(node: Node, path: str) -> list[Node]:
    if node.value is None:
        return []
    if not isinstance(node.value, list):
        fail(node, path, f"expected a list, got {kind_of(node.value)}")
    return node.value


def as_string(node: Node, path: str, *, allow_number: bool = True) -> str:
    value = node.value
    if isinstance(value, str):
        return value
    if allow_number and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    fail(node, path, f"expected a string, got {kind_of(value)}")


def as_scalar_text(node: Node, path: str) -> str:
    """Environment and label values: strings, numbers and booleans, as compose writes
    them (true -> "true"); null is "" ."""
    value = node.value
    if isinstance(value, dict | list):
        fail(node, path, f"expected a string, number or boolean, got {kind_of(value)}")
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def as_integer(node: Node, path: str, *, maximum: int = _INT64_MAX, minimum: int = 0) -> int:
    value = node.value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,19}\s*", value):
        value = int(value)  # after interpolation: replicas: ${N}
    if not isinstance(value, int) or isinstance(value, bool):
        fail(node, path, f"expected a whole number, got {kind_of(value)} {quote(node.value)}")
    if value < minimum:
        fail(node, path, f"must not be negative (got {value})" if minimum == 0
              else f"must be at least {minimum} (got {value})")
    if value > maximum:
        fail(node, path, f"must be at most {maximum} (got {value})")
    return value


def as_boolean(node: Node, path: str) -> bool:
    value = node.value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        fail(node, path, f"expected true or false, got {kind_of(value)} {quote(value)}")
    return value


def as_choice(node: Node, path: str, options: Mapping[str, E]) -> E:
    text = as_string(node, path).strip().lower()
    if text not in options:
        fail(node, path, f"invalid value {quote(node.value)} (expected "
              f"{', '.join(options)})")
    return options[text]


def as_duration(node: Node, path: str) -> int:
    text = as_string(node, path, allow_number=False)
    try:
        nanos = units.parse_duration(text)
    except ValueError:
        fail(node, path, f"invalid duration {quote(text)} (expected e.g. 10s, 1m30s, 500ms)")
    if nanos > 315_576_000_000 * 1_000_000_000:
        fail(node, path, f"duration {quote(text)} is out of range")
    return nanos


def as_size(node: Node, path: str) -> int:
    value = node.value
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else \
        as_string(node, path, allow_number=False)
    try:
        size = units.parse_memory(text)
    except ValueError:
        fail(node, path, f"invalid size {quote(text)} (expected bytes or a number with a "
              "unit b, k, m, g, e.g. 512M)")
    if size > _INT64_MAX:
        fail(node, path, f"size {quote(text)} is too large")
    return size


def as_cpus(node: Node, path: str) -> int:
    text = as_scalar_text(node, path) if not isinstance(node.value, bool) else "x"
    try:
        nanos = units.parse_cpus(text)
    except ValueError:
        fail(node, path, f"invalid CPU count {quote(node.value)} (expected a number such "
              "as 0.5 or 2)")
    if nanos > _INT64_MAX:
        fail(node, path, f"CPU count {quote(text)} is too large")
    return nanos


def as_external(node: Node, path: str) -> tuple[bool, str | None]:
    """A network's or volume's `external:`: a boolean, or the legacy form
    `external: {name: x}` (external, under that name)."""
    if isinstance(node.value, dict):
        legacy = as_mapping(node, path)
        return True, as_string(legacy["name"], f"{path}.name") if "name" in legacy else None
    return as_boolean(node, path), None


def as_strings(node: Node, path: str) -> list[str]:
    """A list of strings (numbers allowed, written as text)."""
    return [as_string(item, f"{path}[{i}]") for i, item in enumerate(as_list(node, path))]


def as_command(node: Node, path: str) -> list[str]:
    """`command: echo hi` (split as a shell would) or `command: [echo, hi]`."""
    if isinstance(node.value, str):
        try:
            return shlex.split(node.value)
        except ValueError as error:
            fail(node, path, f"invalid command {quote(node.value)}: {error}")
    return as_strings(node, path)


def as_key_value_pairs(node: Node, path: str, *, environment: bool,
                     environ: Mapping[str, str]) -> dict[str, str | None]:
    """The list form (`- KEY=VALUE`) or the map form (`KEY: VALUE`) of environment and
    labels. In the environment, a KEY without a value takes it from the shell, as
    compose does, or is left out (None) when the shell has none."""
    pairs: dict[str, str | None] = {}
    if isinstance(node.value, list):
        for index, item in enumerate(node.value):
            text = as_string(item, f"{path}[{index}]")
            key, sep, text_value = text.partition("=")
            if not ENV_KEY_RE.fullmatch(key):
                fail(item, f"{path}[{index}]", f"invalid entry {quote(text)}: expected "
                      "KEY=VALUE with a non-empty KEY without spaces")
            pairs[key] = text_value if sep else (environ.get(key) if environment else "")
        return pairs
    for key, value in as_mapping(node, path).items():
        if not ENV_KEY_RE.fullmatch(key):
            fail(value, f"{path}", f"invalid key {quote(key)}: expected a non-empty KEY "
                  "without spaces or '='")
        if environment and value.value is None:
            pairs[key] = environ.get(key)
        else:
            pairs[key] = as_scalar_text(value, f"{path}.{key}")
    return pairs


def record_locations(node: Node, path: str, out: dict[str, Location]) -> None:
    """Every compose path under `node` -> where it is written."""
    out[path] = node.location
    if isinstance(node.value, dict):
        for key, value in node.value.items():
            record_locations(value, f"{path}.{key}" if path else key, out)
    elif isinstance(node.value, list):
        for index, item in enumerate(node.value):
            record_locations(item, f"{path}[{index}]", out)
