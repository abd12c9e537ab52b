"""Image garbage collection: the pure selection (plan_gc, with a hypothesis
property), and the store against a real registry -- images in use survive,
unused ones go least recently used first until under the low mark, a layer
shared with an image in use survives, a pull in progress is not broken, the
periodic loop runs when kicked."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.agent.images import (
    GcImage,
    ImageGarbageCollector,
    ImageGcSettings,
    ImageStore,
    InUse,
    plan_gc,
)
from swarm.agent.runtime import rootfs as fs
from swarm.host import mounts
from tests.agent.conftest import require_root_and_tools
from tests.registry import RegistryServer, build_image, busybox_entries, file_entry
from tests.waiting import eventually

# ------------------------------------------------------------------ pure


def _image(key: str, layers: tuple[str, ...], last_used: float, *, size: int = 10,
           in_use: bool = False) -> GcImage:
    return GcImage(key, size, layers, last_used, in_use)


def test_plan_removes_least_recently_used_first_until_the_low_mark() -> None:
    images = [_image("new", ("c",), 3.0), _image("old", ("a",), 1.0),
              _image("mid", ("b",), 2.0)]
    sizes = {"a": 100, "b": 100, "c": 100}
    usage = 330  # 3 images x (10 + 100)
    plan = plan_gc(images, sizes, (), usage, target=200)
    assert plan.images == ("old", "mid")
    assert plan.layers == ("a", "b")
    assert plan.freed == 220
    assert plan_gc(images, sizes, (), usage, target=330).images == ()


def test_plan_never_takes_an_image_in_use_nor_its_layers() -> None:
    images = [_image("used", ("base", "top"), 0.0, in_use=True),
              _image("sharing", ("base", "other"), 1.0)]
    sizes = {"base": 1000, "top": 10, "other": 10}
    plan = plan_gc(images, sizes, (), 2000, target=0)
    assert plan.images == ("sharing",)
    assert plan.layers == ("other",)  # base is shared with the image in use


def test_plan_takes_unreferenced_layers_first_but_not_protected_ones() -> None:
    images = [_image("a", ("x",), 1.0)]
    sizes = {"x": 10, "debris": 50, "pulling": 50}
    plan = plan_gc(images, sizes, {"pulling"}, 110, target=60)
    assert plan.images == ()
    assert plan.layers == ("debris",)


_layer_names = st.sampled_from([f"l{i}" for i in range(8)])
_images = st.lists(
    st.builds(GcImage, key=st.uuids().map(str), size=st.integers(0, 100),
              layers=st.lists(_layer_names, max_size=4).map(tuple),
              last_used=st.floats(0, 100), in_use=st.booleans()),
    max_size=8, unique_by=lambda i: i.key)


@settings(max_examples=300, deadline=None)
@given(images=_images, sizes=st.dictionaries(_layer_names, st.integers(0, 1000)),
       protected=st.sets(_layer_names), low=st.integers(0, 5000))
def test_plan_properties(images: list[GcImage], sizes: dict[str, int], protected: set[str],
                         low: int) -> None:
    usage = sum(i.size for i in images) + sum(sizes.values())
    plan = plan_gc(images, sizes, protected, usage, low)
    chosen = set(plan.images)
    used_layers = set(protected).union(*(i.layers for i in images if i.in_use))
    assert not any(i.in_use for i in images if i.key in chosen)
    assert not used_layers & set(plan.layers)
    # A layer goes only when no remaining image has it.
    remaining = [i for i in images if i.key not in chosen]
    assert not set(plan.layers) & set().union(*(i.layers for i in remaining))
    assert plan.freed == (sum(i.size for i in images if i.key in chosen)
                          + sum(sizes[h] for h in plan.layers))
    # Under the low mark whenever removing everything removable would get there.
    removable = [i for i in images if not i.in_use]
    keep = set(used_layers).union(*(i.layers for i in images if i.in_use))
    best = sum(i.size for i in removable) + sum(s for h, s in sizes.items() if h not in keep)
    if usage - best <= low:
        assert usage - plan.freed <= low
    else:
        assert plan.freed == best
    # Least recently used first: nothing removed is newer than an unused image kept.
    kept_unused = [i.last_used for i in remaining if not i.in_use]
    if kept_unused and chosen:
        assert max(i.last_used for i in images if i.key in chosen) <= min(kept_unused)


# ------------------------------------------------------------------ real registry


@pytest.fixture
def needs_root() -> None:
    require_root_and_tools()


@pytest.fixture(scope="module")
def gc_images(registry: RegistryServer) -> dict[str, str]:
    """Four images on one busybox base layer, each with its own top layer of
    200 kB of noise (incompressible)."""
    return {name: build_image(registry.addr, f"gc-{name}", "v1",
                              [busybox_entries(), [file_entry(name, os.urandom(200_000))]])
            for name in ("old", "mid", "new", "used")}


@pytest.fixture
async def store(tmp_path: Path, needs_root: None) -> AsyncIterator[ImageStore]:
    instance = ImageStore(tmp_path / "images", gc=ImageGcSettings(max_bytes=2 * 1024**3))
    try:
        yield instance
    finally:
        await instance.close()


def _top_layer_bytes(image_layers: tuple[Path, ...]) -> int:
    return sum(f.stat().st_size for f in image_layers[-1].rglob("*") if f.is_file())


async def test_unused_images_go_oldest_first_until_under_the_low_mark(
        store: ImageStore, gc_images: dict[str, str]) -> None:
    images = {n: await store.ensure(r) for n, r in gc_images.items()}
    for name in ("old", "mid", "new", "used"):  # a clear LRU order
        key_dir = next(d for d in store.images_dir.iterdir()
                       if f'"{gc_images[name]}"' in (d / "image.json").read_text())
        stamp = time.time() - 1000 + ("old", "mid", "new", "used").index(name)
        os.utime(key_dir / "image.json", (stamp, stamp))
    usage = await store.disk_usage()
    layout = {n: next(r.size for r in store._catalog.values() if r.reference == gc_images[n])
              for n in gc_images}
    freed = {n: layout[n] + _top_layer_bytes(images[n].layers) for n in gc_images}
    # Low mark between "old and mid removed" and "only old removed".
    low = usage - freed["old"] - freed["mid"] + freed["new"] // 2
    store.gc = ImageGcSettings(max_bytes=usage, high_percent=90,
                               low_percent=100 * low / usage)
    removed = await store.collect_garbage([gc_images["used"]])
    assert removed == sorted([gc_images["old"], gc_images["mid"]])
    assert await store.disk_usage() <= low
    assert not images["old"].layers[-1].exists()
    assert not images["mid"].layers[-1].exists()
    assert all(layer.is_dir() for layer in images["new"].layers)
    assert all(layer.is_dir() for layer in images["used"].layers)  # the shared base too
    # Under the high mark now: nothing more goes.
    assert await store.collect_garbage([gc_images["used"]]) == []
    count = store.pull_count
    assert await store.ensure(gc_images["used"]) == images["used"]
    assert store.pull_count == count


async def test_layers_mounted_by_containers_keep_their_image(
        store: ImageStore, gc_images: dict[str, str], tmp_path: Path) -> None:
    used = await store.ensure(gc_images["used"])
    other = await store.ensure(gc_images["new"])
    bundle = tmp_path / "bundles" / "c1"
    for name in ("upper", "work"):
        (bundle / name).mkdir(parents=True)
    fs.mount_overlay(used.layers, bundle / "upper", bundle / "work", bundle / "rootfs")
    try:
        chains = fs.overlay_lowers_under(tmp_path / "bundles")
        assert chains == [used.layers]
        removed = await store.collect_garbage([], in_use_layers=chains, force=True)
        assert removed == [gc_images["new"]]
        assert all(layer.is_dir() for layer in used.layers)
        assert not other.layers[-1].exists()
    finally:
        mounts.unmount_all_under(bundle)


async def test_a_pull_in_progress_is_not_broken(store: ImageStore,
                                                gc_images: dict[str, str]) -> None:
    old = await store.ensure(gc_images["old"])
    stamp = time.time() - 1000  # old enough to go
    for key_dir in store.images_dir.iterdir():
        os.utime(key_dir / "image.json", (stamp, stamp))
    store.gc = ImageGcSettings(max_bytes=1, high_percent=0, low_percent=0)  # always collect
    pulling = asyncio.create_task(store.ensure(gc_images["mid"]))  # shares old's base layer
    removed: list[str] = []
    await asyncio.sleep(0)  # the pull has begun
    assert store._inflight
    while not pulling.done():  # collections all through the pull, and just after it
        # (then the new image is younger than min_age)
        removed += await store.collect_garbage([])
        await asyncio.sleep(0.005)
    image = await pulling
    assert gc_images["old"] in removed
    assert gc_images["mid"] not in removed
    assert all(layer.is_dir() for layer in image.layers)
    assert image.layers[0] == old.layers[0]  # the shared base survived the removal of old
    count = store.pull_count
    assert await store.ensure(gc_images["mid"]) == image
    assert store.pull_count == count


async def test_the_collector_loop_runs_when_kicked(tmp_path: Path, needs_root: None,
                                                   gc_images: dict[str, str]) -> None:
    store = ImageStore(tmp_path / "images",
                       gc=ImageGcSettings(max_bytes=1, high_percent=0, low_percent=0,
                                          interval=3600, min_age=0))
    asked: list[int] = []

    async def in_use() -> InUse:
        asked.append(1)
        return [gc_images["used"]], []

    collector = ImageGarbageCollector(store, in_use)
    loop = asyncio.create_task(collector.run())
    try:
        await store.ensure(gc_images["used"])
        await store.ensure(gc_images["old"])
        collector.kick()
        await eventually(lambda: store.gc_runs > 0)
        assert store.gc_runs == 1
        assert asked
        assert [r.reference for r in store._catalog.values()] == [gc_images["used"]]
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await store.close()
