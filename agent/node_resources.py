"""This node's generic resources: `--generic-resource` flags and NVIDIA devices.

What the node advertises (NodeDescription.resources.generic) comes from the
operator's `--generic-resource KIND=COUNT` / `KIND=UNIT[,UNIT...]` flags and,
for kind `gpu` when no flag names it, from the NVIDIA device nodes found under
`--device-dir` (default /dev): each character device `nvidiaN` is one named
unit `nvidiaN` of kind gpu. The operator's word wins over discovery, so a
machine whose GPUs are known by UUID says `--generic-resource gpu=GPU-...`.

Discovered units are *device-backed*: a task given `nvidia1` gets
/dev/nvidia1 in its container (linux.devices and a device-cgroup allow rule,
as `--device` does) together with the driver's control devices that exist
(nvidiactl, nvidia-uvm, ...), which every CUDA process opens. An operator's
named unit whose name is that of a device node found there (`gpu=nvidia0`) is
device-backed the same way. Counted kinds and other names carry no device.

Discovery runs once at start: devices do not come and go under a running agent.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from swarm.api import generic_resources as gres
from swarm.api.v1 import objects_pb2 as pb

GPU_KIND = "gpu"
_GPU_DEVICE = re.compile(r"nvidia(\d+)")
# Opened by every CUDA process besides its GPUs' own nodes.
CONTROL_DEVICES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")

# (path on the host, path in the container): a fake device directory's
# nvidia0 still appears as /dev/nvidia0 in the container, where CUDA looks.
DevicePath = tuple[str, str]
# (kind, unit name, its device nodes)
DeviceBacking = tuple[str, str, tuple[DevicePath, ...]]


@dataclass(frozen=True)
class NodeResources:
    advertised: tuple[pb.GenericResource, ...] = ()
    devices: tuple[DeviceBacking, ...] = ()


def nvidia_units(entries: Iterable[tuple[str, int]]) -> list[str]:
    """Names of the GPU device nodes among (file name, st_mode) of a device
    directory: character devices nvidiaN, in index order."""
    found = [(int(m.group(1)), name) for name, mode in entries
             if (m := _GPU_DEVICE.fullmatch(name)) and stat.S_ISCHR(mode)]
    return [name for _, name in sorted(found)]


def plan(flags: Sequence[pb.GenericResource], entries: Sequence[tuple[str, int]],
         device_dir: str) -> NodeResources:
    """What the node advertises and which units have devices, from the flags
    (already checked) and the device directory's (name, st_mode) entries."""
    gpus = nvidia_units(entries)
    char_devices = {name for name, mode in entries if stat.S_ISCHR(mode)}
    controls = tuple(_device(device_dir, name) for name in CONTROL_DEVICES
                     if name in char_devices)
    advertised = list(flags)
    if gpus and not any(gres.kind_of(r) == GPU_KIND for r in flags):
        advertised += [gres.named(GPU_KIND, name) for name in gpus]
    devices: list[DeviceBacking] = []
    gpu_set = set(gpus)
    for resource in advertised:
        if resource.WhichOneof("resource") != "named_resource_spec":
            continue
        unit = resource.named_resource_spec.value
        if unit in gpu_set:
            devices.append((resource.named_resource_spec.kind, unit,
                            (_device(device_dir, unit), *controls)))
    return NodeResources(advertised=tuple(advertised), devices=tuple(devices))


def _device(device_dir: str, name: str) -> DevicePath:
    return os.path.join(device_dir, name), f"/dev/{name}"


def scan(device_dir: Path) -> list[tuple[str, int]]:
    """(name, st_mode) of the directory's entries; a missing directory has none."""
    entries: list[tuple[str, int]] = []
    try:
        names = os.listdir(device_dir)
    except OSError:
        return entries
    for name in names:
        if not name.startswith("nvidia"):
            continue  # /dev is large; only NVIDIA's nodes matter
        try:
            entries.append((name, os.lstat(device_dir / name).st_mode))
        except OSError:
            continue
    return entries


def discover(flags: Sequence[pb.GenericResource], device_dir: Path) -> NodeResources:
    return plan(flags, scan(device_dir), str(device_dir))


def device_paths(devices: Iterable[DeviceBacking],
                 assigned: Iterable[pb.GenericResource]) -> list[DevicePath]:
    """The device nodes a task given `assigned` gets, each once, in order."""
    by_unit = {(kind, unit): paths for kind, unit, paths in devices}
    paths: list[DevicePath] = []
    for resource in assigned:
        if resource.WhichOneof("resource") != "named_resource_spec":
            continue
        spec = resource.named_resource_spec
        for path in by_unit.get((spec.kind, spec.value), ()):
            if path not in paths:
                paths.append(path)
    return paths
