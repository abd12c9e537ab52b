"""Generic resources (GPUs, other devices, anything counted): the text forms.

Two kinds of resource, as in SwarmKit: a *count* of a kind (`gpu=2`: any two
of them, nothing names them) and *named units* of a kind (`gpu=UUID1,UUID2`:
each unit has a name, and a task is given particular ones). A node advertises
either form per kind (`swarm-agent --generic-resource`); a service reserves a
count (`--generic-resource gpu=1`, compose `generic_resources` and `devices`
with `count`) or particular named units (compose `devices` with `device_ids`).

The task sees what it was given as docker's SwarmKit sets it:
`DOCKER_RESOURCE_<KIND uppercased>` = the unit names joined with commas, or
the count for a counted kind (SwarmKit's genericresource.EnvFormat).

Used by swarmctl (flags, compose), the agent (flags, environment) and the
controller (validation, which names the field), so the rules are one set.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from swarm.api.v1 import objects_pb2 as pb

ENV_PREFIX = "DOCKER_RESOURCE"
# Docker's own examples use kinds like NVIDIA-GPU; a kind becomes part of an
# environment variable name, so no '=' or ',' or spaces.
_KIND = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
# GPU UUIDs ("GPU-9f2c...") and device names ("nvidia0"); ',' separates units.
_UNIT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


def kind_error(kind: str) -> str:
    """'' when `kind` is a valid kind, else what is wrong with it."""
    if _KIND.fullmatch(kind):
        return ""
    return (f"invalid resource kind {kind!r}: a letter, then letters, digits, '-', '_' "
            "or '.' (at most 64)")


def unit_error(name: str) -> str:
    if _UNIT.fullmatch(name):
        return ""
    return (f"invalid unit name {name!r}: letters, digits, '-', '_', '.' or ':', "
            "not starting with '-' (at most 128)")


def discrete(kind: str, count: int) -> pb.GenericResource:
    return pb.GenericResource(
        discrete_resource_spec=pb.DiscreteGenericResource(kind=kind, value=count))


def named(kind: str, value: str) -> pb.GenericResource:
    return pb.GenericResource(named_resource_spec=pb.NamedGenericResource(kind=kind, value=value))


def kind_of(resource: pb.GenericResource) -> str:
    if resource.WhichOneof("resource") == "named_resource_spec":
        return resource.named_resource_spec.kind
    return resource.discrete_resource_spec.kind


def value_text(resource: pb.GenericResource) -> str:
    if resource.WhichOneof("resource") == "named_resource_spec":
        return resource.named_resource_spec.value
    return str(resource.discrete_resource_spec.value)


def parse(text: str) -> list[pb.GenericResource]:
    """`KIND=COUNT` or `KIND=UNIT[,UNIT...]`; ValueError with one line naming the problem.

    A value of digits only is a count (at least 1); anything else is unit names.
    """
    kind, sep, value = text.partition("=")
    kind, value = kind.strip(), value.strip()
    if not sep or not value:
        raise ValueError(f"invalid generic resource {text!r}: expected KIND=COUNT or "
                         "KIND=UNIT[,UNIT...], e.g. gpu=1")
    if error := kind_error(kind):
        raise ValueError(f"{error} in {text!r}")
    if re.fullmatch(r"[+-]?\d+", value):
        count = int(value)
        if count < 1:
            raise ValueError(f"invalid generic resource {text!r}: the count must be at "
                             "least 1")
        return [discrete(kind, count)]
    units = [unit.strip() for unit in value.split(",")]
    for unit in units:
        if error := unit_error(unit):
            raise ValueError(f"{error} in {text!r}")
    if len(set(units)) < len(units):
        raise ValueError(f"invalid generic resource {text!r}: a unit is named twice")
    return [named(kind, unit) for unit in units]


def merge(texts: Iterable[str], *, reservation: bool = False) -> list[pb.GenericResource]:
    """Several `--generic-resource` values as one list (ValueError names the culprit).

    Named units of a kind may come from several values (docker's daemon.json
    lists them one per entry); a kind is either counted or named, and counted once.
    """
    resources: list[pb.GenericResource] = []
    for text in texts:
        resources += parse(text)
    if error := list_error(resources, reservation=reservation):
        raise ValueError(error)
    return resources


def item_error(resource: pb.GenericResource) -> str:
    """'' when one generic resource is well formed, else what is wrong with it."""
    which = resource.WhichOneof("resource")
    if which is None:
        return "neither a count nor a unit name"
    kind = kind_of(resource)
    if error := kind_error(kind):
        return error
    if which == "discrete_resource_spec":
        count = resource.discrete_resource_spec.value
        if count < 1:
            return f"{kind}: invalid count {count}: must be at least 1"
    elif error := unit_error(resource.named_resource_spec.value):
        return f"{kind}: {error}"
    return ""


def list_error(resources: Sequence[pb.GenericResource], *, reservation: bool = False) -> str:
    """'' when a list of generic resources is coherent, else what is wrong: a
    bad kind, unit name or count, a kind counted twice, a unit named twice,
    and (on a node, not in a `reservation`, which may ask for a count and
    particular units of one kind) a kind both counted and named."""
    counted: set[str] = set()
    names: dict[str, set[str]] = {}
    for resource in resources:
        if error := item_error(resource):
            return error
        kind = kind_of(resource)
        if resource.WhichOneof("resource") == "discrete_resource_spec":
            if kind in counted:
                return f"{kind}: counted twice"
            if kind in names and not reservation:
                return f"{kind}: given both as a count and as named units"
            counted.add(kind)
        else:
            unit = resource.named_resource_spec.value
            if kind in counted and not reservation:
                return f"{kind}: given both as a count and as named units"
            seen = names.setdefault(kind, set())
            if unit in seen:
                return f"{kind}: unit {unit!r} is named twice"
            seen.add(unit)
    return ""


def env(assigned: Iterable[pb.GenericResource]) -> list[str]:
    """DOCKER_RESOURCE_<KIND>=v1,v2 per kind, in first-seen order of the kinds."""
    values: dict[str, list[str]] = {}
    for resource in assigned:
        values.setdefault(kind_of(resource), []).append(value_text(resource))
    return [f"{ENV_PREFIX}_{kind}".upper() + "=" + ",".join(units)
            for kind, units in values.items()]


def text(resources: Iterable[pb.GenericResource]) -> str:
    """'gpu=nvidia0,nvidia1 fpga=2' for tables and inspect output."""
    values: dict[str, list[str]] = {}
    for resource in resources:
        values.setdefault(kind_of(resource), []).append(value_text(resource))
    return " ".join(f"{kind}={','.join(units)}" for kind, units in values.items())
