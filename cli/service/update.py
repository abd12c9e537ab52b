"""`swarmctl service update` and `service rollback`: parse every flag before
connecting (spec.check_update_options), read the service, apply the flags to a
copy of its spec (spec.updated_service_spec), UpdateService at the version
read, print the name, then wait until the tasks run the new spec (unless -d).
The shared flags are declared in flags.py; update's own --X-add/--X-rm pairs
here. Rollback is an update with only --rollback: the controller swaps in the
previous spec and rolls out with the rollback config."""

from __future__ import annotations

from typing import Annotated

import typer

from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb

from .. import client, completion, progress, pull
from ..options import DetachOpt, WaitTimeoutOpt, examples
from .flags import (
    CapAddOpt,
    CapDropOpt,
    ConfigAddOpt,
    ConfigRmOpt,
    DeviceAddOpt,
    DeviceRmOpt,
    DnsAddOpt,
    DnsOptionAddOpt,
    DnsOptionRmOpt,
    DnsRmOpt,
    DnsSearchAddOpt,
    DnsSearchRmOpt,
    DrainTimeoutOpt,
    EndpointModeOpt,
    EntrypointOpt,
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
    HostRmOpt,
    ImageOpt,
    InitOpt,
    LimitCpuOpt,
    LimitMemoryOpt,
    LimitPidsOpt,
    LogOptOpt,
    MaxConcurrentOpt,
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
    ScheduleOpt,
    SecretAddOpt,
    SecretRmOpt,
    SecurityOptOpt,
    StopGracePeriodOpt,
    StopSignalOpt,
    SysctlAddOpt,
    SysctlRmOpt,
    TtyOpt,
    UlimitAddOpt,
    UlimitRmOpt,
    UpdateDelayOpt,
    UpdateFailureActionOpt,
    UpdateMaxFailureRatioOpt,
    UpdateMonitorOpt,
    UpdateOrderOpt,
    UpdateParallelismOpt,
    UserOpt,
    WorkdirOpt,
    as_list,
    multi,
)
from .options import ServiceUpdateOptions, task_options
from .spec import check_update_options, updated_service_spec
from .wait import read_baseline, wait_converged, warn

UPDATE_EXAMPLES = examples(
    "swarmctl service update web --image nginx:1.27",
    "swarmctl service update web --env-add MODE=prod --limit-memory 256M",
    "swarmctl service update web --force   (a job: run it again)",
    "swarmctl service update web --rollback",
    "swarmctl service update -d web --replicas 10",
)


def update(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(metavar="SERVICE", autocompletion=completion.services)],
    image: ImageOpt = None,
    replicas: ReplicasOpt = None,
    max_concurrent: MaxConcurrentOpt = None,
    schedule: ScheduleOpt = None,
    args: Annotated[str | None, typer.Option(metavar="'CMD ARGS'",
                                             help="New command and arguments.")] = None,
    env_add: Annotated[list[str] | None, multi(
        "K=V", "Set an environment variable")] = None,
    env_rm: Annotated[list[str] | None, multi(
        "K", "Remove an environment variable")] = None,
    label_add: Annotated[list[str] | None, multi(
        "K=V", "Set a service label")] = None,
    label_rm: Annotated[list[str] | None, multi(
        "K", "Remove a service label")] = None,
    container_label_add: Annotated[list[str] | None, multi(
        "K=V", "Set a container label")] = None,
    container_label_rm: Annotated[list[str] | None, multi(
        "K", "Remove a container label")] = None,
    constraint_add: Annotated[list[str] | None, multi(
        "EXPR", "Add a placement constraint")] = None,
    constraint_rm: Annotated[list[str] | None, multi(
        "EXPR", "Remove a placement constraint")] = None,
    placement_pref_add: Annotated[list[str] | None, multi(
        "spread=node.labels.X", "Add a placement preference")] = None,
    placement_pref_rm: Annotated[list[str] | None, multi(
        "spread=node.labels.X", "Remove a placement preference")] = None,
    max_replicas_per_node: MaxReplicasPerNodeOpt = None,
    generic_resource_add: Annotated[list[str] | None, multi(
        "KIND=COUNT", "Reserve a generic resource for each task, e.g. gpu=1")] = None,
    generic_resource_rm: Annotated[list[str] | None, multi(
        "KIND", "Reserve none of a generic resource any more")] = None,
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
    publish_add: Annotated[list[str] | None, multi(
        "PUBLISHED:TARGET[/PROTO]", "Publish a port")] = None,
    publish_rm: Annotated[list[str] | None, typer.Option(
        metavar="PORT", help="Remove a published port: TARGET[/PROTO] or PUBLISHED:TARGET.")
                          ] = None,
    mount_add: Annotated[list[str] | None, multi(
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
        env_add=as_list(env_add),
        env_rm=as_list(env_rm),
        label_add=as_list(label_add),
        label_rm=as_list(label_rm),
        container_label_add=as_list(container_label_add),
        container_label_rm=as_list(container_label_rm),
        constraint_add=as_list(constraint_add),
        constraint_rm=as_list(constraint_rm),
        generic_resource_add=as_list(generic_resource_add),
        generic_resource_rm=as_list(generic_resource_rm),
        placement_pref_add=as_list(placement_pref_add),
        placement_pref_rm=as_list(placement_pref_rm),
        publish_add=as_list(publish_add),
        publish_rm=as_list(publish_rm),
        mount_add=as_list(mount_add),
        mount_rm=as_list(mount_rm),
        group_rm=as_list(group_rm),
        sysctl_add=as_list(sysctl_add),
        sysctl_rm=as_list(sysctl_rm),
        ulimit_add=as_list(ulimit_add),
        ulimit_rm=as_list(ulimit_rm),
        device_add=as_list(device_add),
        device_rm=as_list(device_rm),
        dns_add=as_list(dns_add),
        dns_rm=as_list(dns_rm),
        dns_search_add=as_list(dns_search_add),
        dns_search_rm=as_list(dns_search_rm),
        dns_option_add=as_list(dns_option_add),
        dns_option_rm=as_list(dns_option_rm),
        host_add=as_list(host_add),
        host_rm=as_list(host_rm),
        secret_add=as_list(secret_add),
        secret_rm=as_list(secret_rm),
        config_add=as_list(config_add),
        config_rm=as_list(config_rm),
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
        baseline = read_baseline(ctl, ref, rollback=options.rollback, with_tasks=not detach)
        updated = update_service(ctl, baseline.service_id, options, pulling)
        typer.echo(updated.spec.name)
        if not detach:
            wait_converged(ctl, [baseline], timeout)


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
                                             pulling, warn)
    elif pulling is not None:
        credential = pull.for_update(current.spec, request.spec, options.image,
                                     force=options.force, options=pulling, warn=warn)
    if credential is not None:
        request.registry_auth.CopyFrom(credential)
    return ctl.call(ctl.stub.UpdateService, request).service


ROLLBACK_EXAMPLES = examples("swarmctl service rollback web",
                             "swarmctl service rollback -d web")


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
