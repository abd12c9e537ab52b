"""`--generic-resource` (service create) and `--generic-resource-add/-rm`
(service update), docker's flags: what each task reserves of the nodes'
generic resources (swarm/api/generic_resources.py), e.g. gpu=1.

`--generic-resource KIND=COUNT` asks for any COUNT units of the kind; as an
extension, `KIND=UNIT[,UNIT...]` asks for those particular named units (as
compose's device_ids does). On update, `-rm KIND` drops what is reserved of
the kind and `-add` then adds: a count replaces the kind's count.
"""

from __future__ import annotations

from collections.abc import Sequence

from swarm.api import generic_resources as gres
from swarm.api.v1 import objects_pb2 as pb

from ..errors import BadFlag


def _parse(flag: str, items: Sequence[str]) -> list[pb.GenericResource]:
    parsed: list[pb.GenericResource] = []
    for item in items:
        try:
            parsed += gres.parse(item)
        except ValueError as error:
            raise BadFlag(flag, str(error)) from None
    return parsed


def _check(flag: str, resources: Sequence[pb.GenericResource]) -> None:
    if error := gres.list_error(resources, reservation=True):
        raise BadFlag(flag, error)


def apply_create(spec: pb.ServiceSpec, items: Sequence[str]) -> None:
    if not items:
        return
    wanted = _parse("--generic-resource", items)
    _check("--generic-resource", wanted)
    spec.task.resources.reservations.generic.extend(wanted)


def apply_update(spec: pb.ServiceSpec, add: Sequence[str], remove: Sequence[str]) -> None:
    if not add and not remove:
        return
    for kind in remove:
        if error := gres.kind_error(kind):
            raise BadFlag("--generic-resource-rm", error)
    added = _parse("--generic-resource-add", add)
    counted = {gres.kind_of(r) for r in added
               if r.WhichOneof("resource") == "discrete_resource_spec"}
    gone = set(remove)
    kept = [r for r in spec.task.resources.reservations.generic
            if gres.kind_of(r) not in gone and not (
                gres.kind_of(r) in counted
                and r.WhichOneof("resource") == "discrete_resource_spec")]
    known = {r.SerializeToString(deterministic=True) for r in kept}
    result = kept + [r for r in added if r.SerializeToString(deterministic=True) not in known]
    _check("--generic-resource-add", result)
    generic = spec.task.resources.reservations.generic
    del generic[:]
    generic.extend(result)
