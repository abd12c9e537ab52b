"""Results and errors of loading a stack: where every value was written (Location), the
parsed Node tree, the Stack of specs, StackError and StackWarning."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarm.api.v1 import objects_pb2 as pb


@dataclass(frozen=True, order=True)
class Location:
    """Where something is written: 1-based line and column, as editors count."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


def _join(location: Location | None, path: str, text: str) -> str:
    parts = [str(location)] if location is not None else []
    if path:
        parts.append(path)
    return ": ".join([*parts, text])


class StackError(ValueError):
    """The one problem that stops a stack file: `FILE:LINE:COL: PATH: PROBLEM`."""

    def __init__(self, location: Location | None, path: str, problem: str) -> None:
        self.location = location
        self.path = path
        self.problem = " ".join(problem.split())  # always one line
        super().__init__(_join(location, path, self.problem))

    def __str__(self) -> str:
        return _join(self.location, self.path, self.problem)


@dataclass(frozen=True)
class StackWarning:
    """Something deployed differently from what the file may have meant."""

    location: Location | None
    path: str
    message: str

    def __str__(self) -> str:
        return _join(self.location, self.path, self.message)


@dataclass(frozen=True)
class Node:
    """A YAML value and where it was written. `value` is a dict[str, Node], a
    list[Node], or a scalar (str, int, float, bool or None)."""

    value: Any
    location: Location


@dataclass
class StackService:
    key: str  # the name in the file (`web`)
    spec: pb.ServiceSpec  # named STACK_web, networks by full name (resolved at the API)
    location: Location
    # compose path inside the service ("deploy.placement.constraints[0]") -> location
    where: dict[str, Location] = field(default_factory=dict)

    def locate(self, path: str) -> Location:
        """The location of `path`, or of its nearest written ancestor."""
        return locate_in(self.where, path, self.location)


def locate_in(where: Mapping[str, Location], path: str, default: Location) -> Location:
    while path:
        if path in where:
            return where[path]
        path = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", path)
    return default


@dataclass
class StackNetwork:
    key: str  # the name in the file (`backend`, or `default`)
    name: str  # STACK_backend, or the external network's own name
    external: bool
    spec: pb.NetworkSpec | None  # None for an external network
    location: Location
    where: dict[str, Location] = field(default_factory=dict)  # as StackService.where


@dataclass
class StackVolume:
    key: str
    name: str  # STACK_data, or the external volume's own name
    external: bool
    location: Location


@dataclass(frozen=True)
class StackPayload:
    """A top-level secret or config. From a file, it is stored as
    NAME.DIGEST (the first 6 hex digits of its content's SHA-256), so that a
    changed file is a new version (cli/stack_payloads.py); an external one is
    used under its own name."""

    key: str  # the name in the file (`db_password`)
    kind: str  # "secret" or "config"
    name: str  # what services reference: STACK_KEY.DIGEST, or the external name
    external: bool
    location: Location
    data: bytes | None = field(default=None, repr=False)  # None for an external one
    source: str = ""  # the file, as written


@dataclass
class Stack:
    name: str
    file: str
    services: dict[str, StackService]
    networks: dict[str, StackNetwork]  # only those used or declared
    volumes: dict[str, StackVolume]
    warnings: list[StackWarning]
    secrets: dict[str, StackPayload] = field(default_factory=dict)  # declared, by key
    configs: dict[str, StackPayload] = field(default_factory=dict)


def quote(value: object) -> str:
    """A user's value quoted for a one-line message, as in `invalid port "80a"`."""
    text = value if isinstance(value, str) else describe(value)
    if len(text) > 64:
        text = text[:61] + "..."
    return json.dumps(text, ensure_ascii=False)


def describe(value: object) -> str:
    if isinstance(value, Node):
        value = value.value
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def kind_of(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a string"


def default_stack_name(path: Path) -> str:
    """The name docker would give a stack from its file's directory: lowercased, with
    only letters, digits, '-' and '_' kept."""
    name = re.sub(r"[^a-z0-9_-]", "", path.resolve().parent.name.lower())
    return name.lstrip("_-")
