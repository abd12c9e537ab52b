"""The controller's own validation over every spec of the file, with errors
reported at the compose key (and line) they come from."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from swarm.api.payloads import resolve_references
from swarm.api.v1 import objects_pb2 as pb
from swarm.api.validation import (
    ValidationError,
    normalize_network_spec,
    normalize_service_spec,
)

from .model import Location, Stack, StackError, StackNetwork, StackService, locate_in

# Where a controller-side validation error (proto path) is written in a compose
# service, so that it is reported at that key's line. Longest prefix wins.
_PROTO_TO_COMPOSE = (
    ("spec.name", ""),
    ("spec.labels", "deploy.labels"),
    ("spec.mode.replicated.replicas", "deploy.replicas"),
    ("spec.mode.replicated_job", "deploy.replicas"),
    ("spec.schedule", "deploy.x-schedule"),
    ("spec.task.container.image", "image"),
    ("spec.task.container.env", "environment"),
    ("spec.task.container.dir", "working_dir"),
    ("spec.task.container.mounts", "volumes"),
    ("spec.task.container.stop_signal", "stop_signal"),
    ("spec.task.container.stop_grace_period", "stop_grace_period"),
    ("spec.task.container.drain_timeout", "x-drain-timeout"),
    ("spec.task.container.healthcheck", "healthcheck"),
    ("spec.task.container.labels", "labels"),
    ("spec.task.container.secrets", "secrets"),
    ("spec.task.container.configs", "configs"),
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


def _compose_path(field_path: str, table: tuple[tuple[str, str], ...]) -> str:
    for prefix, compose in table:
        if field_path == prefix or field_path.startswith((prefix + ".", prefix + "[")):
            return compose
    return ""


def validate_with_controller_rules(stack: Stack, declared: Mapping[str, StackNetwork]) -> None:
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
                raise StackError(locate_in(network.where, compose, network.location),
                                 f"networks.{key}" + (f".{compose}" if compose else ""),
                                 error.problem) from None
        if key not in stack.networks:
            continue
        # Any ID will do: the check only needs names to resolve.
        placeholders[f"planned-{key}"] = pb.Network(
            id=f"planned-{key}", spec=network.spec or pb.NetworkSpec(name=network.name))
    # The payloads the file declares, under placeholder IDs: their references'
    # targets are checked as the controller will (duplicates, '..', modes).
    secrets = {f"planned-{p.name}": p.name for p in stack.secrets.values()}
    configs = {f"planned-{p.name}": p.name for p in stack.configs.values()}
    for key, service in stack.services.items():
        try:
            normalize_service_spec(service.spec, placeholders)
            container = pb.ContainerSpec()
            container.CopyFrom(service.spec.task.container)
            resolve_references(container, secrets, configs)
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
