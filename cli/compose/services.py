"""One compose service -> a ServiceSpec (image, command, environment, mounts,
ports, networks, healthcheck, deploy:)."""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping

from swarm.api import logopts, security
from swarm.api.schedule import BadSchedule, parse_schedule
from swarm.api.v1 import objects_pb2 as pb
from swarm.api.validation import HOST_NETWORK

from ..choices import (
    ENDPOINT_MODES,
    FAILURE_ACTIONS,
    MOUNT_TYPES,
    ORDERS,
    PROTOCOLS,
    PUBLISH_MODES,
    RESTART_CONDITIONS,
)
from ..payload_refs import append_references
from .context import Context
from .model import Location, Node, StackNetwork, StackService, quote
from .payloads import service_references
from .resources import reservations as generic_reservations
from .runopts import convert_runtime_options, set_pids_limit
from .schema import (
    DEFAULT_NETWORK,
    ENV_KEY_RE,
    MAX_PORT,
    NAMESPACE_LABEL,
    SERVICE_KEYS,
    UINT32_MAX,
    UNSUPPORTED_DEPLOY_KEYS,
    UNSUPPORTED_SERVICE_KEYS,
    as_boolean,
    as_choice,
    as_command,
    as_cpus,
    as_duration,
    as_integer,
    as_key_value_pairs,
    as_list,
    as_mapping,
    as_scalar_text,
    as_size,
    as_string,
    as_strings,
    fail,
    record_locations,
)
from .top_level import context_name


def convert_service(context: Context, key: str, node: Node,
             declared_networks: Mapping[str, tuple[Node, StackNetwork]]) -> StackService:
    path = f"services.{key}"
    fields = as_mapping(node, path)
    for name, value in fields.items():
        if name in SERVICE_KEYS or name.startswith("x-"):
            continue
        if name in UNSUPPORTED_SERVICE_KEYS:
            context.warn(value, f"{path}.{name}", "not supported by this orchestrator; ignored")
            continue
        fail(value, f"{path}.{name}", "unknown key")
    spec = pb.ServiceSpec(name=context_name(context, key))
    spec.labels[NAMESPACE_LABEL] = context.stack
    container = spec.task.container
    container.labels[NAMESPACE_LABEL] = context.stack

    if "image" not in fields:
        fail(node, path, "image: required (building images is not supported)")
    container.image = as_string(fields["image"], f"{path}.image", allow_number=False).strip()
    if "command" in fields:
        container.args[:] = as_command(fields["command"], f"{path}.command")
    if "entrypoint" in fields:
        container.command[:] = as_command(fields["entrypoint"], f"{path}.entrypoint")
    container.env[:] = _environment(context, fields, path)
    for name, attribute in (("hostname", "hostname"), ("user", "user"),
                            ("working_dir", "dir"), ("stop_signal", "stop_signal")):
        if name in fields:
            setattr(container, attribute, as_string(fields[name], f"{path}.{name}"))
    for name in ("read_only", "init"):
        if name in fields:
            setattr(container, name, as_boolean(fields[name], f"{path}.{name}"))
    if "stop_grace_period" in fields:
        container.stop_grace_period.FromNanoseconds(
            as_duration(fields["stop_grace_period"], f"{path}.stop_grace_period"))
    # Drain before stop has no compose key (docker has no such bound): an
    # extension field beside stop_grace_period, which docker ignores.
    if "x-drain-timeout" in fields:
        container.drain_timeout.FromNanoseconds(
            as_duration(fields["x-drain-timeout"], f"{path}.x-drain-timeout"))
    if "labels" in fields:
        for label, text in as_key_value_pairs(fields["labels"], f"{path}.labels",
                                            environment=False, environ={}).items():
            container.labels[label] = text or ""
    if "healthcheck" in fields:
        _healthcheck(context, container, fields["healthcheck"], f"{path}.healthcheck")
    convert_runtime_options(container, fields, path)
    if "security_opt" in fields:
        _security_opt(context, container, fields["security_opt"], f"{path}.security_opt")
    if "logging" in fields:
        _logging(context, spec.task.log_driver, fields["logging"], f"{path}.logging")
    if "volumes" in fields:
        for index, item in enumerate(as_list(fields["volumes"], f"{path}.volumes")):
            container.mounts.append(_volume(context, item, f"{path}.volumes[{index}]"))
    if "tmpfs" in fields:
        tmpfs = fields["tmpfs"]
        items = [tmpfs] if isinstance(tmpfs.value, str) else as_list(tmpfs, f"{path}.tmpfs")
        for index, item in enumerate(items):
            container.mounts.append(_tmpfs(item, f"{path}.tmpfs[{index}]"))
    if "ports" in fields:
        for index, item in enumerate(as_list(fields["ports"], f"{path}.ports")):
            spec.endpoint.ports.extend(_ports(context, item, f"{path}.ports[{index}]"))
    for kind in ("secret", "config"):
        if f"{kind}s" in fields:
            append_references(container, kind, service_references(
                context, kind, fields[f"{kind}s"], f"{path}.{kind}s"))
    if _network_mode(fields, path):
        spec.task.host_network = True  # no default network: the node's namespace
    else:
        _service_networks(context, key, spec, fields.get("networks"), f"{path}.networks",
                          declared_networks)
    if "deploy" in fields:
        _deploy(context, spec, fields["deploy"], f"{path}.deploy")
    if spec.WhichOneof("mode") is None:
        spec.replicated.replicas = 1

    service = StackService(key=key, spec=spec, location=node.location)
    record_locations(node, "", service.where)
    return service


def _environment(context: Context, fields: Mapping[str, Node], path: str) -> list[str]:
    """env_file entries first, then `environment` over them, as compose merges them;
    variables without a value anywhere are left out."""
    merged: dict[str, str | None] = {}
    if "env_file" in fields:
        node = fields["env_file"]
        single = isinstance(node.value, str)
        entries = [node] if single else as_list(node, f"{path}.env_file")
        for index, entry in enumerate(entries):
            where = f"{path}.env_file" if single else f"{path}.env_file[{index}]"
            required = True
            if isinstance(entry.value, dict):  # long form: {path: x, required: false}
                options = as_mapping(entry, where)
                if "path" not in options:
                    fail(entry, where, "path: required")
                file_node = options["path"]
                if "required" in options:
                    required = as_boolean(options["required"], f"{where}.required")
            else:
                file_node = entry
            relative = as_string(file_node, where, allow_number=False)
            merged.update(_read_env_file(context, file_node, where, relative, required))
    if "environment" in fields:
        merged.update(as_key_value_pairs(fields["environment"], f"{path}.environment",
                                       environment=True, environ=context.environ))
    return [f"{key}={value}" for key, value in merged.items() if value is not None]


def _read_env_file(context: Context, node: Node, path: str, relative: str,
                   required: bool) -> dict[str, str]:
    file = context.base_dir / relative
    try:
        text = context.read_text(file)
    except FileNotFoundError:
        if not required:
            return {}
        fail(node, path, f"cannot read {quote(str(file))}: no such file")
    except (OSError, UnicodeDecodeError) as error:
        fail(node, path, f"cannot read {quote(str(file))}: {error}")
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not ENV_KEY_RE.fullmatch(key):
            fail(node, path, f"{relative}, line {number}: expected KEY=VALUE, got {quote(raw)}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def _security_opt(context: Context, container: pb.ContainerSpec, node: Node, path: str) -> None:
    """As --security-opt; a seccomp profile's path is relative to the file."""
    for index, item in enumerate(as_list(node, path)):
        where = f"{path}[{index}]"
        text = as_string(item, where)
        try:
            security.apply_security_opt(
                container.privileges, text,
                lambda name: context.read_text(context.base_dir / name).encode())
        except (ValueError, OSError) as error:
            fail(item, where, str(error))


def _logging(context: Context, driver: pb.Driver, node: Node, path: str) -> None:
    """`logging: {driver: json-file, options: {max-size: 10m, max-file: 3}}`: the
    file drivers are the node's rotated files; any other is warned about."""
    fields = as_mapping(node, path)
    for name, value in fields.items():
        where = f"{path}.{name}"
        if name == "driver":
            text = as_string(value, where)
            if text not in logopts.FILE_DRIVERS:
                context.warn(value, where, f"log driver {quote(text)} not supported; the "
                             "nodes keep each task's output in rotated files")
                return
        elif name == "options":
            for option, option_value in as_mapping(value, where).items():
                try:
                    driver.options[option] = logopts.check_option(
                        option, as_scalar_text(option_value, f"{where}.{option}"))
                except ValueError as error:
                    fail(option_value, f"{where}.{option}", str(error))
        else:
            fail(value, where, "unknown key (expected driver or options)")


def _healthcheck(context: Context, container: pb.ContainerSpec, node: Node, path: str) -> None:
    health = container.healthcheck
    health.SetInParent()
    options = as_mapping(node, path)
    for name, value in options.items():
        where = f"{path}.{name}"
        if name == "test":
            if isinstance(value.value, str):
                health.test[:] = ["CMD-SHELL", value.value]
            else:
                test = as_strings(value, where)
                if not test or test[0] not in ("CMD", "CMD-SHELL", "NONE"):
                    fail(value, where, "expected a string, or a list starting with CMD, "
                          "CMD-SHELL or NONE")
                health.test[:] = test
        elif name == "disable":
            if as_boolean(value, where):
                health.test[:] = ["NONE"]
        elif name in ("interval", "timeout", "start_period", "start_interval"):
            getattr(health, name).FromNanoseconds(as_duration(value, where))
        elif name == "retries":
            health.retries = as_integer(value, where, maximum=UINT32_MAX)
        else:
            fail(value, where, "unknown key (expected test, interval, timeout, retries, "
                  "start_period, start_interval or disable)")


def _volume(context: Context, node: Node, path: str) -> pb.Mount:
    """`name:/path[:ro]`, `/host:/path`, `./rel:/path`, `/path` or the long syntax."""
    if isinstance(node.value, dict):
        return _volume_long(context, node, path)
    text = as_string(node, path, allow_number=False)
    parts = text.split(":")
    if len(parts) > 3 or not all(parts) or not text:
        fail(node, path, f"invalid volume {quote(text)} (expected [SOURCE:]TARGET[:ro|rw])")
    mount = pb.Mount()
    if len(parts) == 3:
        mode = parts[2]
        if mode not in ("ro", "rw"):
            fail(node, path, f"invalid volume {quote(text)}: unknown mode {quote(mode)} "
                  "(expected ro or rw)")
        mount.read_only = mode == "ro"
        parts = parts[:2]
    elif len(parts) == 2 and parts[1] in ("ro", "rw"):
        fail(node, path, f"invalid volume {quote(text)}: no target path")
    if len(parts) == 1:
        mount.type = pb.Mount.VOLUME  # anonymous: made and removed with each task
        mount.target = parts[0]
        return mount
    source, mount.target = parts
    _mount_source(context, mount, node, path, source)
    return mount


def _mount_source(context: Context, mount: pb.Mount, node: Node, path: str,
                  source: str) -> None:
    if source.startswith(("/", ".", "~")):
        mount.type = pb.Mount.BIND
        mount.source = _bind_path(context, source)
        return
    mount.type = pb.Mount.VOLUME
    volume = context.volumes.get(source)
    if volume is None:
        fail(node, path, f"undefined volume {quote(source)}: declare it under the top-level "
              "`volumes:`")
    mount.source = volume.name


def _bind_path(context: Context, source: str) -> str:
    """A bind source relative to the stack file's directory, as compose resolves it."""
    if source.startswith("~"):
        source = os.path.expanduser(source)
    if not source.startswith("/"):
        source = str(context.base_dir.absolute() / source)
    return posixpath.normpath(source)


def _volume_long(context: Context, node: Node, path: str) -> pb.Mount:
    options = as_mapping(node, path)
    mount = pb.Mount()
    kind = "volume"
    if "type" in options:
        kind = as_string(options["type"], f"{path}.type")
        if kind not in MOUNT_TYPES:
            fail(options["type"], f"{path}.type", f"invalid value {quote(kind)} (expected "
                  "volume, bind or tmpfs)")
    mount.type = MOUNT_TYPES[kind]
    for name, value in options.items():
        where = f"{path}.{name}"
        if name == "type":
            continue
        if name == "target":
            mount.target = as_string(value, where)
        elif name == "source":
            source = as_string(value, where)
            if kind == "bind":
                mount.source = _bind_path(context, source)
            elif kind == "volume":
                if source.startswith(("/", ".", "~")):
                    fail(value, where, f"a volume source is a volume name, not a path "
                          f"({quote(source)}); use type: bind for a host path")
                _mount_source(context, mount, value, where, source)
            else:
                fail(value, where, "a tmpfs mount takes no source")
        elif name == "read_only":
            mount.read_only = as_boolean(value, where)
        elif name == "tmpfs":
            for option, option_value in as_mapping(value, where).items():
                if option == "size":
                    mount.tmpfs_size_bytes = as_size(option_value, f"{where}.size")
                else:
                    context.warn(option_value, f"{where}.{option}", "not supported; ignored")
        elif name in ("volume", "bind", "consistency"):
            context.warn(value, where, "not supported; ignored")
        else:
            fail(value, where, "unknown key (expected type, source, target, read_only, tmpfs)")
    if not mount.target:
        fail(node, f"{path}.target", "required")
    if kind == "bind" and not mount.source:
        fail(node, f"{path}.source", "required for a bind mount")
    if "tmpfs" in options and kind != "tmpfs":
        fail(options["tmpfs"], f"{path}.tmpfs", "applies to type: tmpfs only")
    return mount


def _tmpfs(node: Node, path: str) -> pb.Mount:
    """`/run` or `/run:size=64m` (other mount options are not supported)."""
    text = as_string(node, path, allow_number=False)
    target, _, options = text.partition(":")
    mount = pb.Mount(type=pb.Mount.TMPFS, target=target)
    for option in filter(None, options.split(",")):
        name, sep, value = option.partition("=")
        if name != "size" or not sep:
            fail(node, path, f"unsupported tmpfs option {quote(option)} (only size=SIZE)")
        mount.tmpfs_size_bytes = as_size(Node(value, node.location), path)
    return mount


def _port_range(text: str) -> tuple[int, int] | None:
    match = re.fullmatch(r"(\d{1,5})(?:-(\d{1,5}))?", text)
    if match is None:
        return None
    first = int(match.group(1))
    last = int(match.group(2) or first)
    if not 1 <= first <= last <= MAX_PORT:
        return None
    return first, last


def _ports(context: Context, node: Node, path: str) -> list[pb.PortConfig]:
    """`80`, `8080:80`, `8080:80/udp`, `8000-8001:80-81` or the long syntax."""
    if isinstance(node.value, dict):
        return [_port_long(context, node, path)]
    text = as_string(node, path)
    body, slash, protocol_text = text.strip().partition("/")
    # [HOST_IP:][PUBLISHED:]TARGET, the IP possibly IPv6 in brackets: split from the right.
    parts = body.rsplit(":", 2)
    target_text = parts[-1]
    published_text = parts[-2] if len(parts) >= 2 else ""
    ip = parts[0] if len(parts) == 3 else ""
    if len(parts) >= 2 and not published_text and not ip:
        fail(node, path, f"invalid port {quote(text)} (expected [PUBLISHED:]TARGET[/PROTOCOL], "
              "e.g. 8080:80)")
    if ip:
        context.warn(node, path, f"binding to a host IP ({ip}) is not supported; published on "
                     "every address")
    protocol = pb.PortConfig.TCP
    if slash:
        if protocol_text.lower() not in PROTOCOLS:
            fail(node, path, f"invalid port {quote(text)}: unknown protocol "
                  f"{quote(protocol_text)} (expected tcp, udp or sctp)")
        protocol = PROTOCOLS[protocol_text.lower()]
    targets = _port_range(target_text)
    if targets is None:
        fail(node, path, f"invalid port {quote(text)} (expected a port from 1 to {MAX_PORT}, "
              "e.g. 8080:80)")
    published: tuple[int, int] | None = None
    if published_text:
        published = _port_range(published_text)
        if published is None:
            fail(node, path, f"invalid port {quote(text)}: invalid published port "
                  f"{quote(published_text)} (expected 1 to {MAX_PORT})")
        if published[1] - published[0] != targets[1] - targets[0]:
            fail(node, path, f"invalid port {quote(text)}: the published and target ranges "
                  "differ in length")
    ports = []
    for offset in range(targets[1] - targets[0] + 1):
        port = pb.PortConfig(target_port=targets[0] + offset, protocol=protocol)
        if published is not None:
            port.published_port = published[0] + offset
        ports.append(port)
    return ports


def _port_long(context: Context, node: Node, path: str) -> pb.PortConfig:
    port = pb.PortConfig()
    for name, value in as_mapping(node, path).items():
        where = f"{path}.{name}"
        if name in ("target", "published"):
            text = as_string(value, where)
            if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_PORT:
                fail(value, where, f"invalid port {quote(text)} (expected 1 to {MAX_PORT})")
            setattr(port, f"{name}_port", int(text))
        elif name == "protocol":
            port.protocol = as_choice(value, where, PROTOCOLS)
        elif name == "mode":
            port.publish_mode = as_choice(value, where, PUBLISH_MODES)
        elif name == "name":
            port.name = as_string(value, where)
        elif name in ("host_ip", "app_protocol"):
            context.warn(value, where, "not supported; ignored")
        else:
            fail(value, where, "unknown key (expected target, published, protocol, mode, name)")
    if not port.target_port:
        fail(node, f"{path}.target", "required")
    return port


def _network_mode(fields: Mapping[str, Node], path: str) -> bool:
    """Whether `network_mode: host` asks for the node's network namespace; refused
    beside `ports:` or `networks:`, and for the modes this orchestrator lacks."""
    node = fields.get("network_mode")
    if node is None:
        return False
    mode = as_string(node, f"{path}.network_mode").strip()
    if mode != HOST_NETWORK:
        fail(node, f"{path}.network_mode", f"unsupported mode {quote(mode)} (only "
             f"{quote(HOST_NETWORK)}; leave it out for the stack's networks)")
    for key in ("ports", "networks"):
        if key in fields:
            fail(fields[key], f"{path}.{key}", "cannot be used with network_mode: host"
                 + (": the task binds the node's ports itself" if key == "ports" else ""))
    return True


def _service_networks(context: Context, service_key: str, spec: pb.ServiceSpec,
                      node: Node | None, path: str,
                      declared: Mapping[str, tuple[Node, StackNetwork]]) -> None:
    """Attach the networks named in the service (the stack's default network when it
    names none), each with the service's own name as an alias, as docker does."""
    wanted: list[tuple[str, Node, list[str]]] = []
    if node is None:
        wanted.append((DEFAULT_NETWORK, Node(None, Location(context.file, 1, 1)), []))
    elif isinstance(node.value, list):
        for index, item in enumerate(node.value):
            wanted.append((as_string(item, f"{path}[{index}]"), item, []))
    else:
        for key, value in as_mapping(node, path).items():
            aliases: list[str] = []
            for option, option_value in as_mapping(value, f"{path}.{key}").items():
                where = f"{path}.{key}.{option}"
                if option == "aliases":
                    aliases = as_strings(option_value, where)
                elif option in ("ipv4_address", "ipv6_address", "link_local_ips", "priority",
                                "mac_address", "driver_opts"):
                    context.warn(option_value, where, "not supported; ignored")
                else:
                    fail(option_value, where, "unknown key (expected aliases)")
            wanted.append((key, value, aliases))
    for key, where_node, aliases in wanted:
        found = declared.get(key)
        if found is None and key != DEFAULT_NETWORK:
            fail(where_node, path, f"undefined network {quote(key)}: declare it under the "
                  "top-level `networks:`")
        network = found[1] if found is not None else StackNetwork(
            key=DEFAULT_NETWORK, name=context_name(context, DEFAULT_NETWORK), external=False,
            spec=pb.NetworkSpec(name=context_name(context, DEFAULT_NETWORK),
                                labels={NAMESPACE_LABEL: context.stack}),
            location=where_node.location)
        context.networks.setdefault(key, network)
        if any(attachment.target == network.name for attachment in spec.task.networks):
            fail(where_node, path, f"network {quote(key)} is listed twice")
        spec.task.networks.add(target=network.name, aliases=[service_key, *aliases])


def _deploy(context: Context, spec: pb.ServiceSpec, node: Node, path: str) -> None:
    options = as_mapping(node, path)
    mode = "replicated"
    if "mode" in options:
        mode = as_string(options["mode"], f"{path}.mode")
        if mode not in ("replicated", "global", "replicated-job", "global-job"):
            fail(options["mode"], f"{path}.mode", f"invalid value {quote(mode)} (expected "
                  "replicated, global, replicated-job or global-job)")
    is_job = mode.endswith("-job")
    if mode.startswith("global"):
        if "replicas" in options:
            fail(options["replicas"], f"{path}.replicas", f"cannot be used with mode: {mode}")
        if is_job:
            spec.global_job.SetInParent()
        else:
            getattr(spec, "global").SetInParent()
    else:
        replicas = options.get("replicas")
        count = 1 if replicas is None else as_integer(replicas, f"{path}.replicas")
        if is_job:
            # As `docker stack deploy`: replicas completions, as many at once.
            spec.replicated_job.total_completions = count
            spec.replicated_job.max_concurrent = count
        else:
            spec.replicated.replicas = count
    if is_job and "restart_policy" not in options:
        # Docker's default for a job: restart a task that failed, not one that completed.
        spec.task.restart.condition = pb.RestartPolicy.ON_FAILURE
    for name, value in options.items():
        where = f"{path}.{name}"
        if name in ("mode", "replicas"):
            continue
        if is_job and name in ("update_config", "rollback_config"):
            fail(value, where, f"a job (mode: {mode}) has no {name}: an update re-runs it")
        if name == "x-schedule":
            if not is_job:
                fail(value, where, "applies to jobs only (mode: replicated-job or global-job)")
            schedule = as_string(value, where)
            try:
                parse_schedule(schedule)
            except BadSchedule as error:
                fail(value, where, str(error))
            spec.schedule = schedule
            continue
        if name == "labels":
            for label, text in as_key_value_pairs(value, where, environment=False,
                                                environ={}).items():
                spec.labels[label] = text or ""
        elif name == "placement":
            _placement(context, spec.task.placement, value, where)
        elif name == "resources":
            _resources(context, spec.task, value, where)
        elif name == "restart_policy":
            _restart_policy(spec.task.restart, value, where)
        elif name in ("update_config", "rollback_config"):
            config = spec.update if name == "update_config" else spec.rollback
            _update_config(config, value, where, rollback=name == "rollback_config")
        elif name == "endpoint_mode":
            spec.endpoint.mode = as_choice(value, where, ENDPOINT_MODES)
        else:
            fail(value, where, "unknown key (expected mode, replicas, labels, placement, "
                  "resources, restart_policy, update_config, rollback_config, endpoint_mode "
                  "or x-schedule)")


def _placement(context: Context, placement: pb.Placement, node: Node, path: str) -> None:
    for name, value in as_mapping(node, path).items():
        where = f"{path}.{name}"
        if name == "constraints":
            for index, item in enumerate(as_list(value, where)):
                text = as_string(item, f"{where}[{index}]")
                # Spaces around the operator, as often written (`node.role == manager`).
                placement.constraints.append(re.sub(r"\s*(==|!=)\s*", r"\1", text.strip()))
        elif name == "preferences":
            for index, item in enumerate(as_list(value, where)):
                options = as_mapping(item, f"{where}[{index}]")
                if set(options) != {"spread"}:
                    fail(item, f"{where}[{index}]", "expected `spread: node.labels.KEY`")
                placement.preferences.add(
                    spread=as_string(options["spread"], f"{where}[{index}].spread"))
        elif name == "max_replicas_per_node":
            placement.max_replicas_per_node = as_integer(value, where)
        else:
            fail(value, where, "unknown key (expected constraints, preferences or "
                  "max_replicas_per_node)")


def _resources(context: Context, task: pb.TaskSpec, node: Node, path: str) -> None:
    resources = task.resources
    for name, value in as_mapping(node, path).items():
        where = f"{path}.{name}"
        if name not in ("limits", "reservations"):
            fail(value, where, "unknown key (expected limits or reservations)")
        target: pb.Resources = getattr(resources, name)
        for option, option_value in as_mapping(value, where).items():
            option_path = f"{where}.{option}"
            if option == "cpus":
                target.nano_cpus = as_cpus(option_value, option_path)
            elif option == "memory":
                target.memory_bytes = as_size(option_value, option_path)
            elif option == "pids" and name == "limits":
                set_pids_limit(task.container, option_value, option_path)
            elif name == "reservations" and option in ("generic_resources", "devices"):
                generic_reservations(context, target, option, option_value, option_path)
            elif f"resources.{name}.{option}" in UNSUPPORTED_DEPLOY_KEYS:
                context.warn(option_value, option_path, "not supported; ignored")
            else:
                fail(option_value, option_path, "unknown key (expected cpus, memory or pids)"
                     if name == "limits" else "unknown key (expected cpus, memory, "
                     "generic_resources or devices)")


def _restart_policy(restart: pb.RestartPolicy, node: Node, path: str) -> None:
    restart.SetInParent()
    restart.delay.FromNanoseconds(5_000_000_000)  # docker's default, as the controller's
    for name, value in as_mapping(node, path).items():
        where = f"{path}.{name}"
        if name == "condition":
            restart.condition = as_choice(value, where, RESTART_CONDITIONS)
        elif name == "delay":
            restart.delay.FromNanoseconds(as_duration(value, where))
        elif name == "max_attempts":
            restart.max_attempts = as_integer(value, where)
        elif name == "window":
            restart.window.FromNanoseconds(as_duration(value, where))
        else:
            fail(value, where, "unknown key (expected condition, delay, max_attempts or window)")


def _update_config(config: pb.UpdateConfig, node: Node, path: str, *, rollback: bool) -> None:
    # Unset fields take the controller's defaults, as docker's do.
    config.parallelism = 1
    config.monitor.FromNanoseconds(5_000_000_000)
    config.delay.FromNanoseconds(0)
    for name, value in as_mapping(node, path).items():
        where = f"{path}.{name}"
        if name == "parallelism":
            config.parallelism = as_integer(value, where)
        elif name in ("delay", "monitor"):
            getattr(config, name).FromNanoseconds(as_duration(value, where))
        elif name == "failure_action":
            actions = dict(FAILURE_ACTIONS)
            if rollback:
                del actions["rollback"]
            config.failure_action = as_choice(value, where, actions)
        elif name == "max_failure_ratio":
            try:
                ratio = float(as_scalar_text(value, where)) if not isinstance(
                    value.value, bool) else -1.0
            except ValueError:
                ratio = -1.0
            if not 0.0 <= ratio <= 1.0:
                fail(value, where, f"expected a number between 0 and 1, got {quote(value.value)}")
            config.max_failure_ratio = ratio
        elif name == "order":
            config.order = as_choice(value, where, ORDERS)
        else:
            fail(value, where, "unknown key (expected parallelism, delay, failure_action, "
                  "monitor, max_failure_ratio or order)")
