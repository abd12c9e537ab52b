"""Resolving what an operator types (`web`, `3f2a`, a full ID) to one object.

The order is docker's: an exact ID first, then an exact name, then a unique ID
prefix. Anything else is a LookupError whose first argument is a one-line
message naming the kind of object.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

T = TypeVar("T")


class NotFound(LookupError):
    """No object matches the reference."""


class Ambiguous(LookupError):
    """More than one object matches the reference."""


def _plural(kind: str, count: int) -> str:
    return kind if count == 1 else f"{kind}s"


def resolve_ref(ref: str, objects: Mapping[str, T], name_of: Callable[[T], str], kind: str) -> T:
    """The one object `ref` names; `objects` maps ID -> object.

    Raises NotFound ("service 'x' not found") or Ambiguous ("ambiguous reference
    'ab': matches 2 services"), both LookupErrors.
    """
    if not ref:
        raise NotFound(f"empty {kind} reference: expected a {kind} name or ID")
    exact = objects.get(ref)
    if exact is not None:
        return exact
    named = [obj for obj in objects.values() if name_of(obj) == ref]
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise Ambiguous(f"ambiguous reference {ref!r}: matches {len(named)} "
                        f"{_plural(kind, len(named))}")
    prefixed = [obj for obj_id, obj in objects.items() if obj_id.startswith(ref)]
    if len(prefixed) == 1:
        return prefixed[0]
    if len(prefixed) > 1:
        raise Ambiguous(f"ambiguous reference {ref!r}: matches {len(prefixed)} "
                        f"{_plural(kind, len(prefixed))}")
    raise NotFound(f"{kind} {ref!r} not found")
