"""Apply the flags `service create` and `service update` share (TaskOptions) to a
ServiceSpec: pure functions that parse every value and raise BadFlag naming the
flag, so create (on an empty spec) and update (on a copy of the current one)
fill the spec the same way, as SwarmKit's flagparser merges its flags for both.
An absent restart or update/rollback config starts from the defaults below,
the controller's own."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from swarm.api import logopts, security
from swarm.api.schedule import BadSchedule, parse_schedule
from swarm.api.v1 import objects_pb2 as pb
from swarm.api.validation import JOB_MODES, ValidationError, check_drain_timeout

from .. import parsing
from ..choices import ENDPOINT_MODES, FAILURE_ACTIONS, ORDERS, RESTART_CONDITIONS
from ..errors import BadFlag
from ..runopts import check_stop_signal
from .options import TaskOptions

DEFAULT_RESTART_DELAY_NS = 5_000_000_000
DEFAULT_MONITOR_NS = 5_000_000_000


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


_ROLLING_FLAGS = ("update_parallelism", "update_delay", "update_order", "update_failure_action",
                  "update_monitor", "update_max_failure_ratio", "rollback_parallelism",
                  "rollback_delay", "rollback_order", "rollback_failure_action",
                  "rollback_monitor", "rollback_max_failure_ratio")


def _job(spec: pb.ServiceSpec, options: TaskOptions) -> None:
    """--max-concurrent and --schedule, and what a job refuses (--update-* and
    --rollback-*: a job is re-run, not rolled, as in Swarm). The values are
    checked whatever the mode; on a spec without a mode (update's check before
    connecting) where they apply is left to the check against the real spec."""
    mode = spec.WhichOneof("mode")
    job = mode in JOB_MODES
    if options.max_concurrent is not None:
        concurrent = parsing.count("--max-concurrent", options.max_concurrent)
        if concurrent < 1:
            raise BadFlag("--max-concurrent", f"must be at least 1 (got {concurrent})")
        if mode == "replicated_job":
            spec.replicated_job.max_concurrent = concurrent
        elif mode is not None:
            raise BadFlag("--max-concurrent", "applies to --mode replicated-job only")
    if options.schedule is not None:
        try:
            parse_schedule(options.schedule)
        except BadSchedule as error:
            raise BadFlag("--schedule", str(error)) from None
        if job:
            spec.schedule = options.schedule.strip()
        elif mode is not None:
            raise BadFlag("--schedule", "applies to jobs only (--mode replicated-job or "
                                        "global-job)")
    if job:
        given = next((name for name in _ROLLING_FLAGS if getattr(options, name) is not None),
                     None)
        if given is not None:
            flag = "--" + given.replace("_", "-")
            raise BadFlag(flag, f"a job ({mode.replace('_', '-') if mode else ''}) has no "
                                "rolling update: an update re-runs it")


def apply_task_options(spec: pb.ServiceSpec, options: TaskOptions) -> None:
    """Set what the shared flags ask for on `spec`, leaving the rest as it is."""
    if options.replicas is not None:
        mode = spec.WhichOneof("mode")
        if mode in ("global", "global_job"):
            raise BadFlag("--replicas", f"applies to replicated services only (jobs "
                          f"included), not to a {mode.replace('_', '-')} one")
        if mode == "replicated_job":
            spec.replicated_job.total_completions = parsing.count("--replicas", options.replicas)
        else:
            spec.replicated.replicas = parsing.count("--replicas", options.replicas)
    _job(spec, options)
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


def merge_env(current: Sequence[str], remove: Sequence[str], add: Sequence[str],
               add_flag: str) -> list[str]:
    """Drop the removed and re-set keys, then append the new KEY=VALUEs (last one wins)."""
    added: dict[str, str] = {}
    for item in add:
        key, _ = parsing.key_value(add_flag, item)
        added[key] = item
    dropped = set(remove) | set(added)
    return [item for item in current if item.partition("=")[0] not in dropped] + list(
        added.values())

