"""This node's platform, as OCI image indexes name platforms."""

from __future__ import annotations

import platform as platform_module
from dataclasses import dataclass, field

_ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
                  "armv7l": "arm", "armv6l": "arm", "i386": "386", "i686": "386",
                  "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def host_architecture() -> str:
    """platform.machine() in OCI's words (x86_64 -> amd64, aarch64 -> arm64)."""
    machine = platform_module.machine().lower()
    return _ARCHITECTURES.get(machine, machine)


@dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = field(default_factory=host_architecture)
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)
