"""Output rendering: aligned tables, JSON and YAML of API objects, and the
human forms of times, sizes and durations. Pure functions: the caller passes
`now`, so the output is reproducible in tests."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from google.protobuf.duration_pb2 import Duration
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from swarm.api import generic_resources, payloads, units
from swarm.api.naming import slot_name
from swarm.api.runopts import format_ulimit
from swarm.api.v1 import objects_pb2 as pb

SHORT_ID = 12
M = TypeVar("M", bound=Message)
_GAP = "   "


class Output(StrEnum):
    """The `-o/--output` formats."""

    table = "table"
    json = "json"
    yaml = "yaml"


# ---------------------------------------------------------------- structured output


def to_data(messages: Iterable[Message]) -> list[dict[str, Any]]:
    """API objects as plain data (field names as in the .proto files)."""
    return [MessageToDict(message, preserving_proto_field_name=True) for message in messages]


def as_json(messages: Iterable[Message]) -> str:
    return json.dumps(to_data(messages), indent=2)


def _yaml_dump(data: Any) -> str:
    import yaml  # only for -o yaml: PyYAML is about 15 ms of every start-up

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip("\n")


def as_yaml(messages: Iterable[Message]) -> str:
    return _yaml_dump(to_data(messages))


def plain(output: Output, data: Any) -> str:
    """Plain data (not API objects) in JSON or YAML, for listings computed client-side."""
    if output is Output.yaml:
        return _yaml_dump(data)
    return json.dumps(data, indent=2)


def render(output: Output, messages: Sequence[Message], table: Callable[[], str]) -> str:
    """`table()` for table output, otherwise the objects themselves in JSON or YAML."""
    if output is Output.json:
        return as_json(messages)
    if output is Output.yaml:
        return as_yaml(messages)
    return table()


# ---------------------------------------------------------------- tables and values


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Plain columns aligned on the widest cell, separated by three spaces."""
    all_rows = [list(headers), *([str(cell) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in all_rows) for i in range(len(headers))]
    lines = []
    for row in all_rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append(_GAP.join(cells).rstrip())
    return "\n".join(lines)


def short_id(object_id: str, no_trunc: bool = False) -> str:
    return object_id if no_trunc else object_id[:SHORT_ID]


def has_time(ts: Timestamp) -> bool:
    return bool(ts.seconds or ts.nanos)


def to_datetime(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def human_duration(seconds: float) -> str:
    """3 -> '3 seconds', 90 -> 'About a minute', 7200 -> '2 hours' (docker's wording)."""
    if seconds < 1:
        return "Less than a second"
    if seconds < 2:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = round(seconds / 60)
    if minutes < 2:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours < 2:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // (24 * 7)} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // (24 * 30)} months"
    return f"{hours // (24 * 365)} years"


def ago(ts: Timestamp, now: datetime) -> str:
    """'3 seconds ago', 'about a minute ago'; '' for an unset timestamp."""
    if not has_time(ts):
        return ""
    elapsed = (now - to_datetime(ts)).total_seconds()
    return f"{human_duration(max(elapsed, 0.0)).lower()} ago"


def timestamp(ts: Timestamp) -> str:
    return to_datetime(ts).isoformat().replace("+00:00", "Z") if has_time(ts) else ""


def duration(value: Duration) -> str:
    return units.format_duration(value.ToNanoseconds())


def enum_word(name: str) -> str:
    """'ON_FAILURE' -> 'on-failure'."""
    return name.lower().replace("_", "-")


def title_word(name: str) -> str:
    """'RUNNING' -> 'Running'."""
    return name.replace("_", " ").capitalize()


def labels(values: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" if value else key for key, value in sorted(values.items()))


def image_name(image: str, no_trunc: bool = False) -> str:
    """Drop a digest (`busybox@sha256:...` -> `busybox`) unless told not to."""
    return image if no_trunc else image.split("@", 1)[0]


def port(config: pb.PortConfig) -> str:
    """'*:8080->80/tcp' as docker shows a published port."""
    protocol = enum_word(pb.PortConfig.Protocol.Name(config.protocol))
    published = str(config.published_port) if config.published_port else ""
    text = f"*:{published}->{config.target_port}/{protocol}"
    if config.publish_mode == pb.PortConfig.HOST:
        text += " (host)"
    if config.proxy_protocol == pb.PortConfig.PROXY_V2:
        text += " (proxy-protocol v2)"
    return text


# ---------------------------------------------------------------- services


def service_mode(spec: pb.ServiceSpec) -> str:
    mode = spec.WhichOneof("mode")
    if mode in ("global", "replicated_job", "global_job"):
        return mode.replace("_", "-")
    return "replicated"


def _is_running(task: pb.Task) -> bool:
    return task.desired_state == pb.RUNNING and task.status.state == pb.RUNNING


def replicas(service: pb.Service, tasks: Iterable[pb.Task]) -> str:
    """'running/desired', counting the service's tasks."""
    own = [task for task in tasks if task.service_id == service.id]
    if service.spec.WhichOneof("mode") in ("replicated_job", "global_job"):
        return job_replicas(service, own)
    running = sum(1 for task in own if _is_running(task))
    if service.spec.WhichOneof("mode") == "global":
        desired = sum(1 for task in own if task.desired_state == pb.RUNNING)
    else:
        desired = service.spec.replicated.replicas
    return f"{running}/{desired}"


def job_replicas(service: pb.Service, own: Sequence[pb.Task]) -> str:
    """As docker shows a job: 'running/desired (completed/total completed)', counting
    the current run's tasks; desired is what may run now (max-concurrent, or fewer
    when fewer completions are left)."""
    run = [task for task in own if task.job_iteration == service.job_status.iteration]
    running = sum(1 for task in run if task.status.state == pb.RUNNING)
    completed = sum(1 for task in run if task.status.state == pb.COMPLETE)
    if service.spec.WhichOneof("mode") == "replicated_job":
        job = service.spec.replicated_job
        total = job.total_completions
        desired = max(0, min(job.max_concurrent, total - completed))
    else:
        total = len({task.node_id for task in run})
        desired = total - completed
    if service.job_status.iteration == 0:
        desired = 0  # a scheduled job before its first run
    return f"{running}/{desired} ({completed}/{total} completed)"


def services_table(services: Sequence[pb.Service], tasks: Sequence[pb.Task]) -> str:
    return table(*services_rows(services, tasks))


Rows = tuple[list[str], list[list[str]]]  # a listing's headers and rows (tables, --format)


def services_rows(services: Sequence[pb.Service], tasks: Sequence[pb.Task]) -> Rows:
    rows = [
        [
            short_id(service.id),
            service.spec.name,
            service_mode(service.spec),
            replicas(service, tasks),
            image_name(service.spec.task.container.image),
            # As allocated (a port given as 0 has its number), else as asked.
            ", ".join(port(p) for p in service.endpoint.ports or service.spec.endpoint.ports),
        ]
        for service in services
    ]
    return ["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"], rows


def task_error(task: pb.Task) -> str:
    """The error, why a rolling update gave up on the task (not healthy in time), or
    for a task still waiting for a node, the scheduler's reason."""
    if task.status.err:
        return task.status.err
    if task.update_failure:
        return task.update_failure
    if task.status.state < pb.ASSIGNED and task.status.message:
        return task.status.message
    return ""


_HEALTH_WORDS = {
    pb.TaskStatus.HEALTH_STARTING: "starting",
    pb.TaskStatus.HEALTHY: "healthy",
    pb.TaskStatus.UNHEALTHY: "unhealthy",
}


def task_health(task: pb.Task) -> str:
    """'healthy', 'unhealthy', 'starting', or '' for a task without a health check."""
    return _HEALTH_WORDS.get(task.status.health, "")


def current_state(task: pb.Task, now: datetime) -> str:
    state = title_word(pb.TaskState.Name(task.status.state))
    when = ago(task.status.timestamp, now)
    return f"{state} {when}" if when else state


def tasks_table(tasks: Sequence[pb.Task], hostnames: Mapping[str, str], now: datetime,
                *, no_trunc: bool = False) -> str:
    """`service ps`: the newest task of each slot, then its history marked `\\_`."""
    return table(*tasks_rows(tasks, hostnames, now, no_trunc=no_trunc))


def tasks_rows(tasks: Sequence[pb.Task], hostnames: Mapping[str, str], now: datetime,
               *, no_trunc: bool = False) -> Rows:

    # A job's runs (iterations) are listed newest first, each slot's tasks together.
    def slot_key(task: pb.Task) -> tuple[str, int, int, str]:
        return (task.service_name, -task.job_iteration, task.slot,
                "" if task.slot else task.node_id)

    def name_of(task: pb.Task) -> str:
        run = f" (run {task.job_iteration})" if task.job_iteration else ""
        return slot_name(task) + run

    ordered = sorted(tasks, key=lambda t: (slot_key(t), -t.meta.created_at.ToNanoseconds(),
                                           t.id))
    rows = []
    previous: tuple[str, int, int, str] | None = None
    for task in ordered:
        key = slot_key(task)
        name = name_of(task) if key != previous else f" \\_ {name_of(task)}"
        previous = key
        node = hostnames.get(task.node_id, task.node_id)
        rows.append([
            short_id(task.id, no_trunc),
            name,
            image_name(task.spec.container.image, no_trunc),
            node,
            title_word(pb.TaskState.Name(task.desired_state)),
            current_state(task, now),
            task_health(task),
            task_error(task),
        ])
    return ["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "HEALTH",
            "ERROR"], rows


# ---------------------------------------------------------------- nodes and networks


def node_address(node: pb.Node) -> str:
    return node.status.addr or node.description.advertise_addr or ",".join(
        node.description.addresses)


def nodes_table(nodes: Sequence[pb.Node]) -> str:
    return table(*nodes_rows(nodes))


def nodes_rows(nodes: Sequence[pb.Node]) -> Rows:
    rows = [
        [
            short_id(node.id),
            node.description.hostname,
            title_word(pb.NodeStatus.State.Name(node.status.state))
            + (f" ({','.join(node.status.conditions)})" if node.status.conditions else ""),
            title_word(pb.NodeSpec.Availability.Name(node.spec.availability)),
            enum_word(pb.NodeSpec.Role.Name(node.spec.role)),
            node_address(node),
        ]
        for node in nodes
    ]
    return ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "ROLE", "ADDR"], rows


def networks_table(networks: Sequence[pb.Network]) -> str:
    return table(*networks_rows(networks))


def networks_rows(networks: Sequence[pb.Network]) -> Rows:
    rows = [
        [
            short_id(network.id),
            network.spec.name,
            network.spec.driver,
            network.subnet or network.spec.ipam.subnet,
            network.gateway or network.spec.ipam.gateway,
            str(network.spec.internal).lower(),
            str(network.spec.attachable).lower(),
            labels(network.spec.labels),
        ]
        for network in networks
    ]
    return ["NETWORK ID", "NAME", "DRIVER", "SUBNET", "GATEWAY", "INTERNAL", "ATTACHABLE",
            "LABELS"], rows


# ---------------------------------------------------------------- inspect, human-readable

Line = tuple[int, str, str | None]


def details(lines: Iterable[Line]) -> str:
    """Indented 'Key:  value' lines, values aligned. A None value makes a heading;
    an empty one drops the line."""
    items = [line for line in lines if line[2] != ""]
    width = max((indent + len(key) for indent, key, value in items if value), default=0) + 2
    out = []
    for indent, key, value in items:
        head = f"{' ' * indent}{key}:"
        out.append(head if value is None else f"{head.ljust(width + 1)}{value}")
    return "\n".join(out)


def _resources_lines(title: str, resources: pb.Resources, indent: int) -> list[Line]:
    lines: list[Line] = []
    if resources.nano_cpus:
        lines.append((indent + 1, "CPU", units.format_cpus(resources.nano_cpus)))
    if resources.memory_bytes:
        lines.append((indent + 1, "Memory", units.format_memory(resources.memory_bytes)))
    if resources.generic:  # gpu=nvidia0,nvidia1 fpga=2
        lines.append((indent + 1, "Generic", generic_resources.text(resources.generic)))
    return [(indent, title, None), *lines] if lines else []


def _update_config_lines(title: str, config: pb.UpdateConfig) -> list[Line]:
    return [
        (0, title, None),
        (1, "Parallelism", str(config.parallelism)),
        (1, "Delay", duration(config.delay)),
        (1, "On failure", enum_word(pb.UpdateConfig.FailureAction.Name(config.failure_action))),
        (1, "Monitoring Period", duration(config.monitor)),
        (1, "Max failure ratio", f"{config.max_failure_ratio:g}"),
        (1, "Update order", enum_word(pb.UpdateConfig.Order.Name(config.order))),
    ]


def write_error_line(service: pb.Service) -> str:
    """One line on why the controller cannot write a service's tasks ("" if it can)."""
    error = service.write_error
    if not error.message:
        return ""
    return (f"service {service.spec.name}: the controller cannot write its tasks "
            f"({error.attempts} attempts since {timestamp(error.since)}): {error.message}")


def service_details(service: pb.Service) -> str:
    spec = service.spec
    task = spec.task
    container = task.container
    lines: list[Line] = [
        (0, "ID", service.id),
        (0, "Name", spec.name),
    ]
    if spec.labels:
        lines.append((0, "Labels", labels(spec.labels)))
    lines.append((0, "Service Mode", service_mode(spec)))
    mode = spec.WhichOneof("mode")
    if mode == "replicated_job":
        lines.append((1, "Completions", str(spec.replicated_job.total_completions)))
        lines.append((1, "MaxConcurrent", str(spec.replicated_job.max_concurrent)))
    elif mode not in ("global", "global_job"):
        lines.append((1, "Replicas", str(spec.replicated.replicas)))
    if spec.schedule:
        lines.append((1, "Schedule", f"{spec.schedule} (UTC)"))
    if service.HasField("job_status"):
        job = service.job_status
        lines += [
            (0, "JobStatus", None),
            (1, "Iteration", str(job.iteration)),
            (1, "State", pb.JobStatus.State.Name(job.state).lower()),
            (1, "LastExecution", timestamp(job.last_execution)),
            (1, "Finished", timestamp(job.finished_at)),
            (1, "Message", job.message),
        ]
        if spec.schedule:
            lines += [(1, "LastScheduled", timestamp(job.last_scheduled)),
                      (1, "Skipped", str(job.skipped)),
                      (1, "LastSkipped", timestamp(job.last_skipped))]
    if service.HasField("update_status") and service.update_status.state:
        lines += [
            (0, "UpdateStatus", None),
            # docker's words: updating, paused, rollback_started, rollback_completed...
            (1, "State", pb.UpdateStatus.State.Name(service.update_status.state).lower()),
            (1, "Started", timestamp(service.update_status.started_at)),
            (1, "Completed", timestamp(service.update_status.completed_at)),
            (1, "Message", service.update_status.message),
        ]
    if service.write_error.message:
        lines += [
            (0, "WriteError", None),
            (1, "Message", service.write_error.message),
            (1, "Since", timestamp(service.write_error.since)),
            (1, "Attempts", str(service.write_error.attempts)),
        ]
    placement = task.placement
    if placement.constraints or placement.preferences or placement.max_replicas_per_node:
        lines.append((0, "Placement", None))
        if placement.constraints:
            lines.append((1, "Constraints", ", ".join(placement.constraints)))
        if placement.preferences:
            lines.append((1, "Preferences",
                          ", ".join(f"spread={p.spread}" for p in placement.preferences)))
        if placement.max_replicas_per_node:
            lines.append((1, "Max Replicas Per Node", str(placement.max_replicas_per_node)))
    if task.HasField("restart"):
        restart = task.restart
        lines += [
            (0, "RestartPolicy", None),
            (1, "Condition", enum_word(pb.RestartPolicy.Condition.Name(restart.condition))),
            (1, "Delay", duration(restart.delay)),
            (1, "Max attempts", str(restart.max_attempts) if restart.max_attempts
             else "unlimited"),
        ]
        if restart.HasField("window"):
            lines.append((1, "Window", duration(restart.window)))
    if spec.HasField("update"):
        lines += _update_config_lines("UpdateConfig", spec.update)
    if spec.HasField("rollback"):
        lines += _update_config_lines("RollbackConfig", spec.rollback)
    lines += [(0, "ContainerSpec", None), (1, "Image", container.image)]
    if service.registry_auth.registry:  # sent with --with-registry-auth; kept sealed
        lines.append((1, "Registry auth", f"{service.registry_auth.registry} (sealed, sent "
                                          f"{timestamp(service.registry_auth.updated_at)})"))
    if container.command:
        lines.append((1, "Entrypoint", " ".join(container.command)))
    if container.args:
        lines.append((1, "Args", " ".join(container.args)))
    if container.env:
        lines.append((1, "Env", " ".join(container.env)))
    for key, value in (("Dir", container.dir), ("User", container.user),
                       ("Hostname", container.hostname), ("Stop signal", container.stop_signal)):
        if value:
            lines.append((1, key, value))
    if container.HasField("stop_grace_period"):
        lines.append((1, "Stop grace period", duration(container.stop_grace_period)))
    if container.HasField("drain_timeout"):
        lines.append((1, "Drain timeout", duration(container.drain_timeout)))
    if container.read_only:
        lines.append((1, "Read only", "true"))
    lines += runtime_option_lines(container)
    if container.HasField("healthcheck"):
        health = container.healthcheck
        lines.append((1, "Healthcheck", " ".join(health.test) or "(from image)"))
    if container.mounts:
        lines.append((0, "Mounts", None))
        for item in container.mounts:
            kind = enum_word(pb.Mount.Type.Name(item.type))
            source = f" {item.source}" if item.source else (
                " (anonymous)" if item.type == pb.Mount.VOLUME else "")
            read_only = ", read-only" if item.read_only else ""
            lines.append((1, item.target, f"{kind}{source}{read_only}"))
    for title, refs in (("Secrets", [("secret", r.secret_name, r.file) for r in container.secrets]),
                        ("Configs", [("config", r.config_name, r.file) for r in container.configs])):
        if refs:
            lines.append((0, title, None))
            for kind, name, file in refs:
                path = payloads.container_path(kind, file.name or name)  # type: ignore[arg-type]
                lines.append((1, path, f"{name} (uid {file.uid}, gid {file.gid}, "
                                       f"mode {file.mode or payloads.DEFAULT_MODE:04o})"))
    resources = _resources_lines("Limits", task.resources.limits, 1) + _resources_lines(
        "Reservations", task.resources.reservations, 1)
    if resources:
        lines += [(0, "Resources", None), *resources]
    if task.networks:
        lines.append((0, "Networks", ", ".join(n.target for n in task.networks)))
    endpoint = spec.endpoint
    lines.append((0, "Endpoint Mode", enum_word(pb.EndpointSpec.Mode.Name(endpoint.mode))))
    ports = service.endpoint.ports or endpoint.ports  # as allocated, else as asked
    if ports:
        lines.append((0, "Ports", ", ".join(port(p) for p in ports)))
    for vip in service.endpoint.virtual_ips:
        lines.append((0, "Virtual IP", f"{vip.addr} ({vip.network_id})"))
    lines.append((0, "Created", timestamp(service.meta.created_at)))
    lines.append((0, "Updated", timestamp(service.meta.updated_at)))
    return details(lines)


def node_details(node: pb.Node) -> str:
    description = node.description
    lines: list[Line] = [
        (0, "ID", node.id),
        (0, "Hostname", description.hostname),
    ]
    if node.spec.labels:
        lines.append((0, "Labels", labels(node.spec.labels)))
    lines += [
        (0, "Joined at", timestamp(node.meta.created_at)),
        (0, "Status", None),
        (1, "State", title_word(pb.NodeStatus.State.Name(node.status.state))),
        (1, "Availability", title_word(pb.NodeSpec.Availability.Name(node.spec.availability))),
        (1, "Address", node_address(node)),
        (1, "Last heartbeat", timestamp(node.status.last_heartbeat)),
    ]
    if node.status.message:
        lines.append((1, "Message", node.status.message))
    lines.append((0, "Role", enum_word(pb.NodeSpec.Role.Name(node.spec.role))))
    if description.platform.os or description.platform.architecture:
        lines += [(0, "Platform", None), (1, "Operating System", description.platform.os),
                  (1, "Architecture", description.platform.architecture)]
    lines += _resources_lines("Resources", description.resources, 0)
    if description.engine_labels:
        lines.append((0, "Engine Labels", labels(description.engine_labels)))
    if description.agent_version:
        lines.append((0, "Agent Version", description.agent_version))
    return details(lines)


def network_details(network: pb.Network) -> str:
    spec = network.spec
    lines: list[Line] = [
        (0, "ID", network.id),
        (0, "Name", spec.name),
        (0, "Driver", spec.driver),
        (0, "Subnet", network.subnet or spec.ipam.subnet),
        (0, "Gateway", network.gateway or spec.ipam.gateway),
        (0, "VNI", str(network.vni) if network.vni else ""),
        (0, "Attachable", str(spec.attachable).lower()),
        (0, "Internal", str(spec.internal).lower()),
    ]
    if spec.labels:
        lines.append((0, "Labels", labels(spec.labels)))
    lines.append((0, "Created", timestamp(network.meta.created_at)))
    return details(lines)


def inspected(output: Output, objects: Sequence[M], describe: Callable[[M], str]) -> str:
    """`inspect` output: the objects in JSON or YAML, or their descriptions for `table`."""
    return render(output, objects, lambda: "\n\n".join(describe(o) for o in objects))


def now_utc() -> datetime:
    return datetime.now(UTC)


def runtime_option_lines(container: pb.ContainerSpec) -> list[Line]:
    """The runtime options of `service inspect -o table` (issue 13), each when set."""
    dns = container.dns_config
    found: list[tuple[str, str]] = [
        ("Capabilities added", ", ".join(container.cap_add)),
        ("Capabilities dropped", ", ".join(container.cap_drop)),
        ("Sysctls", " ".join(f"{k}={v}" for k, v in sorted(container.sysctls.items()))),
        ("Ulimits", " ".join(format_ulimit(u.name, u.soft, u.hard) for u in container.ulimits)),
        ("Pids limit", str(container.pids_limit) if container.pids_limit else ""),
        ("Devices", ", ".join(f"{d.path_on_host}:{d.path_in_container or d.path_on_host}:"
                              f"{d.permissions or 'rwm'}" for d in container.devices)),
        ("Groups", ", ".join(container.groups)),
        ("DNS servers", ", ".join(dns.nameservers)),
        ("DNS search", ", ".join(dns.search)),
        ("DNS options", " ".join(dns.options)),
        ("Hosts", ", ".join(container.hosts)),
        ("TTY", "true" if container.tty else ""),
    ]
    return [(1, key, value) for key, value in found if value]
