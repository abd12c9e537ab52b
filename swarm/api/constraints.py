"""Placement constraints as docker writes them: `node.labels.zone==a`,
`node.role!=manager`, `node.hostname==web-1`, `node.id==abc`,
`engine.labels.os==linux`, `node.platform.os==linux`, `node.platform.arch==x86_64`.

Parsing happens once at the API edge (and again, cheaply, in the scheduler);
matching is a pure function of a constraint and a node.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from swarm.api.v1 import objects_pb2 as pb

_CONSTRAINT_RE = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(==|!=)\s*(.*?)\s*$")
_FIXED_KEYS = ("node.id", "node.hostname", "node.role", "node.platform.os", "node.platform.arch")
_LABEL_PREFIXES = ("node.labels.", "engine.labels.")


@dataclass(frozen=True, slots=True)
class Constraint:
    key: str  # e.g. node.labels.zone
    equal: bool  # == (True) or != (False)
    value: str
    text: str  # as the operator wrote it, for explanations

    def matches(self, node: pb.Node) -> bool:
        actual = node_attribute(node, self.key)
        # Docker compares case-insensitively, and a missing label is never equal.
        hit = actual is not None and actual.lower() == self.value.lower()
        return hit if self.equal else not hit


def parse_constraint(text: str) -> Constraint:
    """Parse one constraint; ValueError says what is wrong with it."""
    match = _CONSTRAINT_RE.match(text)
    if not match:
        raise ValueError(f"invalid constraint {text!r}: expected KEY==VALUE or KEY!=VALUE")
    key, operator, value = match.groups()
    if key not in _FIXED_KEYS and not any(
        key.startswith(prefix) and len(key) > len(prefix) for prefix in _LABEL_PREFIXES
    ):
        raise ValueError(
            f"invalid constraint {text!r}: unknown key {key!r} (expected node.id, node.hostname, "
            "node.role, node.platform.os, node.platform.arch, node.labels.NAME or "
            "engine.labels.NAME)"
        )
    if not value:
        raise ValueError(f"invalid constraint {text!r}: empty value")
    if key == "node.role" and value.lower() not in ("manager", "worker"):
        raise ValueError(f"invalid constraint {text!r}: node.role is manager or worker")
    return Constraint(key=key, equal=operator == "==", value=value, text=text.strip())


def parse_constraints(texts: Iterable[str]) -> list[Constraint]:
    return [parse_constraint(text) for text in texts]


def node_attribute(node: pb.Node, key: str) -> str | None:
    """The value a constraint or placement preference key names on a node, or None."""
    if key == "node.id":
        return node.id
    if key == "node.hostname":
        return node.description.hostname
    if key == "node.role":
        return "manager" if node.spec.role == pb.NodeSpec.MANAGER else "worker"
    if key == "node.platform.os":
        return node.description.platform.os
    if key == "node.platform.arch":
        return node.description.platform.architecture
    if key.startswith("node.labels."):
        return node.spec.labels.get(key.removeprefix("node.labels."))
    if key.startswith("engine.labels."):
        return node.description.engine_labels.get(key.removeprefix("engine.labels."))
    return None


def first_unmet(constraints: Sequence[Constraint], node: pb.Node) -> Constraint | None:
    """The first constraint the node fails, or None when it meets them all."""
    for constraint in constraints:
        if not constraint.matches(node):
            return constraint
    return None
