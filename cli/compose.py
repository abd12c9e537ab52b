"""Compose-format stack files (`docker stack deploy -c FILE`) -> typed API specs.

Pure apart from reading the file and its env_files: `parse_stack` turns the text
into a `Stack` of ServiceSpecs and NetworkSpecs named and labelled as docker
names them (STACK_SERVICE, STACK_NETWORK, label com.docker.stack.namespace=STACK),
or raises StackError on the first problem, as one line:

    web.yaml:12:9: services.web.ports[0]: invalid port "80a": ...

Every value keeps the line and column it was written at (the YAML node's mark), so
that errors and warnings point at the file. Keys compose knows but the orchestrator
does not support (build, depends_on, privileged, ...) are warnings naming the key
and its line, never dropped silently; unknown keys are errors, as they are in
compose's schema. After building, every spec also goes through the controller's
own `normalize_*` validation (controller/api/validation.py), so the client cannot
accept a file that the server would refuse halfway through an apply.

Not supported (yet): nested interpolation (`${A:-${B}}`), `.env` files next to the
stack file (docker stack deploy does not read them either), `extends`, secrets and
configs (warned about), volume drivers (volumes are each node's local directories).
Only the first problem is reported: fix it and run again.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import yaml

from swarm.api import units
from swarm.api.v1 import objects_pb2 as pb
from swarm.api.validation import (
    ValidationError,
    normalize_network_spec,
    normalize_service_spec,
)

E = TypeVar("E", bound=int)

NAMESPACE_LABEL = "com.docker.stack.namespace"
DEFAULT_NETWORK = "default"

_UINT32_MAX = 2**32 - 1
_INT64_MAX = 2**63 - 1
_MAX_PORT = 65_535
_MAX_DEPTH = 100  # YAML nesting; deeper is refused rather than recursing further
_STACK_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")
_ENV_KEY_RE = re.compile(r"[^=\s]+")

# Keys compose defines that have no meaning here. They are warned about, with their
# line, and ignored: a file written for docker still deploys.
_UNSUPPORTED_SERVICE_KEYS = frozenset({
    "annotations", "attach", "blkio_config", "build", "cap_add", "cap_drop", "cgroup",
    "cgroup_parent", "configs", "container_name", "cpu_count", "cpu_percent", "cpu_period",
    "cpu_quota", "cpu_rt_period", "cpu_rt_runtime", "cpu_shares", "cpus", "cpuset",
    "credential_spec", "depends_on", "develop", "device_cgroup_rules", "devices", "dns",
    "dns_opt", "dns_search", "domainname", "expose", "extends", "external_links",
    "extra_hosts", "group_add", "ipc", "isolation", "links", "logging", "mac_address",
    "mem_limit", "mem_reservation", "mem_swappiness", "memswap_limit", "network_mode",
    "oom_kill_disable", "oom_score_adj", "pid", "pids_limit", "platform", "privileged",
    "profiles", "pull_policy", "restart", "runtime", "scale", "secrets", "security_opt",
    "shm_size", "stdin_open", "storage_opt", "sysctls", "tty", "ulimits", "userns_mode",
    "uts", "volumes_from",
})
_SERVICE_KEYS = frozenset({
    "image", "command", "entrypoint", "environment", "env_file", "ports", "networks",
    "volumes", "healthcheck", "stop_grace_period", "stop_signal", "labels", "hostname",
    "user", "working_dir", "read_only", "tmpfs", "init", "deploy",
})
_UNSUPPORTED_DEPLOY_KEYS = frozenset({"resources.limits.pids", "resources.reservations.devices",
                                      "resources.reservations.generic_resources"})
_TOP_LEVEL_KEYS = frozenset({"version", "name", "services", "networks", "volumes"})
_UNSUPPORTED_TOP_LEVEL_KEYS = frozenset({"secrets", "configs", "include"})

_PROTOCOLS: dict[str, pb.PortConfig.Protocol.ValueType] = {
    "tcp": pb.PortConfig.TCP, "udp": pb.PortConfig.UDP, "sctp": pb.PortConfig.SCTP}
_PUBLISH_MODES: dict[str, pb.PortConfig.PublishMode.ValueType] = {
    "ingress": pb.PortConfig.INGRESS, "host": pb.PortConfig.HOST}
_RESTART_CONDITIONS: dict[str, pb.RestartPolicy.Condition.ValueType] = {
    "any": pb.RestartPolicy.ANY, "on-failure": pb.RestartPolicy.ON_FAILURE,
    "none": pb.RestartPolicy.NONE}
_FAILURE_ACTIONS: dict[str, pb.UpdateConfig.FailureAction.ValueType] = {
    "pause": pb.UpdateConfig.PAUSE, "continue": pb.UpdateConfig.CONTINUE,
    "rollback": pb.UpdateConfig.ROLLBACK}
_ORDERS: dict[str, pb.UpdateConfig.Order.ValueType] = {
    "stop-first": pb.UpdateConfig.STOP_FIRST, "start-first": pb.UpdateConfig.START_FIRST}
_ENDPOINT_MODES: dict[str, pb.EndpointSpec.Mode.ValueType] = {
    "vip": pb.EndpointSpec.VIP, "dnsrr": pb.EndpointSpec.DNSRR}
_MOUNT_TYPES: dict[str, pb.Mount.Type.ValueType] = {
    "volume": pb.Mount.VOLUME, "bind": pb.Mount.BIND, "tmpfs": pb.Mount.TMPFS}

# Where a controller-side validation error (proto path) is written in a compose
# service, so that it is reported at that key's line. Longest prefix wins.
_PROTO_TO_COMPOSE = (
    ("spec.name", ""),
    ("spec.labels", "deploy.labels"),
    ("spec.mode.replicated.replicas", "deploy.replicas"),
    ("spec.task.container.image", "image"),
    ("spec.task.container.env", "environment"),
    ("spec.task.container.dir", "working_dir"),
    ("spec.task.container.mounts", "volumes"),
    ("spec.task.container.stop_signal", "stop_signal"),
    ("spec.task.container.stop_grace_period", "stop_grace_period"),
    ("spec.task.container.drain_timeout", "x-drain-timeout"),
    ("spec.task.container.healthcheck", "healthcheck"),
    ("spec.task.container.labels", "labels"),
    ("spec.task.resources", "deploy.resources"),
    ("spec.task.restart", "deploy.restart_policy"),
    ("spec.task.placement.max_replicas_per_node", "deploy.placement.max_replicas_per_node"),
    ("spec.task.placement.preferences", "deploy.placement.preferences"),
    ("spec.task.placement", "deploy.placement.constraints"),
    ("spec.task.networks", "networks"),
    ("spec.update", "deploy.update_config"),
    ("spec.rollback", "deploy.rollback_config"),
    ("spec.endpoint.ports", "ports"),
    ("spec.endpoint", "deploy.endpoint_mode"),
)
_NETWORK_PROTO_TO_COMPOSE = (("spec.name", "name"), ("spec.labels", "labels"),
                             ("spec.driver", "driver"),
                             ("spec.ipam.subnet", "ipam.config[0].subnet"),
                             ("spec.ipam.gateway", "ipam.config[0].gateway"),
                             ("spec.ipam", "ipam"))


# ---------------------------------------------------------------- results and errors


@dataclass(frozen=True, order=True)
class Location:
    """Where something is written: 1-based line and column, as editors count."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


def _join(location: Location | None, path: str, text: str) -> str:
    parts = [str(location)] if location is not None else []
    if path:
        parts.append(path)
    return ": ".join([*parts, text])


class StackError(ValueError):
    """The one problem that stops a stack file: `FILE:LINE:COL: PATH: PROBLEM`."""

    def __init__(self, location: Location | None, path: str, problem: str) -> None:
        self.location = location
        self.path = path
        self.problem = " ".join(problem.split())  # always one line
        super().__init__(_join(location, path, self.problem))

    def __str__(self) -> str:
        return _join(self.location, self.path, self.problem)


@dataclass(frozen=True)
class StackWarning:
    """Something deployed differently from what the file may have meant."""

    location: Location | None
    path: str
    message: str

    def __str__(self) -> str:
        return _join(self.location, self.path, self.message)


@dataclass(frozen=True)
class Node:
    """A YAML value and where it was written. `value` is a dict[str, Node], a
    list[Node], or a scalar (str, int, float, bool or None)."""

    value: Any
    location: Location


@dataclass
class StackService:
    key: str  # the name in the file (`web`)
    spec: pb.ServiceSpec  # named STACK_web, networks by full name (resolved at the API)
    location: Location
    # compose path inside the service ("deploy.placement.constraints[0]") -> location
    where: dict[str, Location] = field(default_factory=dict)

    def locate(self, path: str) -> Location:
        """The location of `path`, or of its nearest written ancestor."""
        return _locate(self.where, path, self.location)


def _locate(where: Mapping[str, Location], path: str, default: Location) -> Location:
    while path:
        if path in where:
            return where[path]
        path = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", path)
    return default


@dataclass
class StackNetwork:
    key: str  # the name in the file (`backend`, or `default`)
    name: str  # STACK_backend, or the external network's own name
    external: bool
    spec: pb.NetworkSpec | None  # None for an external network
    location: Location
    where: dict[str, Location] = field(default_factory=dict)  # as StackService.where


@dataclass
class StackVolume:
    key: str
    name: str  # STACK_data, or the external volume's own name
    external: bool
    location: Location


@dataclass
class Stack:
    name: str
    file: str
    services: dict[str, StackService]
    networks: dict[str, StackNetwork]  # only those used or declared
    volumes: dict[str, StackVolume]
    warnings: list[StackWarning]


def _quote(value: object) -> str:
    """A user's value quoted for a one-line message, as in `invalid port "80a"`."""
    text = value if isinstance(value, str) else _describe(value)
    if len(text) > 64:
        text = text[:61] + "..."
    return json.dumps(text, ensure_ascii=False)


def _describe(value: object) -> str:
    if isinstance(value, Node):
        value = value.value
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a string"


def default_stack_name(path: Path) -> str:
    """The name docker would give a stack from its file's directory: lowercased, with
    only letters, digits, '-' and '_' kept."""
    name = re.sub(r"[^a-z0-9_-]", "", path.resolve().parent.name.lower())
    return name.lstrip("_-")


# ---------------------------------------------------------------- YAML with locations

_VAR_RE = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<named>[_a-zA-Z][_a-zA-Z0-9]*)|\{(?P<braced>[^}]*)\}|(?P<invalid>))")
_BRACED_RE = re.compile(r"([_a-zA-Z][_a-zA-Z0-9]*)(?:(:?[-?+])(.*))?", re.DOTALL)
_PLAIN_TAGS = frozenset({"tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
                         "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null"})


class _Reader:
    """Turns YAML text into Nodes, interpolating ${VAR} in string values."""

    def __init__(self, filename: str, environ: Mapping[str, str],
                 warnings: list[StackWarning]) -> None:
        self.filename = filename
        self.environ = environ
        self.warnings = warnings
        self._unset_reported: set[str] = set()

    def at(self, mark: Any) -> Location:
        return Location(self.filename, mark.line + 1, mark.column + 1)

    def load(self, text: str) -> Node | None:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            return None if root is None else self._convert(loader, root, 0, frozenset())
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            where = self.at(mark) if mark is not None else Location(self.filename, 1, 1)
            problem = error.problem or error.context or "malformed"
            context = f" ({error.context})" if error.context and error.problem else ""
            raise StackError(where, "", f"invalid YAML: {problem}{context}") from None
        except yaml.YAMLError as error:
            raise StackError(Location(self.filename, 1, 1), "", f"invalid YAML: {error}") from None
        except RecursionError:
            raise StackError(Location(self.filename, 1, 1), "",
                             "invalid YAML: nested too deeply") from None
        finally:
            loader.dispose()

    def _convert(self, loader: yaml.SafeLoader, node: yaml.Node, depth: int,
                 active: frozenset[int]) -> Node:
        where = self.at(node.start_mark)
        if depth > _MAX_DEPTH:
            raise StackError(where, "", f"nested more than {_MAX_DEPTH} levels deep")
        if id(node) in active:
            # An alias of its own ancestor: an infinite document.
            raise StackError(where, "", "invalid YAML: a recursive alias")
        inner = active | {id(node)}
        if isinstance(node, yaml.MappingNode):
            written = {id(key_node) for key_node, _ in node.value}
            loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys
            items: dict[str, Node] = {}
            explicit: dict[str, int] = {}  # key -> its line, for keys written here
            for key_node, value_node in node.value:
                key_where = self.at(key_node.start_mark)
                if not isinstance(key_node, yaml.ScalarNode):
                    kind = "a list" if isinstance(key_node, yaml.SequenceNode) else "a mapping"
                    raise StackError(key_where, "", f"mapping keys must be strings, not {kind}")
                key = _describe(self._scalar(loader, key_node))
                # Keys merged in come first and are overridden by the mapping's own;
                # only a key written twice in the mapping itself is an error.
                if key in explicit and id(key_node) in written:
                    raise StackError(key_where, "", f"duplicate key {_quote(key)} (first at line "
                                     f"{explicit[key]})")
                if id(key_node) in written:
                    explicit[key] = key_where.line
                value = self._convert(loader, value_node, depth + 1, inner)
                # An empty value (`web:`) has no text of its own: point at its key.
                items[key] = Node(None, key_where) if value.value is None else value
            return Node(items, where)
        if isinstance(node, yaml.SequenceNode):
            return Node([self._convert(loader, item, depth + 1, inner) for item in node.value],
                        where)
        scalar = self._scalar(loader, node)
        if isinstance(scalar, str):
            scalar = self.interpolate(scalar, where)
        return Node(scalar, where)

    @staticmethod
    def _scalar(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        # Timestamps, binary and other tags stay the text that was written, as in compose.
        if node.tag in _PLAIN_TAGS:
            return loader.construct_object(node)
        return str(node.value)

    def interpolate(self, text: str, where: Location) -> str:
        """Compose's variable substitution: $VAR, ${VAR}, ${VAR:-default},
        ${VAR-default}, ${VAR:?error}, ${VAR?error}, ${VAR:+alt}, ${VAR+alt}, $$."""
        if "$" not in text:
            return text

        def substitute(match: re.Match[str]) -> str:
            if match.group("escaped"):
                return "$"
            name = match.group("named")
            operator, argument = "", ""
            if name is None:
                braced = match.group("braced")
                parsed = _BRACED_RE.fullmatch(braced) if braced is not None else None
                if parsed is None:
                    raise StackError(where, "", f"invalid interpolation format in {_quote(text)}: "
                                     "expected $VAR or ${VAR} (use $$ for a literal $)")
                name, operator, argument = parsed.group(1), parsed.group(2) or "", parsed.group(3)
            value = self.environ.get(name)
            if operator in (":-", "-"):
                unset = value is None or (operator == ":-" and value == "")
                return argument if unset else str(value)
            if operator in (":?", "?"):
                if value is None or (operator == ":?" and value == ""):
                    raise StackError(where, "", f"required variable {name} is missing a value"
                                     + (f": {argument}" if argument else ""))
                return value
            if operator in (":+", "+"):
                is_set = value is not None and (operator == "+" or value != "")
                return argument if is_set else ""
            if value is None:
                if name not in self._unset_reported:
                    self._unset_reported.add(name)
                    self.warnings.append(StackWarning(
                        where, "", f"the variable {name} is not set; using an empty string"))
                return ""
            return value

        return _VAR_RE.sub(substitute, text)


# ---------------------------------------------------------------- typed access


def _fail(node: Node, path: str, problem: str) -> NoReturn:
    raise StackError(node.location, path, problem)


def _mapping(node: Node, path: str) -> dict[str, Node]:
    if node.value is None:
        return {}
    if not isinstance(node.value, dict):
        _fail(node, path, f"expected a mapping, got {_kind(node.value)}")
    return node.value


def _list(node: Node, path: str) -> list[Node]:
    if node.value is None:
        return []
    if not isinstance(node.value, list):
        _fail(node, path, f"expected a list, got {_kind(node.value)}")
    return node.value


def _string(node: Node, path: str, *, allow_number: bool = True) -> str:
    value = node.value
    if isinstance(value, str):
        return value
    if allow_number and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    _fail(node, path, f"expected a string, got {_kind(value)}")


def _scalar_text(node: Node, path: str) -> str:
    """Environment and label values: strings, numbers and booleans, as compose writes
    them (true -> "true"); null is "" ."""
    value = node.value
    if isinstance(value, dict | list):
        _fail(node, path, f"expected a string, number or boolean, got {_kind(value)}")
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _integer(node: Node, path: str, *, maximum: int = _INT64_MAX, minimum: int = 0) -> int:
    value = node.value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,19}\s*", value):
        value = int(value)  # after interpolation: replicas: ${N}
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(node, path, f"expected a whole number, got {_kind(value)} {_quote(node.value)}")
    if value < minimum:
        _fail(node, path, f"must not be negative (got {value})" if minimum == 0
              else f"must be at least {minimum} (got {value})")
    if value > maximum:
        _fail(node, path, f"must be at most {maximum} (got {value})")
    return value


def _boolean(node: Node, path: str) -> bool:
    value = node.value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        _fail(node, path, f"expected true or false, got {_kind(value)} {_quote(value)}")
    return value


def _choice(node: Node, path: str, options: Mapping[str, E]) -> E:
    text = _string(node, path).strip().lower()
    if text not in options:
        _fail(node, path, f"invalid value {_quote(node.value)} (expected "
              f"{', '.join(options)})")
    return options[text]


def _duration(node: Node, path: str) -> int:
    text = _string(node, path, allow_number=False)
    try:
        nanos = units.parse_duration(text)
    except ValueError:
        _fail(node, path, f"invalid duration {_quote(text)} (expected e.g. 10s, 1m30s, 500ms)")
    if nanos > 315_576_000_000 * 1_000_000_000:
        _fail(node, path, f"duration {_quote(text)} is out of range")
    return nanos


def _size(node: Node, path: str) -> int:
    value = node.value
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else \
        _string(node, path, allow_number=False)
    try:
        size = units.parse_memory(text)
    except ValueError:
        _fail(node, path, f"invalid size {_quote(text)} (expected bytes or a number with a "
              "unit b, k, m, g, e.g. 512M)")
    if size > _INT64_MAX:
        _fail(node, path, f"size {_quote(text)} is too large")
    return size


def _cpus(node: Node, path: str) -> int:
    text = _scalar_text(node, path) if not isinstance(node.value, bool) else "x"
    try:
        nanos = units.parse_cpus(text)
    except ValueError:
        _fail(node, path, f"invalid CPU count {_quote(node.value)} (expected a number such "
              "as 0.5 or 2)")
    if nanos > _INT64_MAX:
        _fail(node, path, f"CPU count {_quote(text)} is too large")
    return nanos


def _external(node: Node, path: str) -> tuple[bool, str | None]:
    """A network's or volume's `external:`: a boolean, or the legacy form
    `external: {name: x}` (external, under that name)."""
    if isinstance(node.value, dict):
        legacy = _mapping(node, path)
        return True, _string(legacy["name"], f"{path}.name") if "name" in legacy else None
    return _boolean(node, path), None


def _strings(node: Node, path: str) -> list[str]:
    """A list of strings (numbers allowed, written as text)."""
    return [_string(item, f"{path}[{i}]") for i, item in enumerate(_list(node, path))]


def _command(node: Node, path: str) -> list[str]:
    """`command: echo hi` (split as a shell would) or `command: [echo, hi]`."""
    if isinstance(node.value, str):
        try:
            return shlex.split(node.value)
        except ValueError as error:
            _fail(node, path, f"invalid command {_quote(node.value)}: {error}")
    return _strings(node, path)


def _key_value_pairs(node: Node, path: str, *, environment: bool,
                     environ: Mapping[str, str]) -> dict[str, str | None]:
    """The list form (`- KEY=VALUE`) or the map form (`KEY: VALUE`) of environment and
    labels. In the environment, a KEY without a value takes it from the shell, as
    compose does, or is left out (None) when the shell has none."""
    pairs: dict[str, str | None] = {}
    if isinstance(node.value, list):
        for index, item in enumerate(node.value):
            text = _string(item, f"{path}[{index}]")
            key, sep, text_value = text.partition("=")
            if not _ENV_KEY_RE.fullmatch(key):
                _fail(item, f"{path}[{index}]", f"invalid entry {_quote(text)}: expected "
                      "KEY=VALUE with a non-empty KEY without spaces")
            pairs[key] = text_value if sep else (environ.get(key) if environment else "")
        return pairs
    for key, value in _mapping(node, path).items():
        if not _ENV_KEY_RE.fullmatch(key):
            _fail(value, f"{path}", f"invalid key {_quote(key)}: expected a non-empty KEY "
                  "without spaces or '='")
        if environment and value.value is None:
            pairs[key] = environ.get(key)
        else:
            pairs[key] = _scalar_text(value, f"{path}.{key}")
    return pairs


def _locations(node: Node, path: str, out: dict[str, Location]) -> None:
    """Every compose path under `node` -> where it is written."""
    out[path] = node.location
    if isinstance(node.value, dict):
        for key, value in node.value.items():
            _locations(value, f"{path}.{key}" if path else key, out)
    elif isinstance(node.value, list):
        for index, item in enumerate(node.value):
            _locations(item, f"{path}[{index}]", out)


# ---------------------------------------------------------------- the parser


@dataclass
class _Context:
    stack: str
    file: str
    base_dir: Path
    environ: Mapping[str, str]
    read_text: Callable[[Path], str]
    warnings: list[StackWarning]
    networks: dict[str, StackNetwork]
    volumes: dict[str, StackVolume]

    def warn(self, node: Node, path: str, message: str) -> None:
        self.warnings.append(StackWarning(node.location, path, message))


def parse_stack(text: str, *, filename: str = "stack.yaml", stack_name: str | None = None,
                default_name: str | None = None, base_dir: Path | None = None,
                environ: Mapping[str, str] | None = None,
                read_text: Callable[[Path], str] = Path.read_text) -> Stack:
    """Parse and validate a whole stack file; StackError on the first problem.

    The stack name is `stack_name`, or the file's top-level `name:`, or `default_name`
    (load_stack passes the file's directory's name, as docker does); `base_dir` is
    where relative env_file and bind paths start (the file's directory)."""
    warnings: list[StackWarning] = []
    env = os.environ if environ is None else environ
    reader = _Reader(filename, env, warnings)
    root = reader.load(text)
    top_location = Location(filename, 1, 1)
    if root is None:
        raise StackError(top_location, "", "the file is empty: expected a `services:` mapping")
    if not isinstance(root.value, dict):
        raise StackError(root.location, "", f"expected a mapping with `services:` at the top, "
                         f"got {_kind(root.value)}")
    top: dict[str, Node] = root.value
    for key, node in top.items():
        if key.startswith("x-") or key in _TOP_LEVEL_KEYS:
            continue
        if key in _UNSUPPORTED_TOP_LEVEL_KEYS:
            warnings.append(StackWarning(node.location, key, "not supported; ignored"))
            continue
        raise StackError(node.location, key, f"unknown top-level key (expected "
                         f"{', '.join(sorted(_TOP_LEVEL_KEYS))}, or x-* extensions)")

    name = stack_name
    if name is None and "name" in top:
        name = _string(top["name"], "name", allow_number=False)
    name = name or default_name
    if not name:
        raise StackError(top_location, "name", "no stack name: give one (--stack NAME), or "
                         "set `name:` at the top of the file")
    if not _STACK_NAME_RE.fullmatch(name):
        raise StackError(top["name"].location if stack_name is None and "name" in top else None,
                         "name", f"invalid stack name {_quote(name)}: expected lowercase "
                         "letters, digits, '-' or '_', starting with a letter or digit")

    context = _Context(stack=name, file=filename, base_dir=base_dir or Path.cwd(), environ=env,
                       read_text=read_text, warnings=warnings, networks={}, volumes={})
    declared_networks = _top_networks(context, top.get("networks"))
    context.volumes = _top_volumes(context, top.get("volumes"))

    services_node = top.get("services")
    if services_node is None or not _mapping(services_node, "services"):
        raise StackError(services_node.location if services_node else top_location, "services",
                         "required: at least one service")
    services: dict[str, StackService] = {}
    for key, node in _mapping(services_node, "services").items():
        services[key] = _service(context, key, node, declared_networks)

    warnings.sort(key=lambda warning: warning.location or top_location)
    stack = Stack(name=name, file=filename, services=services, networks=context.networks,
                  volumes=context.volumes, warnings=warnings)
    _validate_with_controller_rules(stack, {key: network for key, (_, network)
                                            in declared_networks.items()})
    return stack


def load_stack(path: Path, *, stack_name: str | None = None,
               environ: Mapping[str, str] | None = None) -> Stack:
    """Read and parse a stack file; a missing file is a StackError too."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise StackError(None, "", f"cannot read {path}: {reason}") from None
    return parse_stack(text, filename=str(path), stack_name=stack_name,
                       default_name=default_stack_name(path), base_dir=path.parent,
                       environ=environ)


# ---------------------------------------------------------------- top-level networks, volumes


def _top_networks(context: _Context, node: Node | None) -> dict[str, tuple[Node, StackNetwork]]:
    """The declared networks; a service's use of one adds it to context.networks."""
    declared: dict[str, tuple[Node, StackNetwork]] = {}
    if node is None:
        return declared
    for key, value in _mapping(node, "networks").items():
        path = f"networks.{key}"
        options = _mapping(value, path)
        external = False
        custom_name: str | None = None
        for option, option_node in options.items():
            where = f"{path}.{option}"
            if option == "external":
                external, legacy_name = _external(option_node, where)
                custom_name = legacy_name or custom_name
            elif option == "name":
                custom_name = _string(option_node, where)
            elif option in ("driver_opts", "enable_ipv6") or option.startswith("x-"):
                if not option.startswith("x-"):
                    context.warn(option_node, where, "not supported; ignored")
            elif option not in ("driver", "ipam", "attachable", "internal", "labels"):
                _fail(option_node, where, "unknown key (expected driver, ipam, attachable, "
                      "internal, labels, external or name)")
        if external:
            extra = sorted(set(options) - {"external", "name"})
            if extra:
                _fail(options[extra[0]], f"{path}.{extra[0]}",
                      "an external network takes no other settings than its name")
            declared[key] = (value, StackNetwork(key=key, name=custom_name or key, external=True,
                                                 spec=None, location=value.location))
            continue
        spec = pb.NetworkSpec(name=custom_name or context_name(context, key))
        if "driver" in options:
            spec.driver = _string(options["driver"], f"{path}.driver")
        if "attachable" in options:
            spec.attachable = _boolean(options["attachable"], f"{path}.attachable")
        if "internal" in options:
            spec.internal = _boolean(options["internal"], f"{path}.internal")
        if "labels" in options:
            for label, text in _key_value_pairs(options["labels"], f"{path}.labels",
                                                environment=False, environ={}).items():
                spec.labels[label] = text or ""
        spec.labels[NAMESPACE_LABEL] = context.stack
        if "ipam" in options:
            _ipam(context, spec, options["ipam"], f"{path}.ipam")
        network = StackNetwork(key=key, name=spec.name, external=False, spec=spec,
                               location=value.location)
        _locations(value, "", network.where)
        declared[key] = (value, network)
    return declared


def context_name(context: _Context, key: str) -> str:
    """STACK_KEY, as docker names a stack's services, networks and volumes."""
    return f"{context.stack}_{key}"


def _ipam(context: _Context, spec: pb.NetworkSpec, node: Node, path: str) -> None:
    for option, value in _mapping(node, path).items():
        if option == "driver":
            if _string(value, f"{path}.driver") != "default":
                context.warn(value, f"{path}.driver", "only the default IPAM driver is "
                             "supported; ignored")
        elif option == "options":
            context.warn(value, f"{path}.options", "not supported; ignored")
        elif option != "config":
            _fail(value, f"{path}.{option}", "unknown key (expected driver, config)")
    configs = _list(_mapping(node, path).get("config", Node([], node.location)), f"{path}.config")
    if len(configs) > 1:
        _fail(configs[1], f"{path}.config[1]", "only one subnet per network is supported")
    for config in configs:
        where = f"{path}.config[0]"
        for option, value in _mapping(config, where).items():
            if option == "subnet":
                spec.ipam.subnet = _string(value, f"{where}.subnet")
            elif option == "gateway":
                spec.ipam.gateway = _string(value, f"{where}.gateway")
            elif option in ("ip_range", "aux_addresses"):
                context.warn(value, f"{where}.{option}", "not supported; ignored")
            else:
                _fail(value, f"{where}.{option}", "unknown key (expected subnet, gateway)")


def _top_volumes(context: _Context, node: Node | None) -> dict[str, StackVolume]:
    volumes: dict[str, StackVolume] = {}
    if node is None:
        return volumes
    for key, value in _mapping(node, "volumes").items():
        path = f"volumes.{key}"
        external = False
        custom_name: str | None = None
        for option, option_node in _mapping(value, path).items():
            where = f"{path}.{option}"
            if option == "external":
                external, legacy_name = _external(option_node, where)
                custom_name = legacy_name or custom_name
            elif option == "name":
                custom_name = _string(option_node, where)
            elif option in ("driver", "driver_opts", "labels"):
                # Volumes are the agents' local directories; there is no volume object
                # to give a driver or labels to.
                context.warn(option_node, where, "not supported (volumes are local to each "
                             "node); ignored")
            elif not option.startswith("x-"):
                _fail(option_node, where, "unknown key (expected external, name)")
        # As docker names them: an external volume keeps its own name.
        default = key if external else context_name(context, key)
        volumes[key] = StackVolume(key=key, name=custom_name or default,
                                   external=external, location=value.location)
    return volumes


# ---------------------------------------------------------------- services


def _service(context: _Context, key: str, node: Node,
             declared_networks: Mapping[str, tuple[Node, StackNetwork]]) -> StackService:
    path = f"services.{key}"
    fields = _mapping(node, path)
    for name, value in fields.items():
        if name in _SERVICE_KEYS or name.startswith("x-"):
            continue
        if name in _UNSUPPORTED_SERVICE_KEYS:
            context.warn(value, f"{path}.{name}", "not supported by this orchestrator; ignored")
            continue
        _fail(value, f"{path}.{name}", "unknown key")
    spec = pb.ServiceSpec(name=context_name(context, key))
    spec.labels[NAMESPACE_LABEL] = context.stack
    container = spec.task.container
    container.labels[NAMESPACE_LABEL] = context.stack

    if "image" not in fields:
        _fail(node, path, "image: required (building images is not supported)")
    container.image = _string(fields["image"], f"{path}.image", allow_number=False).strip()
    if "command" in fields:
        container.args[:] = _command(fields["command"], f"{path}.command")
    if "entrypoint" in fields:
        container.command[:] = _command(fields["entrypoint"], f"{path}.entrypoint")
    container.env[:] = _environment(context, fields, path)
    for name, attribute in (("hostname", "hostname"), ("user", "user"),
                            ("working_dir", "dir"), ("stop_signal", "stop_signal")):
        if name in fields:
            setattr(container, attribute, _string(fields[name], f"{path}.{name}"))
    for name in ("read_only", "init"):
        if name in fields:
            setattr(container, name, _boolean(fields[name], f"{path}.{name}"))
    if "stop_grace_period" in fields:
        container.stop_grace_period.FromNanoseconds(
            _duration(fields["stop_grace_period"], f"{path}.stop_grace_period"))
    # Drain before stop has no compose key (docker has no such bound): an
    # extension field beside stop_grace_period, which docker ignores.
    if "x-drain-timeout" in fields:
        container.drain_timeout.FromNanoseconds(
            _duration(fields["x-drain-timeout"], f"{path}.x-drain-timeout"))
    if "labels" in fields:
        for label, text in _key_value_pairs(fields["labels"], f"{path}.labels",
                                            environment=False, environ={}).items():
            container.labels[label] = text or ""
    if "healthcheck" in fields:
        _healthcheck(context, container, fields["healthcheck"], f"{path}.healthcheck")
    if "volumes" in fields:
        for index, item in enumerate(_list(fields["volumes"], f"{path}.volumes")):
            container.mounts.append(_volume(context, item, f"{path}.volumes[{index}]"))
    if "tmpfs" in fields:
        tmpfs = fields["tmpfs"]
        items = [tmpfs] if isinstance(tmpfs.value, str) else _list(tmpfs, f"{path}.tmpfs")
        for index, item in enumerate(items):
            container.mounts.append(_tmpfs(item, f"{path}.tmpfs[{index}]"))
    if "ports" in fields:
        for index, item in enumerate(_list(fields["ports"], f"{path}.ports")):
            spec.endpoint.ports.extend(_ports(context, item, f"{path}.ports[{index}]"))
    _service_networks(context, key, spec, fields.get("networks"), f"{path}.networks",
                      declared_networks)
    if "deploy" in fields:
        _deploy(context, spec, fields["deploy"], f"{path}.deploy")
    if spec.WhichOneof("mode") is None:
        spec.replicated.replicas = 1

    service = StackService(key=key, spec=spec, location=node.location)
    _locations(node, "", service.where)
    return service


def _environment(context: _Context, fields: Mapping[str, Node], path: str) -> list[str]:
    """env_file entries first, then `environment` over them, as compose merges them;
    variables without a value anywhere are left out."""
    merged: dict[str, str | None] = {}
    if "env_file" in fields:
        node = fields["env_file"]
        single = isinstance(node.value, str)
        entries = [node] if single else _list(node, f"{path}.env_file")
        for index, entry in enumerate(entries):
            where = f"{path}.env_file" if single else f"{path}.env_file[{index}]"
            required = True
            if isinstance(entry.value, dict):  # long form: {path: x, required: false}
                options = _mapping(entry, where)
                if "path" not in options:
                    _fail(entry, where, "path: required")
                file_node = options["path"]
                if "required" in options:
                    required = _boolean(options["required"], f"{where}.required")
            else:
                file_node = entry
            relative = _string(file_node, where, allow_number=False)
            merged.update(_read_env_file(context, file_node, where, relative, required))
    if "environment" in fields:
        merged.update(_key_value_pairs(fields["environment"], f"{path}.environment",
                                       environment=True, environ=context.environ))
    return [f"{key}={value}" for key, value in merged.items() if value is not None]


def _read_env_file(context: _Context, node: Node, path: str, relative: str,
                   required: bool) -> dict[str, str]:
    file = context.base_dir / relative
    try:
        text = context.read_text(file)
    except FileNotFoundError:
        if not required:
            return {}
        _fail(node, path, f"cannot read {_quote(str(file))}: no such file")
    except (OSError, UnicodeDecodeError) as error:
        _fail(node, path, f"cannot read {_quote(str(file))}: {error}")
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not _ENV_KEY_RE.fullmatch(key):
            _fail(node, path, f"{relative}, line {number}: expected KEY=VALUE, got {_quote(raw)}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def _healthcheck(context: _Context, container: pb.ContainerSpec, node: Node, path: str) -> None:
    health = container.healthcheck
    health.SetInParent()
    options = _mapping(node, path)
    for name, value in options.items():
        where = f"{path}.{name}"
        if name == "test":
            if isinstance(value.value, str):
                health.test[:] = ["CMD-SHELL", value.value]
            else:
                test = _strings(value, where)
                if not test or test[0] not in ("CMD", "CMD-SHELL", "NONE"):
                    _fail(value, where, "expected a string, or a list starting with CMD, "
                          "CMD-SHELL or NONE")
                health.test[:] = test
        elif name == "disable":
            if _boolean(value, where):
                health.test[:] = ["NONE"]
        elif name in ("interval", "timeout", "start_period"):
            getattr(health, name).FromNanoseconds(_duration(value, where))
        elif name == "retries":
            health.retries = _integer(value, where, maximum=_UINT32_MAX)
        elif name == "start_interval":
            context.warn(value, where, "not supported; ignored")
        else:
            _fail(value, where, "unknown key (expected test, interval, timeout, retries, "
                  "start_period or disable)")


def _volume(context: _Context, node: Node, path: str) -> pb.Mount:
    """`name:/path[:ro]`, `/host:/path`, `./rel:/path`, `/path` or the long syntax."""
    if isinstance(node.value, dict):
        return _volume_long(context, node, path)
    text = _string(node, path, allow_number=False)
    parts = text.split(":")
    if len(parts) > 3 or not all(parts) or not text:
        _fail(node, path, f"invalid volume {_quote(text)} (expected [SOURCE:]TARGET[:ro|rw])")
    mount = pb.Mount()
    if len(parts) == 3:
        mode = parts[2]
        if mode not in ("ro", "rw"):
            _fail(node, path, f"invalid volume {_quote(text)}: unknown mode {_quote(mode)} "
                  "(expected ro or rw)")
        mount.read_only = mode == "ro"
        parts = parts[:2]
    elif len(parts) == 2 and parts[1] in ("ro", "rw"):
        _fail(node, path, f"invalid volume {_quote(text)}: no target path")
    if len(parts) == 1:
        mount.type = pb.Mount.VOLUME  # anonymous: made and removed with each task
        mount.target = parts[0]
        return mount
    source, mount.target = parts
    _mount_source(context, mount, node, path, source)
    return mount


def _mount_source(context: _Context, mount: pb.Mount, node: Node, path: str,
                  source: str) -> None:
    if source.startswith(("/", ".", "~")):
        mount.type = pb.Mount.BIND
        mount.source = _bind_path(context, source)
        return
    mount.type = pb.Mount.VOLUME
    volume = context.volumes.get(source)
    if volume is None:
        _fail(node, path, f"undefined volume {_quote(source)}: declare it under the top-level "
              "`volumes:`")
    mount.source = volume.name


def _bind_path(context: _Context, source: str) -> str:
    """A bind source relative to the stack file's directory, as compose resolves it."""
    if source.startswith("~"):
        source = os.path.expanduser(source)
    if not source.startswith("/"):
        source = str(context.base_dir.absolute() / source)
    return posixpath.normpath(source)


def _volume_long(context: _Context, node: Node, path: str) -> pb.Mount:
    options = _mapping(node, path)
    mount = pb.Mount()
    kind = "volume"
    if "type" in options:
        kind = _string(options["type"], f"{path}.type")
        if kind not in _MOUNT_TYPES:
            _fail(options["type"], f"{path}.type", f"invalid value {_quote(kind)} (expected "
                  "volume, bind or tmpfs)")
    mount.type = _MOUNT_TYPES[kind]
    for name, value in options.items():
        where = f"{path}.{name}"
        if name == "type":
            continue
        if name == "target":
            mount.target = _string(value, where)
        elif name == "source":
            source = _string(value, where)
            if kind == "bind":
                mount.source = _bind_path(context, source)
            elif kind == "volume":
                if source.startswith(("/", ".", "~")):
                    _fail(value, where, f"a volume source is a volume name, not a path "
                          f"({_quote(source)}); use type: bind for a host path")
                _mount_source(context, mount, value, where, source)
            else:
                _fail(value, where, "a tmpfs mount takes no source")
        elif name == "read_only":
            mount.read_only = _boolean(value, where)
        elif name == "tmpfs":
            for option, option_value in _mapping(value, where).items():
                if option == "size":
                    mount.tmpfs_size_bytes = _size(option_value, f"{where}.size")
                else:
                    context.warn(option_value, f"{where}.{option}", "not supported; ignored")
        elif name in ("volume", "bind", "consistency"):
            context.warn(value, where, "not supported; ignored")
        else:
            _fail(value, where, "unknown key (expected type, source, target, read_only, tmpfs)")
    if not mount.target:
        _fail(node, f"{path}.target", "required")
    if kind == "bind" and not mount.source:
        _fail(node, f"{path}.source", "required for a bind mount")
    if "tmpfs" in options and kind != "tmpfs":
        _fail(options["tmpfs"], f"{path}.tmpfs", "applies to type: tmpfs only")
    return mount


def _tmpfs(node: Node, path: str) -> pb.Mount:
    """`/run` or `/run:size=64m` (other mount options are not supported)."""
    text = _string(node, path, allow_number=False)
    target, _, options = text.partition(":")
    mount = pb.Mount(type=pb.Mount.TMPFS, target=target)
    for option in filter(None, options.split(",")):
        name, sep, value = option.partition("=")
        if name != "size" or not sep:
            _fail(node, path, f"unsupported tmpfs option {_quote(option)} (only size=SIZE)")
        mount.tmpfs_size_bytes = _size(Node(value, node.location), path)
    return mount


def _port_range(text: str) -> tuple[int, int] | None:
    match = re.fullmatch(r"(\d{1,5})(?:-(\d{1,5}))?", text)
    if match is None:
        return None
    first = int(match.group(1))
    last = int(match.group(2) or first)
    if not 1 <= first <= last <= _MAX_PORT:
        return None
    return first, last


def _ports(context: _Context, node: Node, path: str) -> list[pb.PortConfig]:
    """`80`, `8080:80`, `8080:80/udp`, `8000-8001:80-81` or the long syntax."""
    if isinstance(node.value, dict):
        return [_port_long(context, node, path)]
    text = _string(node, path)
    body, slash, protocol_text = text.strip().partition("/")
    # [HOST_IP:][PUBLISHED:]TARGET, the IP possibly IPv6 in brackets: split from the right.
    parts = body.rsplit(":", 2)
    target_text = parts[-1]
    published_text = parts[-2] if len(parts) >= 2 else ""
    ip = parts[0] if len(parts) == 3 else ""
    if len(parts) >= 2 and not published_text and not ip:
        _fail(node, path, f"invalid port {_quote(text)} (expected [PUBLISHED:]TARGET[/PROTOCOL], "
              "e.g. 8080:80)")
    if ip:
        context.warn(node, path, f"binding to a host IP ({ip}) is not supported; published on "
                     "every address")
    protocol = pb.PortConfig.TCP
    if slash:
        if protocol_text.lower() not in _PROTOCOLS:
            _fail(node, path, f"invalid port {_quote(text)}: unknown protocol "
                  f"{_quote(protocol_text)} (expected tcp, udp or sctp)")
        protocol = _PROTOCOLS[protocol_text.lower()]
    targets = _port_range(target_text)
    if targets is None:
        _fail(node, path, f"invalid port {_quote(text)} (expected a port from 1 to {_MAX_PORT}, "
              "e.g. 8080:80)")
    published: tuple[int, int] | None = None
    if published_text:
        published = _port_range(published_text)
        if published is None:
            _fail(node, path, f"invalid port {_quote(text)}: invalid published port "
                  f"{_quote(published_text)} (expected 1 to {_MAX_PORT})")
        if published[1] - published[0] != targets[1] - targets[0]:
            _fail(node, path, f"invalid port {_quote(text)}: the published and target ranges "
                  "differ in length")
    ports = []
    for offset in range(targets[1] - targets[0] + 1):
        port = pb.PortConfig(target_port=targets[0] + offset, protocol=protocol)
        if published is not None:
            port.published_port = published[0] + offset
        ports.append(port)
    return ports


def _port_long(context: _Context, node: Node, path: str) -> pb.PortConfig:
    port = pb.PortConfig()
    for name, value in _mapping(node, path).items():
        where = f"{path}.{name}"
        if name in ("target", "published"):
            text = _string(value, where)
            if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= _MAX_PORT:
                _fail(value, where, f"invalid port {_quote(text)} (expected 1 to {_MAX_PORT})")
            setattr(port, f"{name}_port", int(text))
        elif name == "protocol":
            port.protocol = _choice(value, where, _PROTOCOLS)
        elif name == "mode":
            port.publish_mode = _choice(value, where, _PUBLISH_MODES)
        elif name == "name":
            port.name = _string(value, where)
        elif name in ("host_ip", "app_protocol"):
            context.warn(value, where, "not supported; ignored")
        else:
            _fail(value, where, "unknown key (expected target, published, protocol, mode, name)")
    if not port.target_port:
        _fail(node, f"{path}.target", "required")
    return port


def _service_networks(context: _Context, service_key: str, spec: pb.ServiceSpec,
                      node: Node | None, path: str,
                      declared: Mapping[str, tuple[Node, StackNetwork]]) -> None:
    """Attach the networks named in the service (the stack's default network when it
    names none), each with the service's own name as an alias, as docker does."""
    wanted: list[tuple[str, Node, list[str]]] = []
    if node is None:
        wanted.append((DEFAULT_NETWORK, Node(None, Location(context.file, 1, 1)), []))
    elif isinstance(node.value, list):
        for index, item in enumerate(node.value):
            wanted.append((_string(item, f"{path}[{index}]"), item, []))
    else:
        for key, value in _mapping(node, path).items():
            aliases: list[str] = []
            for option, option_value in _mapping(value, f"{path}.{key}").items():
                where = f"{path}.{key}.{option}"
                if option == "aliases":
                    aliases = _strings(option_value, where)
                elif option in ("ipv4_address", "ipv6_address", "link_local_ips", "priority",
                                "mac_address", "driver_opts"):
                    context.warn(option_value, where, "not supported; ignored")
                else:
                    _fail(option_value, where, "unknown key (expected aliases)")
            wanted.append((key, value, aliases))
    for key, where_node, aliases in wanted:
        found = declared.get(key)
        if found is None and key != DEFAULT_NETWORK:
            _fail(where_node, path, f"undefined network {_quote(key)}: declare it under the "
                  "top-level `networks:`")
        network = found[1] if found is not None else StackNetwork(
            key=DEFAULT_NETWORK, name=context_name(context, DEFAULT_NETWORK), external=False,
            spec=pb.NetworkSpec(name=context_name(context, DEFAULT_NETWORK),
                                labels={NAMESPACE_LABEL: context.stack}),
            location=where_node.location)
        context.networks.setdefault(key, network)
        if any(attachment.target == network.name for attachment in spec.task.networks):
            _fail(where_node, path, f"network {_quote(key)} is listed twice")
        spec.task.networks.add(target=network.name, aliases=[service_key, *aliases])


def _deploy(context: _Context, spec: pb.ServiceSpec, node: Node, path: str) -> None:
    options = _mapping(node, path)
    mode = "replicated"
    if "mode" in options:
        mode = _string(options["mode"], f"{path}.mode")
        if mode not in ("replicated", "global"):
            _fail(options["mode"], f"{path}.mode", f"invalid value {_quote(mode)} (expected "
                  "replicated or global)")
    if mode == "global":
        if "replicas" in options:
            _fail(options["replicas"], f"{path}.replicas", "cannot be used with mode: global")
        getattr(spec, "global").SetInParent()
    else:
        replicas = options.get("replicas")
        spec.replicated.replicas = (1 if replicas is None
                                    else _integer(replicas, f"{path}.replicas"))
    for name, value in options.items():
        where = f"{path}.{name}"
        if name in ("mode", "replicas"):
            continue
        if name == "labels":
            for label, text in _key_value_pairs(value, where, environment=False,
                                                environ={}).items():
                spec.labels[label] = text or ""
        elif name == "placement":
            _placement(context, spec.task.placement, value, where)
        elif name == "resources":
            _resources(context, spec.task.resources, value, where)
        elif name == "restart_policy":
            _restart_policy(spec.task.restart, value, where)
        elif name in ("update_config", "rollback_config"):
            config = spec.update if name == "update_config" else spec.rollback
            _update_config(config, value, where, rollback=name == "rollback_config")
        elif name == "endpoint_mode":
            spec.endpoint.mode = _choice(value, where, _ENDPOINT_MODES)
        else:
            _fail(value, where, "unknown key (expected mode, replicas, labels, placement, "
                  "resources, restart_policy, update_config, rollback_config or endpoint_mode)")


def _placement(context: _Context, placement: pb.Placement, node: Node, path: str) -> None:
    for name, value in _mapping(node, path).items():
        where = f"{path}.{name}"
        if name == "constraints":
            for index, item in enumerate(_list(value, where)):
                text = _string(item, f"{where}[{index}]")
                # Spaces around the operator, as often written (`node.role == manager`).
                placement.constraints.append(re.sub(r"\s*(==|!=)\s*", r"\1", text.strip()))
        elif name == "preferences":
            for index, item in enumerate(_list(value, where)):
                options = _mapping(item, f"{where}[{index}]")
                if set(options) != {"spread"}:
                    _fail(item, f"{where}[{index}]", "expected `spread: node.labels.KEY`")
                placement.preferences.add(
                    spread=_string(options["spread"], f"{where}[{index}].spread"))
        elif name == "max_replicas_per_node":
            placement.max_replicas_per_node = _integer(value, where)
        else:
            _fail(value, where, "unknown key (expected constraints, preferences or "
                  "max_replicas_per_node)")


def _resources(context: _Context, resources: pb.ResourceRequirements, node: Node,
               path: str) -> None:
    for name, value in _mapping(node, path).items():
        where = f"{path}.{name}"
        if name not in ("limits", "reservations"):
            _fail(value, where, "unknown key (expected limits or reservations)")
        target: pb.Resources = getattr(resources, name)
        for option, option_value in _mapping(value, where).items():
            option_path = f"{where}.{option}"
            if option == "cpus":
                target.nano_cpus = _cpus(option_value, option_path)
            elif option == "memory":
                target.memory_bytes = _size(option_value, option_path)
            elif f"resources.{name}.{option}" in _UNSUPPORTED_DEPLOY_KEYS:
                context.warn(option_value, option_path, "not supported; ignored")
            else:
                _fail(option_value, option_path, "unknown key (expected cpus or memory)")


def _restart_policy(restart: pb.RestartPolicy, node: Node, path: str) -> None:
    restart.SetInParent()
    restart.delay.FromNanoseconds(5_000_000_000)  # docker's default, as the controller's
    for name, value in _mapping(node, path).items():
        where = f"{path}.{name}"
        if name == "condition":
            restart.condition = _choice(value, where, _RESTART_CONDITIONS)
        elif name == "delay":
            restart.delay.FromNanoseconds(_duration(value, where))
        elif name == "max_attempts":
            restart.max_attempts = _integer(value, where)
        elif name == "window":
            restart.window.FromNanoseconds(_duration(value, where))
        else:
            _fail(value, where, "unknown key (expected condition, delay, max_attempts or window)")


def _update_config(config: pb.UpdateConfig, node: Node, path: str, *, rollback: bool) -> None:
    # Unset fields take the controller's defaults, as docker's do.
    config.parallelism = 1
    config.monitor.FromNanoseconds(5_000_000_000)
    config.delay.FromNanoseconds(0)
    for name, value in _mapping(node, path).items():
        where = f"{path}.{name}"
        if name == "parallelism":
            config.parallelism = _integer(value, where)
        elif name in ("delay", "monitor"):
            getattr(config, name).FromNanoseconds(_duration(value, where))
        elif name == "failure_action":
            actions = dict(_FAILURE_ACTIONS)
            if rollback:
                del actions["rollback"]
            config.failure_action = _choice(value, where, actions)
        elif name == "max_failure_ratio":
            try:
                ratio = float(_scalar_text(value, where)) if not isinstance(
                    value.value, bool) else -1.0
            except ValueError:
                ratio = -1.0
            if not 0.0 <= ratio <= 1.0:
                _fail(value, where, f"expected a number between 0 and 1, got {_quote(value.value)}")
            config.max_failure_ratio = ratio
        elif name == "order":
            config.order = _choice(value, where, _ORDERS)
        else:
            _fail(value, where, "unknown key (expected parallelism, delay, failure_action, "
                  "monitor, max_failure_ratio or order)")


# ---------------------------------------------------------------- whole-file validation


def _compose_path(field_path: str, table: tuple[tuple[str, str], ...]) -> str:
    for prefix, compose in table:
        if field_path == prefix or field_path.startswith((prefix + ".", prefix + "[")):
            return compose
    return ""


def _validate_with_controller_rules(stack: Stack, declared: Mapping[str, StackNetwork]) -> None:
    """Run the controller's own validation over every spec, so that the server cannot
    refuse what the client accepted; errors point at the compose key."""
    placeholders: dict[str, pb.Network] = {}
    for key, network in sorted({**declared, **stack.networks}.items()):
        # Declared but unused networks too: docker does not create them, but a
        # mistake in one is still a mistake in the file.
        if network.spec is not None:
            try:
                network.spec = normalize_network_spec(network.spec)
            except ValidationError as error:
                compose = _compose_path(error.field, _NETWORK_PROTO_TO_COMPOSE)
                raise StackError(_locate(network.where, compose, network.location),
                                 f"networks.{key}" + (f".{compose}" if compose else ""),
                                 error.problem) from None
        if key not in stack.networks:
            continue
        # Any ID will do: the check only needs names to resolve.
        placeholders[f"planned-{key}"] = pb.Network(
            id=f"planned-{key}", spec=network.spec or pb.NetworkSpec(name=network.name))
    for key, service in stack.services.items():
        try:
            normalize_service_spec(service.spec, placeholders)
        except ValidationError as error:
            raise service_error(key, service, error) from None


def service_error(key: str, service: StackService, error: ValidationError) -> StackError:
    """The controller's validation error about a stack service, at the compose key
    (and line) it comes from."""
    compose = _compose_path(error.field, _PROTO_TO_COMPOSE)
    return StackError(service.locate(compose),
                      f"services.{key}" + (f".{compose}" if compose else ""), error.problem)


def iter_messages(stack: Stack) -> Iterator[str]:
    """The stack's warnings as the lines `apply` prints."""
    for warning in sorted(stack.warnings, key=lambda w: (w.location or Location("", 0, 0))):
        yield f"warning: {warning}"
