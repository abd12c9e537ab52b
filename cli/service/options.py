"""The options of `service create` and `service update` as typed dataclasses,
one field per flag; None, False or [] means the flag was not given.

TaskOptions holds what both commands take (declared once as typer options in
cli/service/flags.py, under the field's name, and applied once by
cli/service/task_spec.py); ServiceOptions adds create's whole-list flags,
ServiceUpdateOptions update's --X-add/--X-rm pairs. The runtime flags (caps,
sysctls, DNS, ...) come from the cli/runopts.py mixins."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..runopts import RuntimeCreateOptions, RuntimeTaskOptions, RuntimeUpdateOptions


@dataclass(kw_only=True)
class TaskOptions(RuntimeTaskOptions):
    """Flags that `create` and `update` share, as typed. None, False or [] means not given."""

    image: str | None = None
    replicas: str | None = None
    max_concurrent: str | None = None  # replicated jobs
    schedule: str | None = None  # jobs
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
    fields (the flags are declared once, in cli/service/flags.py); a repeatable
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
    generic_resources: list[str] = field(default_factory=list)


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
    generic_resource_add: list[str] = field(default_factory=list)
    generic_resource_rm: list[str] = field(default_factory=list)
    force: bool = False
    rollback: bool = False

    def changes_spec(self) -> bool:
        """Whether anything other than --rollback was asked for."""
        return replace(self, rollback=False) != ServiceUpdateOptions()
