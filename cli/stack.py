"""`swarmctl apply -f FILE` and `swarmctl stack deploy|ls|ps|services|rm`.

A deploy is three steps, each separately testable:

1. parse: cli/compose/ turns the file into specs (no controller needed);
2. plan: `plan_stack`, a pure function of the parsed stack and what the controller
   has now (the services and networks labelled with the stack), says what to
   create, update, leave alone and remove, field by field;
3. apply: `apply_plan` sends the writes in a safe order (networks before the
   services that use them, removals last) and waits for convergence like
   `service create` does.

Everything that can be checked without writing is checked before the first write
(the file, names taken outside the stack, missing external networks, mode changes).
What the control API cannot do atomically stays non-atomic: if the controller
refuses a write midway (or goes away), the writes before it stand and the error
says which; running apply again completes the rest.

The plan compares the controller's own normalisation of the file's spec
(controller/api/validation.py) with the stored spec, so that defaults the server
fills in never look like changes and applying the same file twice writes nothing.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from swarm.api import units
from swarm.api.constraints import first_unmet, parse_constraint
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.api.validation import ValidationError, normalize_network_spec, normalize_service_spec

from . import client, completion, compose, progress, pull, render, stack_payloads
from .client import Controller, RpcFailure
from .compose import NAMESPACE_LABEL, Stack, StackError
from .errors import BadInput, CliError, ReportingGroup
from .network import (
    DEFAULT_REMOVE_WAIT,
    SERVICE_GONE_PATIENCE,
    RemoveWaitOpt,
    remove_when_free,
)
from .options import DetachOpt, OutputOpt, QuietOpt, WaitTimeoutOpt, examples

app = typer.Typer(help="Manage stacks: services and networks deployed from a compose file.",
                  no_args_is_help=True, rich_markup_mode=None, cls=ReportingGroup)



class Action(StrEnum):
    create = "create"
    update = "update"
    unchanged = "unchanged"
    remove = "remove"


@dataclass(frozen=True)
class FieldChange:
    """One field of a spec, by its proto path ('task.container.image'); None: absent."""

    path: str
    old: str | None
    new: str | None

    def __str__(self) -> str:
        if self.old is None:
            return f"+ {self.path}: {self.new}"
        if self.new is None:
            return f"- {self.path}: {self.old}"
        return f"~ {self.path}: {self.old} -> {self.new}"


@dataclass(frozen=True)
class NetworkStep:
    name: str
    action: Action
    spec: pb.NetworkSpec | None = None  # what to create
    changes: tuple[FieldChange, ...] = ()
    note: str = ""  # why an existing network that differs is left as it is


@dataclass(frozen=True)
class ServiceStep:
    name: str
    action: Action
    spec: pb.ServiceSpec | None = None  # what to send (networks by name)
    current: pb.Service | None = None
    changes: tuple[FieldChange, ...] = ()


@dataclass(frozen=True)
class Plan:
    stack: str
    networks: tuple[NetworkStep, ...]
    services: tuple[ServiceStep, ...]
    notes: tuple[str, ...] = ()
    # Secret and config versions (cli/stack_payloads.py), created first.
    payloads: tuple[stack_payloads.PayloadStep, ...] = ()

    @property
    def writes(self) -> bool:
        steps: list[NetworkStep | ServiceStep] = [*self.networks, *self.services]
        return any(step.action is not Action.unchanged for step in steps) or any(
            step.create for step in self.payloads)


Credentials = Callable[[pb.ServiceSpec], "pb.RegistryCredential | None"]


class PlanError(CliError):
    """The file cannot be applied to what the controller has (nothing was written)."""


# ---------------------------------------------------------------- planning (pure)


def _leaf(field: FieldDescriptor, value: Any) -> str:
    if field.name.endswith("_bytes") and isinstance(value, int):
        return units.format_memory(value)
    if field.name == "nano_cpus" and isinstance(value, int):
        return f"{units.format_cpus(value)} CPUs"
    if field.enum_type is not None:
        return field.enum_type.values_by_number[value].name if (
            value in field.enum_type.values_by_number) else str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"  # float32 fields: 0.1 is stored as 0.10000000149...
    return str(value)


def _flatten(message: Message, prefix: str, out: dict[str, str]) -> None:
    for descriptor, value in message.ListFields():
        name = f"{prefix}.{descriptor.name}" if prefix else descriptor.name
        if descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry:
            value_field = descriptor.message_type.fields_by_name["value"]
            for key in sorted(value):
                out[f"{name}.{key}"] = _leaf(value_field, value[key])
        elif descriptor.is_repeated:
            for index, item in enumerate(value):
                if descriptor.message_type is not None:
                    _flatten(item, f"{name}[{index}]", out)
                else:
                    out[f"{name}[{index}]"] = _leaf(descriptor, item)
        elif descriptor.message_type is not None and descriptor.message_type.full_name == (
                "google.protobuf.Duration"):
            out[name] = units.format_duration(value.ToNanoseconds())
        elif descriptor.message_type is not None:
            before = len(out)
            _flatten(value, name, out)
            if len(out) == before:
                out[name] = "{}"  # set but empty, e.g. the global mode
        else:
            out[name] = _leaf(descriptor, value)


def flatten(message: Message) -> dict[str, str]:
    """A message as {'task.container.image': '"busybox"', ...}: every field that is
    set, by proto path, in a form an operator can read (durations as 1m30s, enums by
    name)."""
    out: dict[str, str] = {}
    _flatten(message, "", out)
    return out


def diff(old: Message | None, new: Message | None) -> tuple[FieldChange, ...]:
    before = flatten(old) if old is not None else {}
    after = flatten(new) if new is not None else {}
    return tuple(FieldChange(path, before.get(path), after.get(path))
                 for path in sorted(before.keys() | after.keys())
                 if before.get(path) != after.get(path))


def _belongs(labels: Mapping[str, str], stack: str) -> bool:
    return labels.get(NAMESPACE_LABEL) == stack


def _network_names(spec: pb.ServiceSpec, names: Mapping[str, str]) -> pb.ServiceSpec:
    """A copy with network IDs replaced by names, so that a diff reads as the file does."""
    out = pb.ServiceSpec()
    out.CopyFrom(spec)
    for attachment in out.task.networks:
        attachment.target = names.get(attachment.target, attachment.target)
    return out


def plan_stack(stack: Stack, services: Sequence[pb.Service], networks: Sequence[pb.Network],
               *, prune: bool = False, secrets: Sequence[pb.Secret] = (),
               configs: Sequence[pb.Config] = ()) -> Plan:
    """What deploying `stack` changes, given every service, network, secret and
    config the controller has. Raises PlanError when the file cannot be applied: a
    name taken by something outside the stack, a missing external network (or
    secret, or config), a change of mode."""
    payload_steps = stack_payloads.plan_payloads(stack, secrets, configs)
    by_name = {network.spec.name: network for network in networks}
    network_steps: list[NetworkStep] = []
    # What the service specs will resolve against once the networks exist: the real
    # ones, plus a placeholder for each one to be created.
    resolvable: dict[str, pb.Network] = {network.id: network for network in networks}
    for key, wanted in sorted(stack.networks.items()):
        current = by_name.get(wanted.name)
        if wanted.external:
            if current is None:
                raise PlanError(f"{wanted.location}: networks.{key}: external network "
                                f"{wanted.name!r} not found; create it first (swarmctl network "
                                "create)")
            continue
        assert wanted.spec is not None
        if current is None:
            network_steps.append(NetworkStep(wanted.name, Action.create, spec=wanted.spec,
                                             changes=diff(None, wanted.spec)))
            placeholder = f"(new network {wanted.name})"
            resolvable[placeholder] = pb.Network(id=placeholder, spec=wanted.spec)
            continue
        if not _belongs(current.spec.labels, stack.name):
            raise PlanError(f"{wanted.location}: networks.{key}: a network named "
                            f"{wanted.name!r} already exists and is not part of stack "
                            f"{stack.name!r}")
        desired_network = normalize_network_spec(wanted.spec)
        existing = pb.NetworkSpec()
        existing.CopyFrom(current.spec)
        if not desired_network.HasField("ipam"):
            existing.ClearField("ipam")  # assigned by the controller: not the file's business
        changes = diff(existing, desired_network)
        note = ("differs from the file, but networks cannot be changed in place: remove the "
                "stack (or the network) to recreate it") if changes else ""
        network_steps.append(NetworkStep(wanted.name, Action.unchanged, changes=changes,
                                         note=note))

    names = {network.id: network.spec.name for network in resolvable.values()}
    current_services = {service.spec.name: service for service in services}
    service_steps: list[ServiceStep] = []
    for key, wanted_service in sorted(stack.services.items()):
        name = wanted_service.spec.name
        try:
            desired = normalize_service_spec(wanted_service.spec, resolvable)
        except ValidationError as error:
            # parse_stack checked it against the file's own networks: what gets here
            # is about an external one (e.g. internal, and the service publishes).
            raise PlanError(str(compose.service_error(key, wanted_service, error))) from None
        current_service = current_services.get(name)
        if current_service is None:
            # What the file says, without the defaults the controller will add.
            service_steps.append(ServiceStep(
                name, Action.create, spec=wanted_service.spec,
                changes=diff(None, wanted_service.spec)))
            continue
        if not _belongs(current_service.spec.labels, stack.name):
            raise PlanError(f"{wanted_service.location}: services.{key}: a service named "
                            f"{name!r} already exists and is not part of stack {stack.name!r}")
        if current_service.spec.WhichOneof("mode") != desired.WhichOneof("mode"):
            raise PlanError(f"{wanted_service.locate('deploy.mode')}: services.{key}.deploy.mode: "
                            f"{name!r} cannot change between replicated and global; remove it "
                            "first (swarmctl service rm)")
        # Keep what `service update --force` bumped: the file does not say, and a
        # change here would roll every task.
        desired.task.force_update = current_service.spec.task.force_update
        desired = stack_payloads.resolve_for_diff(desired, secrets, configs, payload_steps)
        changes = diff(_network_names(current_service.spec, names),
                       _network_names(desired, names))
        if changes:
            spec = pb.ServiceSpec()
            spec.CopyFrom(wanted_service.spec)
            spec.task.force_update = current_service.spec.task.force_update
            service_steps.append(ServiceStep(name, Action.update, spec=spec,
                                             current=current_service, changes=changes))
        else:
            service_steps.append(ServiceStep(name, Action.unchanged, current=current_service))

    notes: list[str] = []
    wanted_names = {service.spec.name for service in stack.services.values()}
    for service in sorted(services, key=lambda s: s.spec.name):
        if _belongs(service.spec.labels, stack.name) and service.spec.name not in wanted_names:
            if prune:
                service_steps.append(ServiceStep(service.spec.name, Action.remove,
                                                 current=service))
            else:
                notes.append(f"service {service.spec.name} is not in the file (kept; --prune "
                             "removes it)")
    if prune:
        wanted_networks = {network.name for network in stack.networks.values()}
        for network in sorted(networks, key=lambda n: n.spec.name):
            if _belongs(network.spec.labels, stack.name) and (network.spec.name
                                                               not in wanted_networks):
                network_steps.append(NetworkStep(network.spec.name, Action.remove))
    return Plan(stack=stack.name, networks=tuple(network_steps), services=tuple(service_steps),
                notes=tuple(notes), payloads=payload_steps)


def unsatisfiable_constraints(stack: Stack, nodes: Sequence[pb.Node]) -> list[str]:
    """Warnings for constraints that no node meets now (they may later: a label can be
    added), naming the constraint's line."""
    warnings = []
    for key, service in sorted(stack.services.items()):
        constraints = service.spec.task.placement.constraints
        for index, text in enumerate(constraints):
            constraint = parse_constraint(text)
            if not any(first_unmet([constraint], node) is None for node in nodes):
                path = f"deploy.placement.constraints[{index}]"
                warnings.append(f"warning: {service.locate(path)}: services.{key}.{path}: no "
                                f"node satisfies {text!r} now; the service's tasks will stay "
                                "pending until one does")
    return warnings


def plan_lines(plan: Plan, *, dry_run: bool, details: bool) -> list[str]:
    """What `apply` prints: one line per object, and with `details` its field changes."""
    lines: list[str] = stack_payloads.step_lines(plan.payloads, dry_run=dry_run)
    verbs = {Action.create: "would be created" if dry_run else "created",
             Action.update: "would be updated" if dry_run else "updated",
             Action.unchanged: "unchanged",
             Action.remove: "would be removed" if dry_run else "removed"}
    for kind, steps in (("network", plan.networks), ("service", plan.services)):
        for step in steps:
            lines.append(f"{kind} {step.name}: {verbs[step.action]}")
            note = getattr(step, "note", "")
            if note:
                lines.append(f"  note: {note}")
            if details or note:
                lines.extend(f"    {change}" for change in step.changes)
    lines.extend(f"note: {note}" for note in plan.notes)
    return lines


# ---------------------------------------------------------------- applying


def _stack_objects(ctl: Controller, stack: str | None = None
                   ) -> tuple[list[pb.Service], list[pb.Network]]:
    """Every service and network (with `stack`, only that stack's)."""
    services = list(ctl.call(ctl.stub.ListServices, cpb.ListServicesRequest()).services)
    networks = list(ctl.call(ctl.stub.ListNetworks, cpb.ListNetworksRequest()).networks)
    if stack is not None:
        services = [s for s in services if _belongs(s.spec.labels, stack)]
        networks = [n for n in networks if _belongs(n.spec.labels, stack)]
    return services, networks


def _wait_for_network(ctl: Controller, name: str, deadline: float) -> None:
    """A created network may take a moment to reach the cache that CreateService
    resolves names against (any controller may answer)."""
    while True:
        try:
            ctl.call(ctl.stub.GetNetwork, cpb.GetRequest(ref=name))
            return
        except RpcFailure as error:
            if error.code != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def apply_plan(ctl: Controller, plan: Plan, echo: Callable[[str], None], *,
               with_tasks: bool, network_timeout: float,
               credential: Credentials = lambda spec: None) -> list[progress.Baseline]:
    """Make the plan's writes; return the baselines to wait on (created and updated
    services). Networks come first, since services name them; removals come last.
    credential: the registry credentials to send with a service's spec
    (--with-registry-auth); an unchanged service they are given for is written
    too (its spec as it is: nothing rolls), so that it gets them."""
    baselines: list[progress.Baseline] = []
    deadline = time.monotonic() + ctl.timeout
    for step in plan.networks:
        if step.action is Action.create:
            assert step.spec is not None
            ctl.call(ctl.stub.CreateNetwork, cpb.CreateNetworkRequest(spec=step.spec))
            echo(f"network {step.name}: created")
        elif step.action is Action.unchanged:
            echo(f"network {step.name}: unchanged" + (f" ({step.note})" if step.note else ""))
    for step in plan.networks:
        if step.action is Action.create:
            _wait_for_network(ctl, step.name, deadline)
    stack_payloads.create_payloads(ctl, plan.payloads, echo)
    for service_step in plan.services:
        if service_step.action is Action.create:
            assert service_step.spec is not None
            created = ctl.call(ctl.stub.CreateService, cpb.CreateServiceRequest(
                spec=service_step.spec, registry_auth=credential(service_step.spec))).service
            baselines.append(progress.baseline_of(created, created=True))
            echo(f"service {service_step.name}: created")
        elif service_step.action is Action.update:
            assert service_step.spec is not None
            baselines.append(_update(ctl, service_step, with_tasks=with_tasks,
                                     credential=credential(service_step.spec)))
            echo(f"service {service_step.name}: updated")
        elif service_step.action is Action.unchanged and service_step.current is not None \
                and (sent := credential(service_step.current.spec)) is not None:
            _send_credential(ctl, service_step.current, sent)
            echo(f"service {service_step.name}: unchanged (registry credentials sent)")
        elif service_step.action is Action.unchanged:
            echo(f"service {service_step.name}: unchanged")
    for service_step in plan.services:
        if service_step.action is Action.remove:
            ctl.call(ctl.stub.RemoveService, cpb.RemoveRequest(ref=service_step.name))
            echo(f"service {service_step.name}: removed")
    for step in plan.networks:
        if step.action is Action.remove:
            remove_when_free(ctl, step.name, timeout=network_timeout,
                             patience=SERVICE_GONE_PATIENCE, missing_ok=True)
            echo(f"network {step.name}: removed")
    return baselines


def _send_credential(ctl: Controller, service: pb.Service,
                     credential: pb.RegistryCredential) -> None:
    # Only the credentials change: the spec as it is now, at its version (the
    # controller retries over status writes meanwhile).
    latest = ctl.call(ctl.stub.GetService, cpb.GetRequest(ref=service.id)).service
    ctl.call(ctl.stub.UpdateService, cpb.UpdateServiceRequest(
        service_id=latest.id, version=latest.meta.version, spec=latest.spec,
        registry_auth=credential))


def _update(ctl: Controller, step: ServiceStep, *, with_tasks: bool,
            credential: pb.RegistryCredential | None = None) -> progress.Baseline:
    assert step.spec is not None, "an update step carries the spec"
    assert step.current is not None, "an update step carries the current service"
    spec = step.spec
    current = step.current
    tasks: list[pb.Task] = []
    if with_tasks:
        request = cpb.ListTasksRequest()
        request.filters.service_ids.append(current.id)
        tasks = list(ctl.call(ctl.stub.ListTasks, request).tasks)
    baseline = progress.baseline_of(current, tasks)

    # No version: the file's spec is what is wanted whatever changed meanwhile
    # (the controller retries over concurrent writes).
    ctl.call(ctl.stub.UpdateService, cpb.UpdateServiceRequest(service_id=current.id, spec=spec,
                                                             registry_auth=credential))
    return baseline


# ---------------------------------------------------------------- commands


def _load(file: Path, stack_name: str | None) -> Stack:
    try:
        return compose.load_stack(file, stack_name=stack_name)
    except StackError as error:
        raise BadInput(str(error)) from None


def deploy(ctx: typer.Context, file: Path, stack_name: str | None, *, dry_run: bool,
           prune: bool, detach: bool, wait_for: str,
           pulling: pull.PullOptions | None = None) -> None:
    """Shared by `apply` and `stack deploy`: parse, plan, print, apply, wait."""
    timeout = progress.wait_timeout(wait_for)
    stack = _load(file, stack_name)
    pulling = pulling or pull.PullOptions(resolve="never")
    for line in compose.iter_messages(stack):
        typer.echo(line, err=True)
    with client.open_controller(ctx) as ctl:
        services, networks = _stack_objects(ctl)
        secrets, configs = stack_payloads.stack_payloads(ctl)
        pull.for_stack([s.spec for s in stack.services.values()],
                       {s.spec.name: s for s in services}, pulling, _warn)
        nodes = list(ctl.call(ctl.stub.ListNodes, cpb.ListNodesRequest()).nodes)
        for line in unsatisfiable_constraints(stack, nodes):
            typer.echo(line, err=True)
        plan = plan_stack(stack, services, networks, prune=prune, secrets=secrets,
                          configs=configs)
        if dry_run:
            typer.echo("\n".join(plan_lines(plan, dry_run=True, details=True)))
            return
        echo: Callable[[str], None] = typer.echo
        options = pulling
        baselines = apply_plan(
            ctl, plan, echo, with_tasks=not detach, network_timeout=timeout,
            credential=lambda spec: pull.credential_to_send(spec.task.container.image,
                                                            options, _warn))
        for note in plan.notes:
            typer.echo(f"note: {note}")
        if baselines and not detach:
            # sys.stderr looked up now: test runners swap it per invocation.
            progress.wait_until_converged(ctl, baselines, timeout=timeout, stream=sys.stderr)
        # Old secret and config versions go once the services run the new ones
        # (a failed wait raised above: they stay for a rollback).
        if detach:
            if stack.secrets or stack.configs:
                typer.echo("note: unused secret and config versions are removed after a "
                           "rollout that was waited for (not with -d)")
        else:
            stack_payloads.remove_unused(ctl, stack, echo)


def _warn(line: str) -> None:
    typer.echo(line, err=True)


FileOpt = Annotated[Path, typer.Option(
    "--file", "-f", metavar="FILE", help="The compose-format stack file.", dir_okay=False)]
DryRunOpt = Annotated[bool, typer.Option(
    "--dry-run", help="Print what would change, field by field, and change nothing.")]
PruneOpt = Annotated[bool, typer.Option(
    "--prune", help="Remove the stack's services (and networks) that are no longer in "
                    "the file.")]

APPLY_EPILOG = examples(
    "swarmctl apply -f deploy/examples/web.yaml",
    "swarmctl apply -f web.yaml --dry-run",
    "swarmctl apply -f web.yaml --prune --stack web",
    "STAGE=prod swarmctl apply -f web.yaml -d",
) + """

\b
The stack's name is --stack, else the file's top-level `name:`, else the name of
the file's directory. Services are named STACK_SERVICE and networks STACK_NETWORK
(external ones keep their own), all labelled com.docker.stack.namespace=STACK.
Applying the same file again changes nothing; a file with any error changes
nothing either."""


def apply_command(
    ctx: typer.Context,
    file: FileOpt,
    dry_run: DryRunOpt = False,
    prune: PruneOpt = False,
    stack: Annotated[str | None, typer.Option(
        "--stack", metavar="NAME", help="Stack name (default: the file's `name:`, or its "
                                        "directory's name).")] = None,
    with_registry_auth: pull.WithRegistryAuthOpt = False,
    registry_auth_file: pull.RegistryAuthFileOpt = None,
    resolve_image: pull.ResolveImageOpt = "always",
    detach: DetachOpt = False,
    wait_for: WaitTimeoutOpt = progress.DEFAULT_WAIT,
) -> None:
    """Create or update a stack from a compose file, then wait for its services (unless -d)."""
    pulling = pull.pull_options(with_registry_auth, registry_auth_file, resolve_image,
                                insecure=pull.connection_insecure(ctx))
    deploy(ctx, file, stack, dry_run=dry_run, prune=prune, detach=detach, wait_for=wait_for,
           pulling=pulling)


@app.command("deploy", epilog=examples(
    "swarmctl stack deploy -c deploy/examples/web.yaml web",
    "swarmctl stack deploy -c web.yaml --prune web",
    "swarmctl stack deploy -c web.yaml --dry-run web",
))
def deploy_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="Stack name.")],
    file: Annotated[Path, typer.Option(
        "--compose-file", "-c", metavar="FILE", help="The compose-format stack file.",
        dir_okay=False)],
    dry_run: DryRunOpt = False,
    prune: PruneOpt = False,
    with_registry_auth: pull.WithRegistryAuthOpt = False,
    registry_auth_file: pull.RegistryAuthFileOpt = None,
    resolve_image: pull.ResolveImageOpt = "always",
    detach: DetachOpt = False,
    wait_for: WaitTimeoutOpt = progress.DEFAULT_WAIT,
) -> None:
    """Deploy a new stack or update an existing one, as `docker stack deploy` does."""
    pulling = pull.pull_options(with_registry_auth, registry_auth_file, resolve_image,
                                insecure=pull.connection_insecure(ctx))
    deploy(ctx, file, name, dry_run=dry_run, prune=prune, detach=detach, wait_for=wait_for,
           pulling=pulling)


@dataclass
class StackSummary:
    name: str
    services: list[str] = field(default_factory=list)  # full names, sorted
    networks: list[str] = field(default_factory=list)


def summarize(services: Iterable[pb.Service], networks: Iterable[pb.Network]
              ) -> list[StackSummary]:
    """One entry per stack label found on services or networks, by name."""
    stacks: dict[str, StackSummary] = {}
    for service in services:
        name = service.spec.labels.get(NAMESPACE_LABEL)
        if name:
            stacks.setdefault(name, StackSummary(name)).services.append(service.spec.name)
    for network in networks:
        name = network.spec.labels.get(NAMESPACE_LABEL)
        if name:
            stacks.setdefault(name, StackSummary(name)).networks.append(network.spec.name)
    for entry in stacks.values():
        entry.services.sort()
        entry.networks.sort()
    return [stacks[name] for name in sorted(stacks)]


@app.command("ls", epilog=examples("swarmctl stack ls", "swarmctl stack ls -o json"))
def list_stacks(ctx: typer.Context, output: OutputOpt = render.Output.table) -> None:
    """List stacks, with how many services and networks each has."""
    with client.open_controller(ctx) as ctl:
        services, networks = _stack_objects(ctl)
    stacks = summarize(services, networks)
    if output is render.Output.table:
        typer.echo(render.table(["NAME", "SERVICES", "NETWORKS"],
                                [[s.name, str(len(s.services)), str(len(s.networks))]
                                 for s in stacks]))
        return
    data = [{"name": s.name, "services": s.services, "networks": s.networks} for s in stacks]
    typer.echo(render.plain(output, data))


def _require(ctl: Controller, name: str) -> tuple[list[pb.Service], list[pb.Network]]:
    services, networks = _stack_objects(ctl, name)
    if not services and not networks:
        raise CliError(f"stack {name!r} not found")
    return services, networks


@app.command("services", epilog=examples("swarmctl stack services web",
                                          "swarmctl stack services web -o yaml"))
def stack_services(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", autocompletion=completion.stacks)],
    output: OutputOpt = render.Output.table,
    quiet: QuietOpt = False,
) -> None:
    """List the services of a stack."""
    with client.open_controller(ctx) as ctl:
        services, _ = _require(ctl, name)
        services.sort(key=lambda s: s.spec.name)
        tasks: list[pb.Task] = []
        if output is render.Output.table and not quiet:
            request = cpb.ListTasksRequest()
            request.filters.service_ids.extend(s.id for s in services)
            tasks = list(ctl.call(ctl.stub.ListTasks, request).tasks) if services else []
    if quiet:
        typer.echo("\n".join(s.id for s in services))
        return
    typer.echo(render.render(output, services, lambda: render.services_table(services, tasks)))


@app.command("ps", epilog=examples("swarmctl stack ps web", "swarmctl stack ps web -o json"))
def stack_ps(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", autocompletion=completion.stacks)],
    no_trunc: Annotated[bool, typer.Option("--no-trunc", help="Do not truncate IDs and images.")
                        ] = False,
    output: OutputOpt = render.Output.table,
    quiet: QuietOpt = False,
) -> None:
    """List the tasks of a stack's services."""
    with client.open_controller(ctx) as ctl:
        services, _ = _require(ctl, name)
        tasks: list[pb.Task] = []
        hostnames: dict[str, str] = {}
        if services:
            request = cpb.ListTasksRequest()
            request.filters.service_ids.extend(s.id for s in services)
            tasks = list(ctl.call(ctl.stub.ListTasks, request).tasks)
        if tasks and output is render.Output.table:
            nodes = ctl.call(ctl.stub.ListNodes, cpb.ListNodesRequest()).nodes
            hostnames = {n.id: n.description.hostname for n in nodes}
    if quiet:
        typer.echo("\n".join(t.id for t in tasks))
        return
    typer.echo(render.render(output, tasks, lambda: render.tasks_table(
        tasks, hostnames, render.now_utc(), no_trunc=no_trunc)))


@app.command("rm", epilog=examples("swarmctl stack rm web",
                                   "swarmctl stack rm --timeout 2m web db"))
def remove(
    ctx: typer.Context,
    names: Annotated[list[str], typer.Argument(metavar="NAME", autocompletion=completion.stacks)],
    wait_for: RemoveWaitOpt = DEFAULT_REMOVE_WAIT,
) -> None:
    """Remove stacks: their services, then (once those tasks have stopped) their networks."""
    timeout = progress.wait_timeout(wait_for)
    with client.open_controller(ctx) as ctl:
        missing = 0
        for name in names:
            services, networks = _stack_objects(ctl, name)
            secrets, configs = stack_payloads.stack_payloads(ctl, name)
            if not services and not networks and not secrets and not configs:
                typer.echo(f"swarmctl: stack {name!r} not found", err=True)
                missing += 1
                continue
            for service in sorted(services, key=lambda s: s.spec.name):
                ctl.call(ctl.stub.RemoveService, cpb.RemoveRequest(ref=service.id))
                typer.echo(f"service {service.spec.name}: removed")
            for network in sorted(networks, key=lambda n: n.spec.name):
                remove_when_free(ctl, network.id, timeout=timeout,
                                 patience=SERVICE_GONE_PATIENCE, missing_ok=True)
                typer.echo(f"network {network.spec.name}: removed")
            stack_payloads.remove_payloads(
                ctl, sorted([("secret", s.spec.name) for s in secrets]
                            + [("config", c.spec.name) for c in configs]), typer.echo)
    client.fail_if(missing)
