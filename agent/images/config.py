"""What the runtime needs of an image: its layers and the config (entrypoint, env, user, health check)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarm.agent.runtime.base import ImageConfig, ImageInput


@dataclass(frozen=True)
class Healthcheck:
    """Docker's Healthcheck from the image config; durations in seconds, 0
    meaning "not set" (the runtime's default applies)."""

    test: tuple[str, ...]  # ("CMD", ...), ("CMD-SHELL", "..."), ("NONE",) or () to inherit
    interval: float = 0.0
    timeout: float = 0.0
    start_period: float = 0.0
    retries: int = 0
    start_interval: float = 0.0


@dataclass(frozen=True)
class Image:
    """An image present on this node, ready to run.

    layers are the unpacked layer directories LOWEST first (manifest order).
    overlayfs's lowerdir= wants them HIGHEST first: use `lowerdir`.
    digest is the digest of the manifest that was pulled (for an image index,
    the manifest of this node's platform)."""

    reference: str
    digest: str
    layers: tuple[Path, ...]
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()  # KEY=VALUE
    working_dir: str = ""
    user: str = ""
    exposed_ports: tuple[str, ...] = ()  # "80/tcp"
    healthcheck: Healthcheck | None = None
    stop_signal: str = ""
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def lowerdir(self) -> str:
        """The layers as overlayfs's lowerdir= option: highest first."""
        return ":".join(str(layer) for layer in reversed(self.layers))

    def runtime_input(self) -> ImageInput:
        """What the container runtime takes (agent.runtime.base.ImageInput)."""
        return ImageInput(layers=self.layers, config=ImageConfig(
            entrypoint=self.entrypoint, cmd=self.cmd, env=self.env,
            working_dir=self.working_dir, user=self.user, stop_signal=self.stop_signal))


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(str(item) for item in value)
    if isinstance(value, str):
        return (value,)
    return ()


def _seconds(value: Any) -> float:
    return value / 1e9 if isinstance(value, int | float) and value > 0 else 0.0


def image_from_config(reference: str, digest: str, layers: tuple[Path, ...],
                       config: Mapping[str, Any]) -> Image:
    container = config.get("config") or {}
    if not isinstance(container, dict):
        container = {}
    health = container.get("Healthcheck")
    healthcheck = None
    if isinstance(health, dict):
        retries = health.get("Retries")
        healthcheck = Healthcheck(
            test=_strings(health.get("Test")), interval=_seconds(health.get("Interval")),
            timeout=_seconds(health.get("Timeout")),
            start_period=_seconds(health.get("StartPeriod")),
            start_interval=_seconds(health.get("StartInterval")),
            retries=retries if isinstance(retries, int) and retries > 0 else 0)
    ports = container.get("ExposedPorts")
    labels = container.get("Labels")
    return Image(
        reference=reference, digest=digest, layers=layers,
        entrypoint=_strings(container.get("Entrypoint")),
        cmd=_strings(container.get("Cmd")),
        env=_strings(container.get("Env")),
        working_dir=str(container.get("WorkingDir") or ""),
        user=str(container.get("User") or ""),
        exposed_ports=tuple(sorted(ports)) if isinstance(ports, dict) else (),
        healthcheck=healthcheck,
        stop_signal=str(container.get("StopSignal") or ""),
        labels=tuple(sorted((str(k), str(v)) for k, v in labels.items()))
        if isinstance(labels, dict) else (),
    )
