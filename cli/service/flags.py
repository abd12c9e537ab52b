"""The flags `service create` and `service update` share, declared once (as
SwarmKit's swarmctl declares them in its flagparser): one Annotated type per
flag, named after the TaskOptions field it fills (cli/service/options.py). A
flag added here and to TaskOptions is on both commands; the spec it fills is
applied once too, in cli/service/task_spec.py."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.models import OptionInfo

ImageOpt = Annotated[
    str | None,
    typer.Option(metavar="IMAGE", help="Image to run (or create's first argument).", show_default=False),
]
ReplicasOpt = Annotated[str | None, typer.Option(
    metavar="N", help="Number of tasks (default 1); for a replicated job, the completions.")]
MaxConcurrentOpt = Annotated[str | None, typer.Option(
    metavar="N", help="Replicated jobs: at most N tasks at once (default: --replicas, the "
                      "completions).")]
ScheduleOpt = Annotated[str | None, typer.Option(
    metavar="CRON", help="Jobs: run on a schedule, 5 cron fields in UTC ('0 3 * * *'), "
                         "@hourly/@daily/..., or '@every 30s'. A run due while the last "
                         "is still going is skipped.")]
MaxReplicasPerNodeOpt = Annotated[
    str | None, typer.Option(metavar="N", help="At most N tasks of this service per node.")
]
LimitCpuOpt = Annotated[str | None, typer.Option(metavar="CPUS", help="CPU limit, e.g. 0.5.")]
LimitMemoryOpt = Annotated[str | None, typer.Option(metavar="SIZE", help="Memory limit, e.g. 512M.")]
ReserveCpuOpt = Annotated[str | None, typer.Option(metavar="CPUS", help="CPUs to reserve.")]
ReserveMemoryOpt = Annotated[str | None, typer.Option(metavar="SIZE", help="Memory to reserve.")]
RestartConditionOpt = Annotated[
    str | None, typer.Option(metavar="COND", help="Restart when: any (default), on-failure or none.")
]
RestartDelayOpt = Annotated[
    str | None, typer.Option(metavar="DURATION", help="Delay between restarts (default 5s).")
]
RestartMaxAttemptsOpt = Annotated[
    str | None, typer.Option(metavar="N", help="Give up after N restarts (0: never).")
]
RestartWindowOpt = Annotated[
    str | None, typer.Option(metavar="DURATION", help="Window in which restarts are counted.")
]
UpdateParallelismOpt = Annotated[
    str | None, typer.Option(metavar="N", help="Tasks updated at once (default 1; 0: all).")
]
UpdateDelayOpt = Annotated[str | None, typer.Option(metavar="DURATION", help="Delay between update batches.")]
UpdateOrderOpt = Annotated[
    str | None, typer.Option(metavar="ORDER", help="stop-first (default) or start-first.")
]
UpdateFailureActionOpt = Annotated[
    str | None, typer.Option(metavar="ACTION", help="pause (default), continue or rollback.")
]
UpdateMonitorOpt = Annotated[
    str | None, typer.Option(metavar="DURATION", help="How long to watch each updated task (default 5s).")
]
UpdateMaxFailureRatioOpt = Annotated[
    str | None, typer.Option(metavar="RATIO", help="Failure rate tolerated during an update.")
]
RollbackParallelismOpt = Annotated[
    str | None, typer.Option(metavar="N", help="The --update-* settings for rollbacks (default 1).")
]
RollbackDelayOpt = Annotated[str | None, typer.Option(metavar="DURATION")]
RollbackOrderOpt = Annotated[str | None, typer.Option(metavar="ORDER")]
RollbackFailureActionOpt = Annotated[
    str | None, typer.Option(metavar="ACTION", help="pause (default) or continue.")
]
RollbackMonitorOpt = Annotated[str | None, typer.Option(metavar="DURATION")]
RollbackMaxFailureRatioOpt = Annotated[str | None, typer.Option(metavar="RATIO")]
WorkdirOpt = Annotated[str | None, typer.Option("--workdir", "-w", metavar="DIR", help="Working directory.")]
UserOpt = Annotated[str | None, typer.Option("--user", "-u", metavar="USER[:GROUP]", help="User to run as.")]
HostnameOpt = Annotated[str | None, typer.Option(metavar="NAME", help="Container hostname.")]
StopSignalOpt = Annotated[str | None, typer.Option(metavar="SIGNAL", help="Signal that stops a task.")]
StopGracePeriodOpt = Annotated[
    str | None, typer.Option(metavar="DURATION", help="Wait before killing a task (default 10s).")
]
DrainTimeoutOpt = Annotated[
    str | None,
    typer.Option(
        metavar="DURATION",
        help="Longest a stopping task waits for every node to stop "
        "sending it connections before its stop signal (default 2s; 0s: no wait).",
    ),
]
ReadOnlyOpt = Annotated[
    bool | None,
    typer.Option("--read-only/--no-read-only", show_default=False, help="Read-only root filesystem."),
]
InitOpt = Annotated[
    bool | None,
    typer.Option("--init/--no-init", show_default=False, help="Run an init inside the container."),
]
EntrypointOpt = Annotated[str | None, typer.Option(metavar="CMD", help="Replace the image's entrypoint.")]
HealthCmdOpt = Annotated[
    str | None, typer.Option(metavar="CMD", help="Health check command, run by a shell.")
]
HealthIntervalOpt = Annotated[
    str | None, typer.Option(metavar="DURATION", help="Time between health checks.")
]
HealthTimeoutOpt = Annotated[
    str | None, typer.Option(metavar="DURATION", help="Time a health check may take.")
]
HealthRetriesOpt = Annotated[
    str | None, typer.Option(metavar="N", help="Failures in a row that make a task unhealthy.")
]
HealthStartPeriodOpt = Annotated[
    str | None, typer.Option(metavar="DURATION", help="Grace period before failures count.")
]
HealthStartIntervalOpt = Annotated[
    str | None,
    typer.Option(
        metavar="DURATION",
        help="Time between checks during the start period, until one succeeds (default 5s).",
    ),
]
NoHealthcheckOpt = Annotated[bool, typer.Option("--no-healthcheck", help="Disable the image's health check.")]
EndpointModeOpt = Annotated[str | None, typer.Option(metavar="MODE", help="vip (default) or dnsrr.")]

# ---------------------------------------------------------------- runtime options
# (issue 13). As docker's flags: `service create` takes the plain forms, `service
# update` the -add/-rm forms where docker has them; --cap-add/--cap-drop,
# --group-add, --limit-pids, --tty and --stop-signal are the same on both.


def _repeatable(metavar: str, help: str) -> OptionInfo:
    option: OptionInfo = typer.Option(metavar=metavar, help=f"{help} (repeatable).",
                                      show_default=False)
    return option


CapAddOpt = Annotated[list[str] | None, _repeatable(
    "CAP", "Add a Linux capability, e.g. NET_ADMIN, or ALL")]
CapDropOpt = Annotated[list[str] | None, _repeatable(
    "CAP", "Drop a Linux capability, e.g. NET_RAW, or ALL")]
GroupAddOpt = Annotated[list[str] | None, _repeatable(
    "GROUP", "Add a supplementary group of the task's user (name or GID)")]
GroupRmOpt = Annotated[list[str] | None, _repeatable("GROUP", "Remove a supplementary group")]
LimitPidsOpt = Annotated[str | None, typer.Option(
    metavar="N", help="Most processes the task may have (the pids cgroup; default: the "
                      "node's, 4096).")]
TtyOpt = Annotated[bool | None, typer.Option(
    "--tty/--no-tty", "-t", show_default=False, help="Give the task a pseudo-terminal.")]
SysctlOpt = Annotated[list[str] | None, _repeatable(
    "NAME=VALUE", "Namespaced kernel parameter, e.g. net.core.somaxconn=1024")]
SysctlAddOpt = Annotated[list[str] | None, _repeatable("NAME=VALUE", "Set a sysctl")]
SysctlRmOpt = Annotated[list[str] | None, _repeatable("NAME", "Remove a sysctl")]
UlimitOpt = Annotated[list[str] | None, _repeatable(
    "NAME=SOFT[:HARD]", "Resource limit, e.g. nofile=1024:2048")]
UlimitAddOpt = Annotated[list[str] | None, _repeatable("NAME=SOFT[:HARD]", "Set a ulimit")]
UlimitRmOpt = Annotated[list[str] | None, _repeatable("NAME", "Remove a ulimit")]
DeviceOpt = Annotated[list[str] | None, _repeatable(
    "HOST[:CONTAINER[:PERMS]]", "Give the task a device of its node, e.g. /dev/fuse; a node "
    "without it rejects the task")]
DeviceAddOpt = Annotated[list[str] | None, _repeatable("HOST[:CONTAINER[:PERMS]]",
                                                       "Add or replace a device")]
DeviceRmOpt = Annotated[list[str] | None, _repeatable("CONTAINER", "Remove a device")]
DnsOpt = Annotated[list[str] | None, _repeatable("IP", "DNS server")]
DnsAddOpt = Annotated[list[str] | None, _repeatable("IP", "Add a DNS server")]
DnsRmOpt = Annotated[list[str] | None, _repeatable("IP", "Remove a DNS server")]
DnsSearchOpt = Annotated[list[str] | None, _repeatable("DOMAIN", "DNS search domain")]
DnsSearchAddOpt = Annotated[list[str] | None, _repeatable("DOMAIN", "Add a DNS search domain")]
DnsSearchRmOpt = Annotated[list[str] | None, _repeatable("DOMAIN",
                                                         "Remove a DNS search domain")]
DnsOptionOpt = Annotated[list[str] | None, _repeatable("OPT", "resolv.conf option, e.g. ndots:2")]
DnsOptionAddOpt = Annotated[list[str] | None, _repeatable("OPT", "Add a resolv.conf option")]
DnsOptionRmOpt = Annotated[list[str] | None, _repeatable("OPT", "Remove a resolv.conf option")]
HostOpt = Annotated[list[str] | None, _repeatable(
    "HOST:IP", "Add a line to /etc/hosts, e.g. db.internal:10.0.0.5")]
HostAddOpt = Annotated[list[str] | None, _repeatable("HOST:IP", "Add an /etc/hosts line")]
HostRmOpt = Annotated[list[str] | None, _repeatable("HOST[:IP]", "Remove /etc/hosts lines")]
EnvFileOpt = Annotated[list[str] | None, _repeatable(
    "FILE", "Read KEY=VALUE lines into the environment (before --env)")]
SecretOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--secret",
        metavar="NAME|source=NAME,target=T,uid=U,gid=G,mode=0400",
        help="Give the tasks a secret, read-only at /run/secrets/TARGET (default: its name) "
        "(repeatable).",
    ),
]
ConfigOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--config",
        metavar="NAME|source=NAME,target=/PATH,uid=U,gid=G,mode=0444",
        help="Give the tasks a config, read-only at TARGET (default: /NAME) (repeatable).",
    ),
]
SecretAddOpt = Annotated[
    list[str] | None,
    typer.Option(metavar="NAME|source=NAME,...", help="Add or replace a secret (repeatable)."),
]
SecretRmOpt = Annotated[
    list[str] | None, typer.Option(metavar="NAME", help="Remove a secret (repeatable).")
]
ConfigAddOpt = Annotated[
    list[str] | None,
    typer.Option(metavar="NAME|source=NAME,...", help="Add or replace a config (repeatable)."),
]
ConfigRmOpt = Annotated[
    list[str] | None, typer.Option(metavar="NAME", help="Remove a config (repeatable).")
]
SecurityOptOpt = Annotated[
    list[str] | None,
    typer.Option(
        metavar="OPT",
        help="Security option (repeatable): seccomp=unconfined, seccomp=default, "
        "seccomp=PROFILE.json (Docker's format, read and checked here), "
        "apparmor=unconfined|default, no-new-privileges[=true|false].",
    ),
]
LogOptOpt = Annotated[
    list[str] | None,
    typer.Option(
        metavar="KEY=VALUE",
        help="Log option (repeatable): max-size=SIZE (a task's log file is rotated at this "
        "size; default 10m) and max-file=N (files kept, the current one included; default 3).",
    ),
]


def multi(metavar: str, help: str) -> Any:
    """A repeatable option of one command (`service update --env-add`)."""
    return typer.Option(metavar=metavar, help=f"{help} (repeatable).")


def as_list(values: list[str] | None) -> list[str]:
    """A repeatable flag's values: typer gives None when it is absent."""
    return list(values or [])
