"""`swarmctl service ...`: create, ls, inspect, ps, scale, update, rebalance, rm.

The specs are built by pure functions (`service_spec_from_options`,
`updated_service_spec`) that parse every flag before anything is sent, so a
bad value is a one-line error naming the flag (exit 2) without a controller.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Any

import typer

from swarm.api import imageref, logopts, security
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import logs_pb2 as lpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.api.validation import HOST_NETWORK, ValidationError, check_drain_timeout

from . import client, completion, formatting, logs, parsing, progress, pull, render
from .choices import ENDPOINT_MODES, FAILURE_ACTIONS, ORDERS, RESTART_CONDITIONS
from .client import fail_if, for_each
from .errors import BadFlag, BadInput, NotConverged, ReportingGroup
from .options import (
    DetachOpt,
    InspectOutputOpt,
    OutputOpt,
    QuietOpt,
    WaitTimeoutOpt,
    examples,
)
from .payload_refs import append_references, edit_references, parse_reference
from .runopts import (
    RuntimeCreateOptions,
    RuntimeTaskOptions,
    RuntimeUpdateOptions,
    apply_create_options,
    apply_update_options,
    check_stop_signal,
    env_file_entries,
)
from .service_flags import (
    CapAddOpt,
    CapDropOpt,
    ConfigAddOpt,
    ConfigOpt,
    ConfigRmOpt,
    DeviceAddOpt,
    DeviceOpt,
    DeviceRmOpt,
    DnsAddOpt,
    DnsOpt,
    DnsOptionAddOpt,
    DnsOptionOpt,
    DnsOptionRmOpt,
    DnsRmOpt,
    DnsSearchAddOpt,
    DnsSearchOpt,
    DnsSearchRmOpt,
    DrainTimeoutOpt,
    EndpointModeOpt,
    EntrypointOpt,
    EnvFileOpt,
    GroupAddOpt,
    GroupRmOpt,
    HealthCmdOpt,
    HealthIntervalOpt,
    HealthRetriesOpt,
    HealthStartIntervalOpt,
    HealthStartPeriodOpt,
    HealthTimeoutOpt,
    HostAddOpt,
    HostnameOpt,
    HostOpt,
    HostRmOpt,
    ImageOpt,
    InitOpt,
    LimitCpuOpt,
    LimitMemoryOpt,
    LimitPidsOpt,
    LogOptOpt,
    MaxReplicasPerNodeOpt,
    NoHealthcheckOpt,
    ReadOnlyOpt,
    ReplicasOpt,
    ReserveCpuOpt,
    ReserveMemoryOpt,
    RestartConditionOpt,
    RestartDelayOpt,
    RestartMaxAttemptsOpt,
    RestartWindowOpt,
    RollbackDelayOpt,
    RollbackFailureActionOpt,
    RollbackMaxFailureRatioOpt,
    RollbackMonitorOpt,
    RollbackOrderOpt,
    RollbackParallelismOpt,
    SecretAddOpt,
    SecretOpt,
    SecretRmOpt,
    SecurityOptOpt,
    StopGracePeriodOpt,
    StopSignalOpt,
    SysctlAddOpt,
    SysctlOpt,
    SysctlRmOpt,
    TtyOpt,
    UlimitAddOpt,
    UlimitOpt,
    UlimitRmOpt,
    UpdateDelayOpt,
    UpdateFailureActionOpt,
    UpdateMaxFailureRatioOpt,
    UpdateMonitorOpt,
    UpdateOrderOpt,
    UpdateParallelismOpt,
    UserOpt,
    WorkdirOpt,
)

app = typer.Typer(help="Manage services.", no_args_is_help=True, rich_markup_mode=None,
                  cls=ReportingGroup)

DEFAULT_RESTART_DELAY_NS = 5_000_000_000
DEFAULT_MONITOR_NS = 5_000_000_000

_MODES = {"replicated": "replicated", "global": "global"}
_DESIRED_STATES = {name.lower(): value for name, value in pb.TaskState.items()}


# ---------------------------------------------------------------- options


@dataclass(kw_only=True)
class TaskOptions(RuntimeTaskOptions):
    """Flags that `create` and `update` share, as typed. None, False or [] means not given."""

    image: str | None = None
    replicas: str | None = None
    max_replicas_per_node: str | None = None
    limit_cpu: str | None = None
    limit_memory: str | None = None
    reserve_cpu: str | None = None
    reserve_memory: str | None = None
    restart_condition: str | None = None
    restart_delay: str | None = None
    restart_max_attempts: str | None = None
    restart_window: str | None = None
    update_parallelism: str | None = None
    update_delay: str | None = None
    update_order: str | None = None
    update_failure_action: str | None = None
    update_monitor: str | None = None
    update_max_failure_ratio: str | None = None
    rollback_parallelism: str | None = None
    rollback_delay: str | None = None
    rollback_order: str | None = None
    rollback_failure_action: str | None = None
    rollback_monitor: str | None = None
    rollback_max_failure_ratio: str | None = None
    workdir: str | None = None
    user: str | None = None
    hostname: str | None = None
    stop_signal: str | None = None
    stop_grace_period: str | None = None
    drain_timeout: str | None = None
    read_only: bool | None = None
    init: bool | None = None
    entrypoint: str | None = None
    health_cmd: str | None = None
    health_interval: str | None = None
    health_timeout: str | None = None
    health_retries: str | None = None
    health_start_period: str | None = None
    health_start_interval: str | None = None
    no_healthcheck: bool = False
    endpoint_mode: str | None = None
    security_opt: list[str] | None = None
    log_opt: list[str] | None = None


def task_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """The TaskOptions flags out of a command's parameters, which are named as the
    fields (the flags are declared once, in cli/service_flags.py); a repeatable
    flag not given is None from typer, [] here."""
    return {option.name: ([] if values[option.name] is None and option.default_factory is list
                          else values[option.name])
            for option in fields(TaskOptions)}


@dataclass(kw_only=True)
class ServiceOptions(TaskOptions, RuntimeCreateOptions):
    """Everything `service create` takes."""

    name: str
    mode: str | None = None
    args: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    container_labels: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)
    placement_prefs: list[str] = field(default_factory=list)
    publish: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    configs: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class ServiceUpdateOptions(TaskOptions, RuntimeUpdateOptions):
    """Everything `service update` takes."""

    args: str | None = None
    env_add: list[str] = field(default_factory=list)
    env_rm: list[str] = field(default_factory=list)
    label_add: list[str] = field(default_factory=list)
    label_rm: list[str] = field(default_factory=list)
    container_label_add: list[str] = field(default_factory=list)
    container_label_rm: list[str] = field(default_factory=list)
    constraint_add: list[str] = field(default_factory=list)
    constraint_rm: list[str] = field(default_factory=list)
    placement_pref_add: list[str] = field(default_factory=list)
    placement_pref_rm: list[str] = field(default_factory=list)
    publish_add: list[str] = field(default_factory=list)
    publish_rm: list[str] = field(default_factory=list)
    mount_add: list[str] = field(default_factory=list)
    mount_rm: list[str] = field(default_factory=list)
    secret_add: list[str] = field(default_factory=list)
    secret_rm: list[str] = field(default_factory=list)
    config_add: list[str] = field(default_factory=list)
    config_rm: list[str] = field(default_factory=list)
    force: bool = False
    rollback: bool = False

    def changes_spec(self) -> bool:
        """Whether anything other than --rollback was asked for."""
        return replace(self, rollback=False) != ServiceUpdateOptions()


# ---------------------------------------------------------------- pure spec builders


def _update_config(spec: pb.ServiceSpec, which: str, values: Sequence[str | None]) -> None:
    """Apply --update-* or --rollback-* (parallelism, delay, order, failure action,
    monitor, max failure ratio); an absent config starts from the defaults."""
    if all(value is None for value in values):
        return
    parallelism, delay, order, failure_action, monitor, max_ratio = values
    if not spec.HasField(which):  # type: ignore[arg-type]
        getattr(spec, which).CopyFrom(pb.UpdateConfig(parallelism=1))
        getattr(spec, which).monitor.FromNanoseconds(DEFAULT_MONITOR_NS)
        getattr(spec, which).delay.FromNanoseconds(0)
    config: pb.UpdateConfig = getattr(spec, which)
    prefix = f"--{which}"
    if parallelism is not None:
        config.parallelism = parsing.count(f"{prefix}-parallelism", parallelism)
    if delay is not None:
        config.delay.FromNanoseconds(parsing.duration(f"{prefix}-delay", delay))
    if order is not None:
        config.order = parsing.choice(f"{prefix}-order", order, ORDERS)
    if failure_action is not None:
        actions = FAILURE_ACTIONS if which == "update" else {
            key: value for key, value in FAILURE_ACTIONS.items() if key != "rollback"}
        config.failure_action = parsing.choice(f"{prefix}-failure-action", failure_action,
                                               actions)
    if monitor is not None:
        config.monitor.FromNanoseconds(parsing.duration(f"{prefix}-monitor", monitor))
    if max_ratio is not None:
        config.max_failure_ratio = parsing.ratio(f"{prefix}-max-failure-ratio", max_ratio)


def _resources(spec: pb.ServiceSpec, options: TaskOptions) -> None:
    resources = spec.task.resources
    if options.limit_cpu is not None:
        resources.limits.nano_cpus = parsing.cpus("--limit-cpu", options.limit_cpu)
    if options.limit_memory is not None:
        resources.limits.memory_bytes = parsing.memory("--limit-memory", options.limit_memory)
    if options.reserve_cpu is not None:
        resources.reservations.nano_cpus = parsing.cpus("--reserve-cpu", options.reserve_cpu)
    if options.reserve_memory is not None:
        resources.reservations.memory_bytes = parsing.memory("--reserve-memory",
                                                             options.reserve_memory)


def _restart(spec: pb.ServiceSpec, options: TaskOptions) -> None:
    given = (options.restart_condition, options.restart_delay, options.restart_max_attempts,
             options.restart_window)
    if all(value is None for value in given):
        return
    restart = spec.task.restart
    if not spec.task.HasField("restart"):
        restart.delay.FromNanoseconds(DEFAULT_RESTART_DELAY_NS)
    if options.restart_condition is not None:
        restart.condition = parsing.choice("--restart-condition", options.restart_condition,
                                           RESTART_CONDITIONS)
    if options.restart_delay is not None:
        restart.delay.FromNanoseconds(parsing.duration("--restart-delay", options.restart_delay))
    if options.restart_max_attempts is not None:
        restart.max_attempts = parsing.count("--restart-max-attempts",
                                             options.restart_max_attempts)
    if options.restart_window is not None:
        restart.window.FromNanoseconds(parsing.duration("--restart-window",
                                                        options.restart_window))


def _healthcheck(container: pb.ContainerSpec, options: TaskOptions) -> None:
    given = {
        "--health-cmd": options.health_cmd,
        "--health-interval": options.health_interval,
        "--health-timeout": options.health_timeout,
        "--health-retries": options.health_retries,
        "--health-start-period": options.health_start_period,
        "--health-start-interval": options.health_start_interval,
    }
    if options.no_healthcheck:
        clashing = [flag for flag, value in given.items() if value is not None]
        if clashing:
            raise BadFlag("--no-healthcheck", f"cannot be combined with {', '.join(clashing)}")
        container.healthcheck.CopyFrom(pb.HealthConfig(test=["NONE"]))
        return
    if all(value is None for value in given.values()):
        return
    health = container.healthcheck
    health.SetInParent()
    if list(health.test) == ["NONE"]:
        del health.test[:]
    if options.health_cmd is not None:
        health.test[:] = ["CMD-SHELL", options.health_cmd] if options.health_cmd.strip() else []
    if options.health_interval is not None:
        health.interval.FromNanoseconds(parsing.duration("--health-interval",
                                                         options.health_interval))
    if options.health_timeout is not None:
        health.timeout.FromNanoseconds(parsing.duration("--health-timeout",
                                                        options.health_timeout))
    if options.health_retries is not None:
        health.retries = parsing.count("--health-retries", options.health_retries,
                                       maximum=2**32 - 1)
    if options.health_start_period is not None:
        health.start_period.FromNanoseconds(parsing.duration("--health-start-period",
                                                             options.health_start_period))
    if options.health_start_interval is not None:
        health.start_interval.FromNanoseconds(parsing.duration(
            "--health-start-interval", options.health_start_interval))


def _container(container: pb.ContainerSpec, options: TaskOptions) -> None:
    if options.image is not None:
        if not options.image.strip():
            raise BadFlag("--image", "must not be empty")
        container.image = options.image.strip()
    if options.workdir is not None:
        container.dir = options.workdir
    if options.user is not None:
        container.user = options.user
    if options.hostname is not None:
        container.hostname = options.hostname
    if options.stop_signal is not None:
        container.stop_signal = check_stop_signal(options.stop_signal)
    if options.stop_grace_period is not None:
        container.stop_grace_period.FromNanoseconds(
            parsing.duration("--stop-grace-period", options.stop_grace_period))
    if options.drain_timeout is not None:
        nanoseconds = parsing.duration("--drain-timeout", options.drain_timeout)
        try:
            check_drain_timeout(nanoseconds, "--drain-timeout")
        except ValidationError as error:
            raise BadFlag("--drain-timeout", error.problem) from None
        container.drain_timeout.FromNanoseconds(nanoseconds)
    if options.read_only is not None:
        container.read_only = options.read_only
    if options.init is not None:
        container.init = options.init
    if options.entrypoint is not None:
        container.command[:] = parsing.shell_words("--entrypoint", options.entrypoint)
    _healthcheck(container, options)
    for item in options.security_opt or ():
        try:
            security.apply_security_opt(container.privileges, item,
                                        lambda path: Path(path).expanduser().read_bytes())
        except ValueError as error:
            raise BadFlag("--security-opt", str(error)) from None


def _apply_task_options(spec: pb.ServiceSpec, options: TaskOptions) -> None:
    if options.replicas is not None:
        if spec.WhichOneof("mode") == "global":
            raise BadFlag("--replicas", "applies to replicated services only, "
                          "not to a global one")
        spec.replicated.replicas = parsing.count("--replicas", options.replicas)
    if options.max_replicas_per_node is not None:
        spec.task.placement.max_replicas_per_node = parsing.count(
            "--max-replicas-per-node", options.max_replicas_per_node)
    _container(spec.task.container, options)
    for item in options.log_opt or ():
        try:
            logopts.apply_log_opt(spec.task.log_driver, item)
        except ValueError as error:
            raise BadFlag("--log-opt", str(error)) from None
    _resources(spec, options)
    _restart(spec, options)
    _update_config(spec, "update", (
        options.update_parallelism, options.update_delay, options.update_order,
        options.update_failure_action, options.update_monitor, options.update_max_failure_ratio))
    _update_config(spec, "rollback", (
        options.rollback_parallelism, options.rollback_delay, options.rollback_order,
        options.rollback_failure_action, options.rollback_monitor,
        options.rollback_max_failure_ratio))
    if options.endpoint_mode is not None:
        spec.endpoint.mode = parsing.choice("--endpoint-mode", options.endpoint_mode,
                                            ENDPOINT_MODES)


def _merge_env(current: Sequence[str], remove: Sequence[str], add: Sequence[str],
               add_flag: str) -> list[str]:
    """Drop the removed and re-set keys, then append the new KEY=VALUEs (last one wins)."""
    added: dict[str, str] = {}
    for item in add:
        key, _ = parsing.key_value(add_flag, item)
        added[key] = item
    dropped = set(remove) | set(added)
    return [item for item in current if item.partition("=")[0] not in dropped] + list(
        added.values())


@dataclass(frozen=True)
class CreateTarget:
    """What `service create`'s positionals and --name/--image amount to."""

    name: str
    image: str | None
    args: list[str]


def name_from_image(image: str) -> str:
    """The service name docker's form of create gives when --name is absent: the
    image's last path component (`registry:5000/team/web-app:1.2` -> `web-app`),
    with the '.' a repository allows but a service name does not made '-'.
    Readable in `service ls` and predictable for scripts, unlike docker's random
    adjective_noun; a second service of the same image needs --name (the
    controller refuses the duplicate name, nothing is written)."""
    component = imageref.parse_reference(image).repository.rsplit("/", 1)[-1]
    return component.replace(".", "-")[:63].rstrip("-_")


def create_target(positionals: Sequence[str], name: str | None,
                  image: str | None) -> CreateTarget:
    """Read create's positionals in both forms. With --image (today's form) they
    are NAME [CMD...], or only CMD when --name is given too. Without --image
    (docker's form, `service create [--name NAME] IMAGE [CMD...]`) the first one
    is the image, and the name is --name or the image's last path component."""
    rest = list(positionals)
    if image is not None:
        if name is None:
            if not rest:
                raise BadInput("a service name is required: service create NAME --image "
                               "IMAGE, or service create [--name NAME] IMAGE")
            name = rest.pop(0)
        return CreateTarget(name=name, image=image, args=rest)
    if not rest:
        raise BadFlag("--image", "missing: give the image to run, e.g. service create "
                                 "busybox, or --image busybox")
    image = rest.pop(0)
    try:
        derived = name_from_image(image)
    except imageref.InvalidReference as error:
        raise BadInput(f"IMAGE: {error} (service create [--name NAME] IMAGE [CMD...], "
                       "or NAME --image IMAGE)") from None
    return CreateTarget(name=derived if name is None else name, image=image, args=rest)


def host_network(networks: Sequence[pb.NetworkAttachmentConfig],
                 publish: Sequence[str]) -> bool:
    """Whether `--network host` was asked for; refused with another network, an
    alias or --publish (the task binds the node's ports itself), as the controller
    refuses it (validation.check_host_network), but before anything is sent."""
    if all(a.target != HOST_NETWORK for a in networks):
        return False
    if len(networks) > 1:
        raise BadFlag("--network", "host cannot be combined with other networks")
    if networks[0].aliases:
        raise BadFlag("--network", "host takes no alias (the task has the node's names)")
    if publish:
        raise BadFlag("--publish", "cannot be used with --network host: the task binds the "
                                   "node's ports itself")
    return True


def service_spec_from_options(options: ServiceOptions) -> pb.ServiceSpec:
    """The ServiceSpec `service create` sends; raises BadFlag for a bad value."""
    if not options.name.strip():
        raise BadInput("a service name is required")
    spec = pb.ServiceSpec(name=options.name)
    mode = parsing.choice("--mode", options.mode or "replicated", _MODES)
    if mode == "global":
        if options.replicas is not None:
            raise BadFlag("--replicas", "cannot be used with --mode global")
        getattr(spec, "global").SetInParent()
    else:
        spec.replicated.replicas = 1
    if options.image is None:
        raise BadFlag("--image", "missing: give the image to run, e.g. --image busybox")
    _apply_task_options(spec, options)
    container = spec.task.container
    container.args[:] = options.args
    container.env[:] = _merge_env(env_file_entries(options.env_files), [], options.env,
                                  "--env")
    apply_create_options(container, options, options)
    for item in options.labels:
        key, value = parsing.key_value("--label", item, value_required=False)
        spec.labels[key] = value
    for item in options.container_labels:
        key, value = parsing.key_value("--container-label", item, value_required=False)
        container.labels[key] = value
    placement = spec.task.placement
    for item in options.constraints:
        placement.constraints.append(parsing.constraint("--constraint", item))
    for item in options.placement_prefs:
        placement.preferences.add(spread=parsing.placement_pref("--placement-pref", item))
    for item in options.publish:
        spec.endpoint.ports.append(parsing.port_config("--publish", item))
    attachments = [parsing.network_attachment("--network", item) for item in options.networks]
    if host_network(attachments, options.publish):
        spec.task.host_network = True
    else:
        spec.task.networks.extend(attachments)
    for item in options.mounts:
        container.mounts.append(parsing.mount("--mount", item))
    append_references(container, "secret",
                      [parse_reference("secret", "--secret", item) for item in options.secrets])
    append_references(container, "config",
                      [parse_reference("config", "--config", item) for item in options.configs])
    return spec


def _same_port(port: pb.PortConfig, wanted: pb.PortConfig) -> bool:
    if port.protocol != wanted.protocol:
        return False
    if wanted.published_port:
        return port.published_port == wanted.published_port
    return port.target_port == wanted.target_port


def updated_service_spec(current: pb.ServiceSpec,
                         options: ServiceUpdateOptions) -> pb.ServiceSpec:
    """A copy of `current` with the `service update` flags applied; raises BadFlag."""
    spec = pb.ServiceSpec()
    spec.CopyFrom(current)
    _apply_task_options(spec, options)
    container = spec.task.container
    apply_update_options(container, options, options)
    if options.args is not None:
        container.args[:] = parsing.shell_words("--args", options.args)
    env_rm = [parsing.key_only("--env-rm", key) for key in options.env_rm]
    container.env[:] = _merge_env(container.env, env_rm, options.env_add, "--env-add")
    for flag, target, remove, add in (
        ("--label", spec.labels, options.label_rm, options.label_add),
        ("--container-label", container.labels, options.container_label_rm,
         options.container_label_add),
    ):
        for key in remove:
            target.pop(parsing.key_only(f"{flag}-rm", key), None)
        for item in add:
            key, value = parsing.key_value(f"{flag}-add", item, value_required=False)
            target[key] = value
    placement = spec.task.placement
    removed = {parsing.constraint("--constraint-rm", item) for item in options.constraint_rm}
    constraints = [c for c in placement.constraints if c.replace(" ", "") not in removed]
    for item in options.constraint_add:
        wanted = parsing.constraint("--constraint-add", item)
        if wanted not in constraints:
            constraints.append(wanted)
    placement.constraints[:] = constraints
    removed = {parsing.placement_pref("--placement-pref-rm", item)
               for item in options.placement_pref_rm}
    spreads = [p.spread for p in placement.preferences if p.spread not in removed]
    for item in options.placement_pref_add:
        spread = parsing.placement_pref("--placement-pref-add", item)
        if spread not in spreads:
            spreads.append(spread)
    del placement.preferences[:]
    for spread in spreads:
        placement.preferences.add(spread=spread)
    ports = list(spec.endpoint.ports)
    for item in options.publish_rm:
        wanted_port = parsing.port_config("--publish-rm", item)
        ports = [p for p in ports if not _same_port(p, wanted_port)]
    for item in options.publish_add:
        new_port = parsing.port_config("--publish-add", item)
        ports = [p for p in ports if not _same_port(p, new_port)] + [new_port]
    if options.publish_rm or options.publish_add:
        del spec.endpoint.ports[:]
        spec.endpoint.ports.extend(ports)
    mounts = list(container.mounts)
    for path in options.mount_rm:
        mounts = [m for m in mounts if m.target not in (path, path.rstrip("/"))]
    for item in options.mount_add:
        new_mount = parsing.mount("--mount-add", item)
        mounts = [m for m in mounts if m.target != new_mount.target] + [new_mount]
    if options.mount_rm or options.mount_add:
        del container.mounts[:]
        container.mounts.extend(mounts)
    edit_references(container, "secret", options.secret_rm, options.secret_add)
    edit_references(container, "config", options.config_rm, options.config_add)
    if options.force:
        spec.task.force_update += 1
    return spec


def check_update_options(options: ServiceUpdateOptions) -> None:
    """Parse every flag of `service update` before connecting."""
    if options.rollback and options.changes_spec():
        raise BadFlag("--rollback", "cannot be combined with other changes")
    updated_service_spec(pb.ServiceSpec(), options)


# ---------------------------------------------------------------- commands


def _multi(metavar: str, help: str) -> Any:
    return typer.Option(metavar=metavar, help=f"{help} (repeatable).")


def _list(values: list[str] | None) -> list[str]:
    return list(values or [])


@app.command("create", epilog=examples(
    "swarmctl service create web --image nginx:alpine --replicas 3 --publish 8080:80",
    "swarmctl service create worker --image busybox --limit-memory 64M -- sleep 3600",
    "swarmctl service create agent --image busybox --mode global --constraint "
    "node.labels.zone==east top",
    "swarmctl service create --timeout 5m big --image busybox --replicas 50",
    "swarmctl service create -d cache --image redis:7",
    "swarmctl service create --name web -p 8080:80 nginx:alpine   (docker's form)",
    "swarmctl service create busybox sleep 3600   (named busybox, after the image)",
))
def create(
    ctx: typer.Context,
    positionals: Annotated[list[str] | None, typer.Argument(
        metavar="NAME|IMAGE [CMD...]", show_default=False,
        help="NAME (with --image), or docker's form IMAGE (the name is --name or the "
             "image's last path component); then the command and arguments, which replace "
             "the image's CMD (put -- before them when they start with a dash).")] = None,
    name: Annotated[str | None, typer.Option(
        metavar="NAME", help="Name of the service (docker's form).")] = None,
    image: ImageOpt = None,
    replicas: ReplicasOpt = None,
    mode: Annotated[str | None, typer.Option(
        metavar="MODE", help="replicated (default) or global.")] = None,
    env: Annotated[list[str] | None, typer.Option(
        "--env", "-e", metavar="K=V", help="Environment variable (repeatable).")] = None,
    label: Annotated[list[str] | None, typer.Option(
        "--label", "-l", metavar="K=V", help="Service label (repeatable).")] = None,
    container_label: Annotated[list[str] | None, typer.Option(
        metavar="K=V", help="Container label (repeatable).")] = None,
    constraint: Annotated[list[str] | None, typer.Option(
        metavar="EXPR", help="Placement constraint, e.g. node.labels.zone==east "
                             "(repeatable).")] = None,
    placement_pref: Annotated[list[str] | None, typer.Option(
        metavar="spread=node.labels.X", help="Spread tasks over a node label "
                                             "(repeatable).")] = None,
    max_replicas_per_node: MaxReplicasPerNodeOpt = None,
    limit_cpu: LimitCpuOpt = None,
    limit_memory: LimitMemoryOpt = None,
    reserve_cpu: ReserveCpuOpt = None,
    reserve_memory: ReserveMemoryOpt = None,
    restart_condition: RestartConditionOpt = None,
    restart_delay: RestartDelayOpt = None,
    restart_max_attempts: RestartMaxAttemptsOpt = None,
    restart_window: RestartWindowOpt = None,
    update_parallelism: UpdateParallelismOpt = None,
    update_delay: UpdateDelayOpt = None,
    update_order: UpdateOrderOpt = None,
    update_failure_action: UpdateFailureActionOpt = None,
    update_monitor: UpdateMonitorOpt = None,
    update_max_failure_ratio: UpdateMaxFailureRatioOpt = None,
    rollback_parallelism: RollbackParallelismOpt = None,
    rollback_delay: RollbackDelayOpt = None,
    rollback_order: RollbackOrderOpt = None,
    rollback_failure_action: RollbackFailureActionOpt = None,
    rollback_monitor: RollbackMonitorOpt = None,
    rollback_max_failure_ratio: RollbackMaxFailureRatioOpt = None,
    publish: Annotated[list[str] | None, typer.Option(
        "--publish", "-p", metavar="PUBLISHED:TARGET[/PROTO]",
        help="Publish a port; also published=8080,target=80,protocol=tcp,mode=host "
             "(repeatable). Ingress mode (default): every node forwards PUBLISHED to a ready "
             "task (the kernel routing mesh, nftables); mode=host: only nodes running a task, "
             "which sees the client's address. proxy-protocol=v2 (ingress TCP): each "
             "connection starts with a PROXY v2 header naming the client.")] = None,
    network: Annotated[list[str] | None, typer.Option(
        metavar="NET", help="Attach to a network; also name=NET,alias=A (repeatable). host: "
                            "share the node's network namespace (no --publish).")] = None,
    endpoint_mode: EndpointModeOpt = None,
    workdir: WorkdirOpt = None,
    user: UserOpt = None,
    hostname: HostnameOpt = None,
    stop_signal: StopSignalOpt = None,
    stop_grace_period: StopGracePeriodOpt = None,
    drain_timeout: DrainTimeoutOpt = None,
    read_only: ReadOnlyOpt = None,
    init: InitOpt = None,
    health_cmd: HealthCmdOpt = None,
    health_interval: HealthIntervalOpt = None,
    health_timeout: HealthTimeoutOpt = None,
    health_retries: HealthRetriesOpt = None,
    health_start_period: HealthStartPeriodOpt = None,
    health_start_interval: HealthStartIntervalOpt = None,
    no_healthcheck: NoHealthcheckOpt = False,
    security_opt: SecurityOptOpt = None,
    log_opt: LogOptOpt = None,
    mount: Annotated[list[str] | None, typer.Option(
        metavar="type=volume,source=X,target=/Y",
        help="Mount a volume, bind or tmpfs (repeatable).")] = None,
    secret: SecretOpt = None,
    config: ConfigOpt = None,
    entrypoint: EntrypointOpt = None,
    cap_add: CapAddOpt = None,
    cap_drop: CapDropOpt = None,
    sysctl: SysctlOpt = None,
    ulimit: UlimitOpt = None,
    limit_pids: LimitPidsOpt = None,
    device: DeviceOpt = None,
    group_add: GroupAddOpt = None,
    dns: DnsOpt = None,
    dns_search: DnsSearchOpt = None,
    dns_option: DnsOptionOpt = None,
    host: HostOpt = None,
    env_file: EnvFileOpt = None,
    tty: TtyOpt = None,
    with_registry_auth: pull.WithRegistryAuthOpt = False,
    registry_auth_file: pull.RegistryAuthFileOpt = None,
    resolve_image: pull.ResolveImageOpt = "always",
    detach: DetachOpt = False,
    wait_for: WaitTimeoutOpt = progress.DEFAULT_WAIT,
) -> None:
    """Create a service; prints its ID, then waits until its tasks run (unless -d)."""
    target = create_target(_list(positionals), name, image)
    options = task_options(locals())
    options["image"] = target.image
    spec = service_spec_from_options(ServiceOptions(
        name=target.name,
        args=target.args,
        mode=mode,
        env=_list(env),
        labels=_list(label),
        container_labels=_list(container_label),
        constraints=_list(constraint),
        placement_prefs=_list(placement_pref),
        publish=_list(publish),
        networks=_list(network),
        mounts=_list(mount),
        sysctls=_list(sysctl),
        ulimits=_list(ulimit),
        devices=_list(device),
        dns=_list(dns),
        dns_search=_list(dns_search),
        dns_options=_list(dns_option),
        hosts=_list(host),
        env_files=_list(env_file),
        secrets=_list(secret),
        configs=_list(config),
        **options,
    ))
    timeout = progress.wait_timeout(wait_for)
    pulling = pull.pull_options(with_registry_auth, registry_auth_file, resolve_image,
                                insecure=pull.connection_insecure(ctx))
    credential = pull.for_create(spec, pulling, _warn)
    with client.open_controller(ctx) as ctl:
        response = ctl.call(ctl.stub.CreateService, cpb.CreateServiceRequest(
            spec=spec, registry_auth=credential))
        # The ID first, so that a script has it even when the wait then fails.
        typer.echo(response.service.id)
        if not detach:
            _wait(ctl, [progress.baseline_of(response.service)], timeout)


def _warn(line: str) -> None:
    typer.echo(line, err=True)


def _wait(ctl: client.Controller, baselines: list[progress.Baseline], timeout: float) -> None:
    # sys.stderr is looked up now, not at import: test runners swap it per invocation.
    progress.wait_until_converged(ctl, baselines, timeout=timeout, stream=sys.stderr)


def _baseline(ctl: client.Controller, ref: str, *, rollback: bool = False,
              with_tasks: bool = True) -> progress.Baseline:
    """The service and (when we are going to wait) the tasks it has before a change, so
    that only what follows the change is judged (see progress.Baseline)."""
    service = ctl.call(ctl.stub.GetService, cpb.GetRequest(ref=ref)).service
    tasks: list[pb.Task] = []
    if with_tasks:
        request = cpb.ListTasksRequest()
        request.filters.service_ids.append(service.id)
        tasks = list(ctl.call(ctl.stub.ListTasks, request).tasks)
    return progress.baseline_of(service, tasks, rollback=rollback)


_SERVICE_FILTERS = ("name", "id", "label")


@app.command("ls", epilog=examples("swarmctl service ls",
                                    "swarmctl service ls --filter label=tier=web -o json"))
def list_services(
    ctx: typer.Context,
    output: OutputOpt = render.Output.table,
    quiet: QuietOpt = False,
    filters: Annotated[list[str] | None, typer.Option(
        "--filter", "-f", metavar="KEY=VALUE",
        help="name=NAME, id=PREFIX or label=KEY[=VALUE] (repeatable).")] = None,
    format_: formatting.FormatOpt = "",
) -> None:
    """List services."""
    fmt = formatting.parse_format(format_, output, columns=render.services_rows([], [])[0])
    wanted = parsing.parse_filters("--filter", _list(filters), _SERVICE_FILTERS)
    request = cpb.ListServicesRequest()
    request.filters.names.extend(wanted.get("name", []))
    request.filters.id_prefixes.extend(wanted.get("id", []))
    for item in wanted.get("label", []):
        key, value = parsing.key_value("--filter", item, value_required=False)
        request.filters.labels[key] = value
    with client.open_controller(ctx) as ctl:
        services = list(ctl.call(ctl.stub.ListServices, request).services)
        if quiet:
            typer.echo("\n".join(s.id for s in services))
            return
        tasks: list[pb.Task] = []
        if output is render.Output.table and services:
            tasks = list(ctl.call(ctl.stub.ListTasks, cpb.ListTasksRequest()).tasks)
    if fmt is not None:
        typer.echo(formatting.listing(fmt, render.services_rows(services, tasks)))
        return
    typer.echo(render.render(output, services, lambda: render.services_table(services, tasks)))


def _get_service(ctl: client.Controller) -> Callable[[str], pb.Service]:
    return lambda ref: ctl.call(ctl.stub.GetService, cpb.GetRequest(ref=ref)).service


@app.command("inspect", epilog=examples("swarmctl service inspect web",
                                         "swarmctl service inspect -o table web"))
def inspect(
    ctx: typer.Context,
    services: Annotated[list[str], typer.Argument(metavar="SERVICE", autocompletion=completion.services,
                                                  help="Names, IDs or ID prefixes.")],
    output: InspectOutputOpt = render.Output.json,
    format_: formatting.InspectFormatOpt = "",
) -> None:
    """Show services in detail."""
    fmt = formatting.parse_format(format_, output, default_output=render.Output.json)
    with client.open_controller(ctx) as ctl:
        found, failed = for_each(services, _get_service(ctl))
    if fmt is not None:
        typer.echo(formatting.objects(fmt, found))
    elif found or output is not render.Output.table:
        typer.echo(render.inspected(output, found, render.service_details))
    fail_if(failed)


def parse_task_filters(values: Sequence[str]) -> dict[str, list[str]]:
    """`service ps --filter`: desired-state=running|shutdown|..., node=, id=."""
    wanted = parsing.parse_filters("--filter", values, ("desired-state", "node", "id"))
    for state in wanted.get("desired-state", []):
        parsing.choice("--filter", state, _DESIRED_STATES)
    return wanted


def _node_matches(node_id: str, hostname: str, wanted: Sequence[str]) -> bool:
    return any(node_id.startswith(item) or hostname == item for item in wanted)


@app.command("ps", epilog=examples("swarmctl service ps web",
                                    "swarmctl service ps web --filter desired-state=running"))
def ps(
    ctx: typer.Context,
    services: Annotated[list[str], typer.Argument(metavar="SERVICE", autocompletion=completion.services)],
    filters: Annotated[list[str] | None, typer.Option(
        "--filter", "-f", metavar="KEY=VALUE",
        help="desired-state=running|shutdown|..., node=NODE or id=PREFIX (repeatable).")
                       ] = None,
    no_trunc: Annotated[bool, typer.Option("--no-trunc", help="Do not truncate IDs and images.")
                        ] = False,
    quiet: QuietOpt = False,
    output: OutputOpt = render.Output.table,
    format_: formatting.FormatOpt = "",
) -> None:
    """List the tasks of services, with the reason a pending task is waiting."""
    fmt = formatting.parse_format(format_, output,
                                  columns=render.tasks_rows([], {}, render.now_utc())[0])
    wanted = parse_task_filters(_list(filters))
    with client.open_controller(ctx) as ctl:
        found, failed = for_each(services, _get_service(ctl))
        tasks: list[pb.Task] = []
        hostnames: dict[str, str] = {}
        if found:
            request = cpb.ListTasksRequest()
            request.filters.service_ids.extend(s.id for s in found)
            request.filters.desired_states.extend(
                _DESIRED_STATES[s.strip().lower()] for s in wanted.get("desired-state", []))
            request.filters.id_prefixes.extend(wanted.get("id", []))
            tasks = list(ctl.call(ctl.stub.ListTasks, request).tasks)
            if tasks and (output is render.Output.table or "node" in wanted or fmt):
                nodes = ctl.call(ctl.stub.ListNodes, cpb.ListNodesRequest()).nodes
                hostnames = {n.id: n.description.hostname for n in nodes}
    if "node" in wanted:
        tasks = [t for t in tasks
                 if _node_matches(t.node_id, hostnames.get(t.node_id, ""), wanted["node"])]
    if quiet:
        typer.echo("\n".join(t.id for t in tasks))
    elif fmt is not None:
        typer.echo(formatting.listing(fmt, render.tasks_rows(tasks, hostnames, render.now_utc(),
                                                             no_trunc=no_trunc)))
    elif found or output is not render.Output.table:
        typer.echo(render.render(output, tasks, lambda: render.tasks_table(
            tasks, hostnames, render.now_utc(), no_trunc=no_trunc)))
    for service in found:  # the tasks shown may not be all there should be: say why
        if line := render.write_error_line(service):
            typer.echo(line, err=True)
    fail_if(failed)


@app.command("scale", epilog=examples("swarmctl service scale web=5",
                                       "swarmctl service scale web=3 worker=0",
                                       "swarmctl service scale -d web=10"))
def scale(
    ctx: typer.Context,
    pairs: Annotated[list[str], typer.Argument(metavar="SERVICE=REPLICAS",
                                                autocompletion=completion.service_scales)],
    detach: DetachOpt = False,
    wait_for: WaitTimeoutOpt = progress.DEFAULT_WAIT,
) -> None:
    """Set the number of tasks of replicated services, then wait for them (unless -d)."""
    wanted = [parsing.scale_argument(pair) for pair in pairs]
    replicas = dict(wanted)
    timeout = progress.wait_timeout(wait_for)

    with client.open_controller(ctx) as ctl:

        def scale_one(ref: str) -> progress.Baseline:
            baseline = _baseline(ctl, ref, with_tasks=not detach)
            ctl.call(ctl.stub.ScaleService,
                     cpb.ScaleServiceRequest(ref=baseline.service_id, replicas=replicas[ref]))
            typer.echo(f"{ref} scaled to {replicas[ref]}")
            return baseline

        scaled, failed = for_each(list(replicas), scale_one)
        if scaled and not detach:
            try:
                _wait(ctl, scaled, timeout)
            except NotConverged as error:
                # Some refs were refused as well: show this line too, then exit 1 for
                # the refusals (the more basic failure) below.
                if not failed:
                    raise
                error.show()
    fail_if(failed)


@app.command("update", epilog=examples(
    "swarmctl service update web --image nginx:1.27",
    "swarmctl service update web --env-add MODE=prod --limit-memory 256M",
    "swarmctl service update web --force",
    "swarmctl service update web --rollback",
    "swarmctl service update -d web --replicas 10",
))
def update(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(metavar="SERVICE", autocompletion=completion.services)],
    image: ImageOpt = None,
    replicas: ReplicasOpt = None,
    args: Annotated[str | None, typer.Option(metavar="'CMD ARGS'",
                                             help="New command and arguments.")] = None,
    env_add: Annotated[list[str] | None, _multi(
        "K=V", "Set an environment variable")] = None,
    env_rm: Annotated[list[str] | None, _multi(
        "K", "Remove an environment variable")] = None,
    label_add: Annotated[list[str] | None, _multi(
        "K=V", "Set a service label")] = None,
    label_rm: Annotated[list[str] | None, _multi(
        "K", "Remove a service label")] = None,
    container_label_add: Annotated[list[str] | None, _multi(
        "K=V", "Set a container label")] = None,
    container_label_rm: Annotated[list[str] | None, _multi(
        "K", "Remove a container label")] = None,
    constraint_add: Annotated[list[str] | None, _multi(
        "EXPR", "Add a placement constraint")] = None,
    constraint_rm: Annotated[list[str] | None, _multi(
        "EXPR", "Remove a placement constraint")] = None,
    placement_pref_add: Annotated[list[str] | None, _multi(
        "spread=node.labels.X", "Add a placement preference")] = None,
    placement_pref_rm: Annotated[list[str] | None, _multi(
        "spread=node.labels.X", "Remove a placement preference")] = None,
    max_replicas_per_node: MaxReplicasPerNodeOpt = None,
    limit_cpu: LimitCpuOpt = None,
    limit_memory: LimitMemoryOpt = None,
    reserve_cpu: ReserveCpuOpt = None,
    reserve_memory: ReserveMemoryOpt = None,
    restart_condition: RestartConditionOpt = None,
    restart_delay: RestartDelayOpt = None,
    restart_max_attempts: RestartMaxAttemptsOpt = None,
    restart_window: RestartWindowOpt = None,
    update_parallelism: UpdateParallelismOpt = None,
    update_delay: UpdateDelayOpt = None,
    update_order: UpdateOrderOpt = None,
    update_failure_action: UpdateFailureActionOpt = None,
    update_monitor: UpdateMonitorOpt = None,
    update_max_failure_ratio: UpdateMaxFailureRatioOpt = None,
    rollback_parallelism: RollbackParallelismOpt = None,
    rollback_delay: RollbackDelayOpt = None,
    rollback_order: RollbackOrderOpt = None,
    rollback_failure_action: RollbackFailureActionOpt = None,
    rollback_monitor: RollbackMonitorOpt = None,
    rollback_max_failure_ratio: RollbackMaxFailureRatioOpt = None,
    publish_add: Annotated[list[str] | None, _multi(
        "PUBLISHED:TARGET[/PROTO]", "Publish a port")] = None,
    publish_rm: Annotated[list[str] | None, typer.Option(
        metavar="PORT", help="Remove a published port: TARGET[/PROTO] or PUBLISHED:TARGET.")
                          ] = None,
    mount_add: Annotated[list[str] | None, _multi(
        "type=volume,source=X,target=/Y", "Add or replace a mount")] = None,
    mount_rm: Annotated[list[str] | None, typer.Option(
        metavar="TARGET", help="Remove the mount at this container path.")] = None,
    secret_add: SecretAddOpt = None,
    secret_rm: SecretRmOpt = None,
    config_add: ConfigAddOpt = None,
    config_rm: ConfigRmOpt = None,
    endpoint_mode: EndpointModeOpt = None,
    workdir: WorkdirOpt = None,
    user: UserOpt = None,
    hostname: HostnameOpt = None,
    stop_signal: StopSignalOpt = None,
    stop_grace_period: StopGracePeriodOpt = None,
    drain_timeout: DrainTimeoutOpt = None,
    read_only: ReadOnlyOpt = None,
    init: InitOpt = None,
    entrypoint: EntrypointOpt = None,
    health_cmd: HealthCmdOpt = None,
    health_interval: HealthIntervalOpt = None,
    health_timeout: HealthTimeoutOpt = None,
    health_retries: HealthRetriesOpt = None,
    health_start_period: HealthStartPeriodOpt = None,
    health_start_interval: HealthStartIntervalOpt = None,
    no_healthcheck: NoHealthcheckOpt = False,
    cap_add: CapAddOpt = None,
    cap_drop: CapDropOpt = None,
    sysctl_add: SysctlAddOpt = None,
    sysctl_rm: SysctlRmOpt = None,
    ulimit_add: UlimitAddOpt = None,
    ulimit_rm: UlimitRmOpt = None,
    limit_pids: LimitPidsOpt = None,
    device_add: DeviceAddOpt = None,
    device_rm: DeviceRmOpt = None,
    group_add: GroupAddOpt = None,
    group_rm: GroupRmOpt = None,
    dns_add: DnsAddOpt = None,
    dns_rm: DnsRmOpt = None,
    dns_search_add: DnsSearchAddOpt = None,
    dns_search_rm: DnsSearchRmOpt = None,
    dns_option_add: DnsOptionAddOpt = None,
    dns_option_rm: DnsOptionRmOpt = None,
    host_add: HostAddOpt = None,
    host_rm: HostRmOpt = None,
    tty: TtyOpt = None,
    security_opt: SecurityOptOpt = None,
    log_opt: LogOptOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace every task even if "
                                                        "nothing changed.")] = False,
    rollback: Annotated[bool, typer.Option("--rollback", help="Go back to the previous spec.")
                        ] = False,
    with_registry_auth: pull.WithRegistryAuthOpt = False,
    registry_auth_file: pull.RegistryAuthFileOpt = None,
    resolve_image: pull.ResolveImageOpt = "always",
    detach: DetachOpt = False,
    wait_for: WaitTimeoutOpt = progress.DEFAULT_WAIT,
) -> None:
    """Change a service: read it, apply the flags, write it back,
    then wait until its tasks run the new spec (unless -d)."""
    options = ServiceUpdateOptions(
        args=args,
        env_add=_list(env_add),
        env_rm=_list(env_rm),
        label_add=_list(label_add),
        label_rm=_list(label_rm),
        container_label_add=_list(container_label_add),
        container_label_rm=_list(container_label_rm),
        constraint_add=_list(constraint_add),
        constraint_rm=_list(constraint_rm),
        placement_pref_add=_list(placement_pref_add),
        placement_pref_rm=_list(placement_pref_rm),
        publish_add=_list(publish_add),
        publish_rm=_list(publish_rm),
        mount_add=_list(mount_add),
        mount_rm=_list(mount_rm),
        group_rm=_list(group_rm),
        sysctl_add=_list(sysctl_add),
        sysctl_rm=_list(sysctl_rm),
        ulimit_add=_list(ulimit_add),
        ulimit_rm=_list(ulimit_rm),
        device_add=_list(device_add),
        device_rm=_list(device_rm),
        dns_add=_list(dns_add),
        dns_rm=_list(dns_rm),
        dns_search_add=_list(dns_search_add),
        dns_search_rm=_list(dns_search_rm),
        dns_option_add=_list(dns_option_add),
        dns_option_rm=_list(dns_option_rm),
        host_add=_list(host_add),
        host_rm=_list(host_rm),
        secret_add=_list(secret_add),
        secret_rm=_list(secret_rm),
        config_add=_list(config_add),
        config_rm=_list(config_rm),
        force=force,
        rollback=rollback,
        **task_options(locals()),
    )
    check_update_options(options)
    pulling = pull.pull_options(with_registry_auth, registry_auth_file, resolve_image,
                                insecure=pull.connection_insecure(ctx))
    _update_and_wait(ctx, service, options, detach=detach, wait_for=wait_for, pulling=pulling)


def _update_and_wait(ctx: typer.Context, ref: str, options: ServiceUpdateOptions, *,
                     detach: bool, wait_for: str,
                     pulling: pull.PullOptions | None = None) -> None:
    """update_service, print the service's name, then wait until its tasks run
    the new spec (unless detach)."""
    timeout = progress.wait_timeout(wait_for)
    with client.open_controller(ctx) as ctl:
        baseline = _baseline(ctl, ref, rollback=options.rollback, with_tasks=not detach)
        updated = update_service(ctl, baseline.service_id, options, pulling)
        typer.echo(updated.spec.name)
        if not detach:
            _wait(ctl, [baseline], timeout)


def update_service(ctl: client.Controller, ref: str, options: ServiceUpdateOptions,
                   pulling: pull.PullOptions | None = None) -> pb.Service:
    """GetService, apply the options to a copy of the spec (its image pinned as
    pulling says), UpdateService at the version read: the controller retries
    over status changes meanwhile, and refuses (ABORTED) only when the spec
    changed since."""
    current = ctl.call(ctl.stub.GetService, cpb.GetRequest(ref=ref)).service
    request = cpb.UpdateServiceRequest(service_id=current.id, version=current.meta.version)
    if options.rollback:
        request.rollback = True
    else:
        request.spec.CopyFrom(updated_service_spec(current.spec, options))
    credential = None
    if pulling is not None and options.rollback:
        credential = pull.credential_to_send(current.previous_spec.task.container.image,
                                             pulling, _warn)
    elif pulling is not None:
        credential = pull.for_update(current.spec, request.spec, options.image,
                                     force=options.force, options=pulling, warn=_warn)
    if credential is not None:
        request.registry_auth.CopyFrom(credential)
    return ctl.call(ctl.stub.UpdateService, request).service


@app.command("rollback", epilog=examples("swarmctl service rollback web",
                                          "swarmctl service rollback -d web"))
def rollback(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(metavar="SERVICE", autocompletion=completion.services)],
    detach: DetachOpt = False,
    wait_for: WaitTimeoutOpt = progress.DEFAULT_WAIT,
) -> None:
    """Go back to the service's previous spec (as `service update --rollback`), then
    wait until its tasks run it (unless -d), with the rollback config."""
    _update_and_wait(ctx, service, ServiceUpdateOptions(rollback=True), detach=detach,
                     wait_for=wait_for)


@app.command("rebalance", epilog=examples(
    "swarmctl service rebalance web --dry-run",
    "swarmctl service rebalance web",
    "swarmctl service rebalance -d web",
))
def rebalance(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(metavar="SERVICE", autocompletion=completion.services)],
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print which slots would move where and why; change nothing.")
                       ] = False,
    detach: DetachOpt = False,
    wait_for: WaitTimeoutOpt = progress.DEFAULT_WAIT,
) -> None:
    """Spread a replicated service's tasks over its eligible nodes again (after nodes
    joined or came back), moving as few as possible, as a rolling update with the
    service's update config (parallelism, delay, order, failure action); then wait
    until the moved tasks run (unless -d)."""
    timeout = progress.wait_timeout(wait_for)
    with client.open_controller(ctx) as ctl:
        baseline = _baseline(ctl, service, with_tasks=not (detach or dry_run))
        response = ctl.call(ctl.stub.RebalanceService, cpb.RebalanceServiceRequest(
            ref=baseline.service_id, dry_run=dry_run))
        name = response.service.spec.name
        if not response.moves:
            typer.echo(f"{name}: {response.message}")
            return
        nodes = ctl.call(ctl.stub.ListNodes, cpb.ListNodesRequest()).nodes
        hostnames = {node.id: node.description.hostname or node.id for node in nodes}
        for line in rebalance_lines(name, response.moves, hostnames):
            typer.echo(line)
        if dry_run:
            count = len(response.moves)
            typer.echo(f"dry run: {count} slot{'s' if count != 1 else ''} would move "
                       f"({response.message.removeprefix('dry run: ')}); nothing was changed")
            return
        if not detach:
            _wait(ctl, [baseline], timeout)


def rebalance_lines(name: str, moves: Sequence[cpb.RebalanceMove],
                    hostnames: dict[str, str]) -> list[str]:
    """'web.3: h1 -> h3 (node h1 has 3 tasks of web, h3 has 0)', a line per slot."""
    return [f"{name}.{move.slot}: {hostnames.get(move.from_node, move.from_node)} -> "
            f"{hostnames.get(move.to_node, move.to_node)} ({move.reason})" for move in moves]


@app.command("rm", epilog=examples("swarmctl service rm web", "swarmctl service rm web worker"))
def remove(
    ctx: typer.Context,
    services: Annotated[list[str], typer.Argument(metavar="SERVICE", autocompletion=completion.services)],
) -> None:
    """Remove services (their tasks are shut down)."""
    with client.open_controller(ctx) as ctl:

        def remove_one(ref: str) -> None:
            ctl.call(ctl.stub.RemoveService, cpb.RemoveRequest(ref=ref))
            typer.echo(ref)

        _, failed = for_each(services, remove_one)
    fail_if(failed)


LOGS_HELP = """Show the output of a service's tasks.

Each line is prefixed with its task and node, as `docker service logs` does
(web.1.<task id>@node-a | ...); lines the containers wrote to stderr go to
stderr. Without --follow, the command ends once every node holding the
service's logs has sent them; a node that is down or does not answer in time
is named in a warning on stderr, and its lines are missing.

The logs live on the nodes, in the files the container monitor (conmon)
writes, rotated at the service's --log-opt max-size (default 10m) with
max-file files kept (default 3): the oldest lines of a chatty task are gone,
and the command reads across the files kept (--follow follows a rotation).
They go away with the container: logs of tasks removed from the task
history, of scaled-down tasks and of removed services are gone, as with
docker."""


@app.command("logs", help=LOGS_HELP, epilog=examples(
    "swarmctl service logs web",
    "swarmctl service logs -f --tail 10 web",
    "swarmctl service logs --since 10m --timestamps web",
    "swarmctl service logs --raw web > web.log"))
def service_logs(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(metavar="SERVICE", autocompletion=completion.services,
                                           help="Name, ID or ID prefix.")],
    follow: Annotated[bool, typer.Option("--follow", "-f",
                                         help="Keep printing new lines until interrupted.")
                      ] = False,
    tail: Annotated[str, typer.Option("--tail", "-n", metavar="N",
                                      help="Only the last N lines of each task, or 'all'.")
                    ] = "all",
    since: Annotated[str | None, typer.Option(
        metavar="TIME", show_default=False,
        help="Only lines written since TIME: RFC 3339 (2026-11-29T03:00:00Z), a Unix "
             "time, or a duration before now (10m, 1h30m).")] = None,
    timestamps: Annotated[bool, typer.Option("--timestamps", "-t",
                                             help="Print each line's time (RFC 3339, UTC).")
                          ] = False,
    no_task_ids: Annotated[bool, typer.Option("--no-task-ids",
                                              help="Leave task IDs out of the prefix.")] = False,
    no_trunc: Annotated[bool, typer.Option("--no-trunc", help="Do not truncate IDs.")] = False,
    raw: Annotated[bool, typer.Option("--raw", help="Print the lines alone, without the "
                                                    "task and node prefix.")] = False,
) -> None:
    options = lpb.LogOptions(follow=follow)
    lines = logs.parse_tail("--tail", tail)
    if lines is not None:
        options.tail = lines
    if since is not None:
        options.since.FromNanoseconds(logs.parse_since("--since", since, time.time_ns()))
    fmt = logs.Format(timestamps=timestamps, task_ids=not no_task_ids, no_trunc=no_trunc,
                      raw=raw)
    with client.open_controller(ctx) as ctl:
        # sys.stdout and sys.stderr are looked up now: test runners swap them per invocation.
        logs.stream_logs(ctl, service, options, fmt, logs.binary(sys.stdout),
                         logs.binary(sys.stderr), lambda text: typer.echo(text, err=True))
