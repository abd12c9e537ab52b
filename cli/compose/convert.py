"""Compose file -> Stack: the entry points (parse_stack, load_stack) and the
context the converters share."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from .context import Context
from .loader import YamlReader
from .model import (
    Location,
    Node,
    Stack,
    StackError,
    StackService,
    StackWarning,
    default_stack_name,
    kind_of,
    quote,
)
from .payloads import top_payloads
from .schema import STACK_NAME_RE, TOP_LEVEL_KEYS, UNSUPPORTED_TOP_LEVEL_KEYS, as_mapping, as_string
from .services import convert_service
from .top_level import top_networks, top_volumes
from .validate import validate_with_controller_rules


def parse_stack(text: str, *, filename: str = "stack.yaml", stack_name: str | None = None,
                default_name: str | None = None, base_dir: Path | None = None,
                environ: Mapping[str, str] | None = None,
                read_text: Callable[[Path], str] = Path.read_text) -> Stack:
    """Parse and validate a whole stack file; StackError on the first problem.

    The stack name is `stack_name`, or the file's top-level `name:`, or `default_name`
    (load_stack passes the file's directory's name, as docker does); `base_dir` is
    where relative env_file and bind paths start (the file's directory)."""
    warnings: list[StackWarning] = []
    env = os.environ if environ is None else environ
    reader = YamlReader(filename, env, warnings)
    root = reader.load(text)
    top_location = Location(filename, 1, 1)
    if root is None:
        raise StackError(top_location, "", "the file is empty: expected a `services:` mapping")
    if not isinstance(root.value, dict):
        raise StackError(root.location, "", f"expected a mapping with `services:` at the top, "
                         f"got {kind_of(root.value)}")
    top: dict[str, Node] = root.value
    for key, node in top.items():
        if key.startswith("x-") or key in TOP_LEVEL_KEYS:
            continue
        if key in UNSUPPORTED_TOP_LEVEL_KEYS:
            warnings.append(StackWarning(node.location, key, "not supported; ignored"))
            continue
        raise StackError(node.location, key, f"unknown top-level key (expected "
                         f"{', '.join(sorted(TOP_LEVEL_KEYS))}, or x-* extensions)")

    name = stack_name
    if name is None and "name" in top:
        name = as_string(top["name"], "name", allow_number=False)
    name = name or default_name
    if not name:
        raise StackError(top_location, "name", "no stack name: give one (--stack NAME), or "
                         "set `name:` at the top of the file")
    if not STACK_NAME_RE.fullmatch(name):
        raise StackError(top["name"].location if stack_name is None and "name" in top else None,
                         "name", f"invalid stack name {quote(name)}: expected lowercase "
                         "letters, digits, '-' or '_', starting with a letter or digit")

    context = Context(stack=name, file=filename, base_dir=base_dir or Path.cwd(), environ=env,
                       read_text=read_text, warnings=warnings, networks={}, volumes={})
    declared_networks = top_networks(context, top.get("networks"))
    context.volumes = top_volumes(context, top.get("volumes"))
    context.secrets = top_payloads(context, "secret", top.get("secrets"))
    context.configs = top_payloads(context, "config", top.get("configs"))

    services_node = top.get("services")
    if services_node is None or not as_mapping(services_node, "services"):
        raise StackError(services_node.location if services_node else top_location, "services",
                         "required: at least one service")
    services: dict[str, StackService] = {}
    for key, node in as_mapping(services_node, "services").items():
        services[key] = convert_service(context, key, node, declared_networks)

    warnings.sort(key=lambda warning: warning.location or top_location)
    stack = Stack(name=name, file=filename, services=services, networks=context.networks,
                  volumes=context.volumes, warnings=warnings, secrets=context.secrets,
                  configs=context.configs)
    validate_with_controller_rules(stack, {key: network for key, (_, network)
                                            in declared_networks.items()})
    return stack


def load_stack(path: Path, *, stack_name: str | None = None,
               environ: Mapping[str, str] | None = None) -> Stack:
    """Read and parse a stack file; a missing file is a StackError too."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise StackError(None, "", f"cannot read {path}: {reason}") from None
    return parse_stack(text, filename=str(path), stack_name=stack_name,
                       default_name=default_stack_name(path), base_dir=path.parent,
                       environ=environ)
