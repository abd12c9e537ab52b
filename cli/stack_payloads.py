"""A stack's secrets and configs in `apply`/`stack deploy` and `stack rm`:
rotation by content, beyond what Swarm does.

Swarm cannot change a secret in place (moby/moby#35803). Here a payload
given as a file is stored as NAME.DIGEST (cli/compose/payloads.py), so:

1. plan: a version the controller lacks is to be created (labelled with the
   stack); one it has is left alone; an external one must exist. The
   services' references are resolved to IDs (placeholders for the new
   ones) so that the plan's diff reads as the stored spec does: a changed
   file shows as a changed `secret_name`, never as contents.
2. apply: new versions are created before the services that use them; the
   services are then updated as any change is, through their update config
   (a rolling update).
3. after the rollout (only once the services converged; not with -d, not
   when the wait failed): the stack's versions that no service references
   any more are removed. Kept until then, a failed update can still roll
   back to the old version.

`stack rm` removes the stack's secrets and configs after its services.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc

from swarm.api import payloads
from swarm.api.payloads import Kind
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.api.validation import ValidationError

from .client import Controller, RpcFailure
from .compose import NAMESPACE_LABEL, Stack, StackPayload
from .errors import CliError

Stored = pb.Secret | pb.Config


class PayloadPlanError(CliError):
    """The file's secrets or configs cannot be applied (nothing was written)."""


@dataclass(frozen=True)
class PayloadStep:
    kind: Kind
    name: str
    create: bool  # False: the controller has it already (or it is external)
    labels: Mapping[str, str] = field(default_factory=dict)
    data: bytes | None = field(default=None, repr=False)


def _belongs(obj: Stored, stack: str) -> bool:
    return obj.spec.labels.get(NAMESPACE_LABEL) == stack


def plan_payloads(stack: Stack, secrets: Sequence[pb.Secret],
                  configs: Sequence[pb.Config]) -> tuple[PayloadStep, ...]:
    """What the file's secrets and configs need (pure). Raises PayloadPlanError
    for an external one that does not exist."""
    steps: list[PayloadStep] = []
    declared: list[tuple[Kind, Mapping[str, StackPayload], Sequence[Stored]]] = [
        ("secret", stack.secrets, secrets), ("config", stack.configs, configs)]
    for kind, wanted, stored in declared:
        names = {obj.spec.name for obj in stored}
        for key, payload in sorted(wanted.items()):
            if payload.external:
                if payload.name not in names:
                    raise PayloadPlanError(f"{payload.location}: {kind}s.{key}: external {kind} "
                                           f"{payload.name!r} not found; create it first "
                                           f"(swarmctl {kind} create)")
                continue
            if any(step.kind == kind and step.name == payload.name for step in steps):
                continue  # two keys, one content and name: once
            steps.append(PayloadStep(kind, payload.name, payload.name not in names,
                                     {NAMESPACE_LABEL: stack.name}, payload.data))
    return tuple(steps)


def resolve_for_diff(spec: pb.ServiceSpec, secrets: Sequence[pb.Secret],
                     configs: Sequence[pb.Config], steps: Sequence[PayloadStep]) -> pb.ServiceSpec:
    """A copy of a service spec of the file with its references as the
    controller will store them: IDs (a placeholder for a version still to be
    created) and defaults filled in, so that an unchanged file diffs as
    unchanged."""
    out = pb.ServiceSpec()
    out.CopyFrom(spec)
    container = out.task.container
    if not container.secrets and not container.configs:
        return out
    known: dict[Kind, dict[str, str]] = {
        "secret": {obj.id: obj.spec.name for obj in secrets},
        "config": {obj.id: obj.spec.name for obj in configs}}
    for step in steps:
        if step.create:
            known[step.kind][f"(new {step.kind} {step.name})"] = step.name
    try:
        payloads.resolve_references(container, known["secret"], known["config"])
    except ValidationError:
        return out  # the controller will say (parse_stack checked the file's own)
    return out


def step_lines(steps: Iterable[PayloadStep], *, dry_run: bool) -> list[str]:
    """One line per version to create: the name only, never the contents."""
    verb = "would be created" if dry_run else "created"
    return [f"{step.kind} {step.name}: {verb}" for step in steps if step.create]


def create_payloads(ctl: Controller, steps: Sequence[PayloadStep],
                    echo: Callable[[str], None]) -> None:
    for step in steps:
        if not step.create:
            continue
        assert step.data is not None
        try:
            if step.kind == "secret":
                ctl.call(ctl.stub.CreateSecret, cpb.CreateSecretRequest(
                    spec=pb.SecretSpec(name=step.name, labels=dict(step.labels)), data=step.data))
            else:
                ctl.call(ctl.stub.CreateConfig, cpb.CreateConfigRequest(
                    spec=pb.ConfigSpec(name=step.name, labels=dict(step.labels)), data=step.data))
        except RpcFailure as error:
            if error.code != grpc.StatusCode.ALREADY_EXISTS:  # made meanwhile: the same content
                raise
        echo(f"{step.kind} {step.name}: created")


def stack_payloads(ctl: Controller, stack: str | None = None
                   ) -> tuple[list[pb.Secret], list[pb.Config]]:
    """Every secret and config (with `stack`, only that stack's)."""
    secrets = list(ctl.call(ctl.stub.ListSecrets, cpb.ListSecretsRequest()).secrets)
    configs = list(ctl.call(ctl.stub.ListConfigs, cpb.ListConfigsRequest()).configs)
    if stack is not None:
        secrets = [s for s in secrets if _belongs(s, stack)]
        configs = [c for c in configs if _belongs(c, stack)]
    return secrets, configs


def unused(stack: str, services: Iterable[pb.Service], secrets: Iterable[pb.Secret],
           configs: Iterable[pb.Config], keep: Iterable[str] = ()) -> list[tuple[Kind, str]]:
    """The stack's versions that no service's spec references and the file
    does not declare (`keep`: the file's current names) (pure)."""
    kept = set(keep)
    used_secrets: set[str] = set()
    used_configs: set[str] = set()
    for service in services:
        secret_ids, config_ids = payloads.referenced_ids(service.spec.task.container)
        used_secrets |= secret_ids
        used_configs |= config_ids
    found: list[tuple[Kind, str]] = [
        ("secret", s.spec.name) for s in secrets
        if _belongs(s, stack) and s.id not in used_secrets and s.spec.name not in kept]
    found += [("config", c.spec.name) for c in configs
              if _belongs(c, stack) and c.id not in used_configs and c.spec.name not in kept]
    return sorted(found)


def remove_payloads(ctl: Controller, names: Iterable[tuple[Kind, str]],
                    echo: Callable[[str], None]) -> None:
    """Remove each; one still in use (by a service outside the stack) is kept, and said so."""
    for kind, name in names:
        method = ctl.stub.RemoveSecret if kind == "secret" else ctl.stub.RemoveConfig
        try:
            ctl.call(method, cpb.RemoveRequest(ref=name))
        except RpcFailure as error:
            if error.code == grpc.StatusCode.NOT_FOUND:
                continue
            if error.code == grpc.StatusCode.FAILED_PRECONDITION:
                echo(f"{kind} {name}: kept ({error.message})")
                continue
            raise
        echo(f"{kind} {name}: removed")


def remove_unused(ctl: Controller, stack: Stack, echo: Callable[[str], None]) -> None:
    """After a rollout: the stack's versions that no service uses any more and
    the file no longer declares go."""
    services = list(ctl.call(ctl.stub.ListServices, cpb.ListServicesRequest()).services)
    secrets, configs = stack_payloads(ctl, stack.name)
    declared = [p.name for p in (*stack.secrets.values(), *stack.configs.values())]
    remove_payloads(ctl, unused(stack.name, services, secrets, configs, declared), echo)
