"""`swarmctl service create`: read the positionals in both forms (NAME --image
IMAGE, or docker's [--name NAME] IMAGE [CMD...]), build the spec from every flag
before connecting (spec.service_spec_from_options), pin the image as --resolve-image
says (cli/pull.py), CreateService, print the ID, then wait until the tasks run
(unless -d). The shared flags are declared in flags.py; only create's own
whole-list flags (--env, --mount, --network, ...) are declared here."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated

import typer

from swarm.api.schedule import parse_schedule
from swarm.api.v1 import control_pb2 as cpb

from .. import client, progress, pull
from ..options import DetachOpt, WaitTimeoutOpt, examples
from .flags import (
    CapAddOpt,
    CapDropOpt,
    ConfigOpt,
    DeviceOpt,
    DnsOpt,
    DnsOptionOpt,
    DnsSearchOpt,
    DrainTimeoutOpt,
    EndpointModeOpt,
    EntrypointOpt,
    EnvFileOpt,
    GroupAddOpt,
    HealthCmdOpt,
    HealthIntervalOpt,
    HealthRetriesOpt,
    HealthStartIntervalOpt,
    HealthStartPeriodOpt,
    HealthTimeoutOpt,
    HostnameOpt,
    HostOpt,
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
    SecretOpt,
    SecurityOptOpt,
    StopGracePeriodOpt,
    StopSignalOpt,
    SysctlOpt,
    TtyOpt,
    UlimitOpt,
    UpdateDelayOpt,
    UpdateFailureActionOpt,
    UpdateMaxFailureRatioOpt,
    UpdateMonitorOpt,
    UpdateOrderOpt,
    UpdateParallelismOpt,
    UserOpt,
    WorkdirOpt,
    as_list,
)
from .options import ServiceOptions, task_options
from .spec import create_target, service_spec_from_options
from .wait import wait_converged, warn

CREATE_EXAMPLES = examples(
    "swarmctl service create web --image nginx:alpine --replicas 3 --publish 8080:80",
    "swarmctl service create worker --image busybox --limit-memory 64M -- sleep 3600",
    "swarmctl service create agent --image busybox --mode global --constraint "
    "node.labels.zone==east top",
    "swarmctl service create --timeout 5m big --image busybox --replicas 50",
    "swarmctl service create -d cache --image redis:7",
    "swarmctl service create batch --image busybox --mode replicated-job --replicas 6 "
    "--max-concurrent 2 -- sh -c 'work'",
    "swarmctl service create nightly --image busybox --mode global-job --schedule "
    "'0 3 * * *' -- cleanup",
    "swarmctl service create --name web -p 8080:80 nginx:alpine   (docker's form)",
    "swarmctl service create busybox sleep 3600   (named busybox, after the image)",
)


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
        metavar="MODE", help="replicated (default), global, replicated-job or global-job "
                             "(tasks that run to completion).")] = None,
    max_concurrent: MaxConcurrentOpt = None,
    schedule: ScheduleOpt = None,
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
    generic_resource: Annotated[list[str] | None, typer.Option(
        metavar="KIND=COUNT", help="Reserve a generic resource of the nodes for each task, "
                                   "e.g. gpu=1 (repeatable).")] = None,
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
    target = create_target(as_list(positionals), name, image)
    options = task_options(locals())
    options["image"] = target.image
    spec = service_spec_from_options(ServiceOptions(
        name=target.name,
        args=target.args,
        mode=mode,
        env=as_list(env),
        labels=as_list(label),
        container_labels=as_list(container_label),
        constraints=as_list(constraint),
        placement_prefs=as_list(placement_pref),
        generic_resources=as_list(generic_resource),
        publish=as_list(publish),
        networks=as_list(network),
        mounts=as_list(mount),
        sysctls=as_list(sysctl),
        ulimits=as_list(ulimit),
        devices=as_list(device),
        dns=as_list(dns),
        dns_search=as_list(dns_search),
        dns_options=as_list(dns_option),
        hosts=as_list(host),
        env_files=as_list(env_file),
        secrets=as_list(secret),
        configs=as_list(config),
        **options,
    ))
    timeout = progress.wait_timeout(wait_for)
    pulling = pull.pull_options(with_registry_auth, registry_auth_file, resolve_image,
                                insecure=pull.connection_insecure(ctx))
    credential = pull.for_create(spec, pulling, warn)
    with client.open_controller(ctx) as ctl:
        response = ctl.call(ctl.stub.CreateService, cpb.CreateServiceRequest(
            spec=spec, registry_auth=credential))
        # The ID first, so that a script has it even when the wait then fails.
        typer.echo(response.service.id)
        if spec.schedule:
            # Nothing to wait for: its first run is at the first fire time.
            first = parse_schedule(spec.schedule).next_fire(time.time())
            warn(f"{spec.name}: runs on the schedule {spec.schedule!r} (UTC); the first run "
                 f"at {datetime.fromtimestamp(first, UTC):%Y-%m-%d %H:%M:%S}Z")
        elif not detach:
            wait_converged(ctl, [progress.baseline_of(response.service, created=True)],
                           timeout)

