"""Image garbage collection: the settings, the pure plan (what to remove to get
below the low mark) and the periodic collector loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import ImageStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageGcSettings:
    """When images go. The store's size is measured against a capacity:
    max_bytes when set (the store's own bytes: pulled OCI layouts plus the
    regular files of the unpacked layers), else the filesystem holding the
    store (its used bytes, whatever uses them, against its size -- as the
    kubelet does). Above high_percent of the capacity, images that no
    container uses go, least recently used first, until the usage is at or
    below low_percent (or nothing more may go). Defaults: 80 % high, 60 % low
    of the store's filesystem, checked every 5 minutes and after every
    container removal. An image asked for (ensure()) less than min_age
    seconds ago stays, as the kubelet's image GC minimum age (default 2
    minutes): it closes the window between a pull and the container that
    uses it."""

    high_percent: float = 80.0
    low_percent: float = 60.0
    max_bytes: int | None = None
    interval: float = 300.0
    min_age: float = 120.0

    def __post_init__(self) -> None:
        if not 0 <= self.low_percent <= self.high_percent <= 100:
            raise ValueError(f"image gc: need 0 <= low ({self.low_percent:g}%) <= high "
                             f"({self.high_percent:g}%) <= 100")
        if self.max_bytes is not None and self.max_bytes <= 0:
            raise ValueError("image gc: max bytes must be positive")


@dataclass(frozen=True)
class GcImage:
    """An image as the collector sees it: its catalog key, the bytes of its
    own layout, its layers (diff-id hex, any order), when a container last
    asked for it, and whether it must stay (a container uses it, or a pull of
    it is in progress)."""

    key: str
    size: int
    layers: tuple[str, ...]
    last_used: float
    in_use: bool


@dataclass(frozen=True)
class GcPlan:
    images: tuple[str, ...]  # keys, in removal order
    layers: tuple[str, ...]  # diff-id hex
    freed: int  # bytes


def plan_gc(images: Collection[GcImage], layer_sizes: Mapping[str, int],
            protected_layers: Collection[str], usage: int, target: int) -> GcPlan:
    """What to remove to bring `usage` down to `target` bytes (pure).

    Layers on disk that no image references and nothing protects go first
    (debris); then images not in use, least recently used first (ties by
    key), each with the layers that no remaining image and nothing protected
    has. Never an image in use, never a layer of an image in use or in
    protected_layers. Stops as soon as usage - freed <= target; when even
    everything removable is not enough, removes everything removable."""
    protected = set(protected_layers)
    for image in images:
        if image.in_use:
            protected.update(image.layers)
    refs: Counter[str] = Counter()
    for image in images:
        refs.update(set(image.layers))
    freed = 0
    chosen_layers: list[str] = []

    def take_layer(layer: str) -> None:
        nonlocal freed
        chosen_layers.append(layer)
        freed += layer_sizes.get(layer, 0)

    for layer in sorted(layer_sizes):
        if usage - freed <= target:
            break
        if refs[layer] == 0 and layer not in protected:
            take_layer(layer)
    chosen_images: list[str] = []
    candidates = sorted((i for i in images if not i.in_use), key=lambda i: (i.last_used, i.key))
    for image in candidates:
        if usage - freed <= target:
            break
        chosen_images.append(image.key)
        freed += image.size
        for layer in sorted(set(image.layers)):
            refs[layer] -= 1
            if refs[layer] == 0 and layer not in protected and layer in layer_sizes:
                take_layer(layer)
    return GcPlan(tuple(chosen_images), tuple(chosen_layers), freed)


InUse = tuple[Collection[str], Collection[Sequence[Path]]]


class ImageGarbageCollector:
    """The periodic collection: every gc.interval seconds and whenever kicked
    (after a container is removed), asks `in_use` what the node's containers
    use -- (image references, overlay layer chains) -- and collects. Run it
    as a supervised loop (swarm.api.loops.start_supervised)."""

    def __init__(self, store: ImageStore, in_use: Callable[[], Awaitable[InUse]]) -> None:
        self.store = store
        self.in_use = in_use
        self._kicked = asyncio.Event()

    def kick(self) -> None:
        self._kicked.set()

    async def collect_once(self) -> list[str]:
        references, chains = await self.in_use()
        return await self.store.collect_garbage(references, in_use_layers=chains)

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kicked.wait(), self.store.gc.interval)
            self._kicked.clear()
            try:
                await self.collect_once()
            except OSError as error:
                log.warning("image gc failed: %s", error)
