"""Compose-format stack files (`docker stack deploy -c FILE`) -> typed API specs.

Pure apart from reading the file and its env_files: `parse_stack` turns the text
into a `Stack` of ServiceSpecs and NetworkSpecs named and labelled as docker
names them (STACK_SERVICE, STACK_NETWORK, label com.docker.stack.namespace=STACK),
or raises StackError on the first problem, as one line:

    web.yaml:12:9: services.web.ports[0]: invalid port "80a": ...

Every value keeps the line and column it was written at (the YAML node's mark), so
that errors and warnings point at the file. Keys compose knows but the orchestrator
does not support (build, depends_on, privileged, ...) are warnings naming the key
and its line, never dropped silently; unknown keys are errors, as they are in
compose's schema. After building, every spec also goes through the controller's
own `normalize_*` validation (swarm/api/validation.py), so the client cannot
accept a file that the server would refuse halfway through an apply.

Not supported (yet): nested interpolation (`${A:-${B}}`), `.env` files next to the
stack file (docker stack deploy does not read them either), `extends`, volume
drivers (volumes are each node's local directories). Secrets and configs come from
files (or exist already: `external:`), named by content (payloads.py).
Only the first problem is reported: fix it and run again.

The package follows docker/cli's compose loader:

    loader         YAML -> Nodes that keep their line and column
    interpolation  ${VAR} substitution (pure)
    schema         the keys we know, enumerated values, typed access to Nodes
    model          Location, Node, Stack, StackError, StackWarning
    context        what the converters of one file share
    convert        parse_stack / load_stack: the whole file
    top_level      the file's networks and volumes
    payloads       the file's secrets and configs, and the services' use of them
    services       one service -> a ServiceSpec
    validate       the controller's validation, reported at the compose key
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .convert import load_stack, parse_stack
    from .model import (
        Location,
        Stack,
        StackError,
        StackNetwork,
        StackPayload,
        StackService,
        StackVolume,
        StackWarning,
    )
    from .schema import DEFAULT_NETWORK, NAMESPACE_LABEL
    from .validate import iter_messages, service_error

# Each name's submodule is imported on first use (PEP 562), so that importing
# the package for NAMESPACE_LABEL or Stack (as every swarmctl start-up does,
# through completion and stack) does not load the YAML loader and converters.
_HOMES = {
    "load_stack": "convert", "parse_stack": "convert",
    "Location": "model", "Stack": "model", "StackError": "model", "StackNetwork": "model",
    "StackPayload": "model", "StackService": "model", "StackVolume": "model",
    "StackWarning": "model",
    "DEFAULT_NETWORK": "schema", "NAMESPACE_LABEL": "schema",
    "iter_messages": "validate", "service_error": "validate",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_NETWORK",
    "NAMESPACE_LABEL",
    "Location",
    "Stack",
    "StackError",
    "StackNetwork",
    "StackPayload",
    "StackService",
    "StackVolume",
    "StackWarning",
    "iter_messages",
    "load_stack",
    "parse_stack",
    "service_error",
]
