"""Image references for the image store: swarm.api.imageref's (shared with
swarmctl), with invalid ones raised as ImageError (a task's status)."""

from __future__ import annotations

from swarm.api.imageref import (
    DEFAULT_REGISTRY,
    InvalidReference,
    Reference,
    is_loopback_registry,
    registry_address,
    registry_key,
)
from swarm.api.imageref import parse_reference as _parse

from .errors import ImageError

__all__ = [
    "DEFAULT_REGISTRY",
    "Reference",
    "is_loopback_registry",
    "normalize_reference",
    "parse_reference",
    "registry_address",
    "registry_key",
]


def parse_reference(text: str) -> Reference:
    """swarm.api.imageref.parse_reference; raises ImageError when invalid."""
    try:
        return _parse(text)
    except InvalidReference as error:
        raise ImageError(str(error)) from None


def normalize_reference(text: str) -> str:
    """The canonical string of a reference (see parse_reference)."""
    return str(parse_reference(text))
