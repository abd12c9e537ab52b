"""Generic resources on one node: what it has, what its tasks hold, which
units the next task gets.

A node advertises per kind either a count (`gpu=2`) or named units
(`gpu=nvidia0,nvidia1`). A task asks per kind for a count and, possibly,
particular named units (compose device_ids). When the scheduler places a task
it picks the units (`Pool.assign`, pure: the lowest free names in natural
order, so nvidia2 comes before nvidia10) and the reconciler writes them on
the task (Task.assigned_generic_resources). From then on the task *holds*
them: every live task's holding is accounted on its node, whatever the
scheduler's memory, so a restart of the controller rebuilds the same free set
from the stored tasks and a unit is never handed out twice.

A live task with no assignment written yet (a global task bound to its node
while PENDING, or one stored before this existed) holds the count it asks
for, unnamed: free counts stay right, and its names are picked when it is
scheduled.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from swarm.api import generic_resources as gres
from swarm.api.v1 import objects_pb2 as pb

# Per kind, sorted by kind: (kind, count, names). For a named kind the names
# are the units (count >= len(names)); for a counted kind, names is empty.
Holding = tuple[tuple[str, int, tuple[str, ...]], ...]
Wants = Holding  # the same shape: a count per kind and the particular units asked for
NOTHING: Holding = ()


def unit_order(name: str) -> list[str | int]:
    """Natural order: nvidia2 before nvidia10. re.split with a group alternates
    text and digits, so lists compare int with int and str with str."""
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", name))]


def _per_kind(resources: Iterable[pb.GenericResource]) -> Holding:
    counts: collections.Counter[str] = collections.Counter()
    names: dict[str, list[str]] = {}
    for resource in resources:
        kind = gres.kind_of(resource)
        if resource.WhichOneof("resource") == "named_resource_spec":
            counts[kind] += 1
            names.setdefault(kind, []).append(resource.named_resource_spec.value)
        else:
            counts[kind] += max(0, resource.discrete_resource_spec.value)
    return tuple((kind, counts[kind], tuple(sorted(set(names.get(kind, ())), key=unit_order)))
                 for kind in sorted(counts) if counts[kind] > 0)


def wants_of(task: pb.Task) -> Wants:
    """What the task's spec reserves, per kind."""
    reserved = task.spec.resources.reservations.generic
    return _per_kind(reserved) if reserved else NOTHING


def holding_of(task: pb.Task) -> Holding:
    """What a live task holds on its node: its assignment, or (none written
    yet) what it asks for."""
    if task.assigned_generic_resources:
        return _per_kind(task.assigned_generic_resources)
    return wants_of(task)


def to_proto(holding: Holding) -> list[pb.GenericResource]:
    resources: list[pb.GenericResource] = []
    for kind, count, names in holding:
        resources += [gres.named(kind, name) for name in names]
        if count > len(names):
            resources.append(gres.discrete(kind, count - len(names)))
    return resources


@dataclass(slots=True)
class Pool:
    """A node's generic resources and what its live tasks hold of them."""

    totals: dict[str, int] = field(default_factory=dict)
    units: dict[str, frozenset[str]] = field(default_factory=dict)  # named kinds only
    used: collections.Counter[str] = field(default_factory=collections.Counter)
    taken: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, resources: pb.Resources) -> Pool:
        pool = cls()
        pool.update(resources)
        return pool

    def update(self, resources: pb.Resources) -> None:
        """The node's advertisement changed (agent restart with other flags):
        new totals, holdings kept."""
        self.totals, self.units = {}, {}
        for kind, count, names in _per_kind(resources.generic):
            self.totals[kind] = count
            if names:
                self.units[kind] = frozenset(names)

    def free_units(self, kind: str) -> list[str]:
        taken = self.taken.get(kind, set())
        return sorted((u for u in self.units.get(kind, ()) if u not in taken), key=unit_order)

    def lacking(self, wants: Wants) -> str:
        """The first kind (in kind order) the node cannot give; '' when it fits."""
        for kind, count, names in wants:
            if self.totals.get(kind, 0) - self.used[kind] < count:
                return kind
            if kind in self.units:
                free = set(self.free_units(kind))
                if len(free) < count or not free.issuperset(names):
                    return kind
            elif names:  # particular units asked of a counted kind (or one it lacks)
                return kind
        return ""

    def assign(self, wants: Wants) -> Holding | None:
        """The units a task asking `wants` gets here, or None when it does not
        fit. Pure: `hold` accounts the result."""
        if self.lacking(wants):
            return None
        holding: list[tuple[str, int, tuple[str, ...]]] = []
        for kind, count, names in wants:
            if kind not in self.units:
                holding.append((kind, count, ()))
                continue
            extra = [u for u in self.free_units(kind) if u not in names][:count - len(names)]
            holding.append((kind, count, tuple(sorted((*names, *extra), key=unit_order))))
        return tuple(holding)

    def hold(self, holding: Holding) -> None:
        for kind, count, names in holding:
            self.used[kind] += count
            if names:
                self.taken.setdefault(kind, set()).update(names)

    def release(self, holding: Holding) -> None:
        for kind, count, names in holding:
            self.used[kind] -= count
            if self.used[kind] <= 0:
                del self.used[kind]
            if names:
                taken = self.taken.get(kind)
                if taken is not None:
                    taken.difference_update(names)
                    if not taken:
                        del self.taken[kind]
