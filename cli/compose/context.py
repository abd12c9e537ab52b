"""What the converters of one file share: the stack's name, where the file is,
the environment, and the networks and volumes found so far; warnings go here."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .model import Node, StackNetwork, StackPayload, StackVolume, StackWarning


@dataclass
class Context:
    stack: str
    file: str
    base_dir: Path
    environ: Mapping[str, str]
    read_text: Callable[[Path], str]
    warnings: list[StackWarning]
    networks: dict[str, StackNetwork]
    volumes: dict[str, StackVolume]
    # The file's top-level secrets and configs (cli/compose/payloads.py), by key.
    secrets: dict[str, StackPayload] = field(default_factory=dict)
    configs: dict[str, StackPayload] = field(default_factory=dict)
    read_bytes: Callable[[Path], bytes] = Path.read_bytes

    def warn(self, node: Node, path: str, message: str) -> None:
        self.warnings.append(StackWarning(node.location, path, message))
