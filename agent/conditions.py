"""What a node reports about itself beyond being alive: its conditions, sent
with every heartbeat and kept on the node (NodeStatus.conditions); the
scheduler places no new task on a node with one.

    disk-pressure   the file system of the agent's state directory (images,
                    container layers, logs) has less free space than
                    `min_free_bytes` or `min_free_ratio` of its size

As the kubelet's `nodefs.available` eviction signal, with a floor that fits
small disks; what already runs stays (no eviction here), only new work goes
elsewhere. The decision is pure (`disk_pressure`); `conditions_of` reads the
file system.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DISK_PRESSURE = "disk-pressure"


@dataclass(frozen=True)
class ConditionSettings:
    min_free_bytes: int = 256 << 20
    min_free_ratio: float = 0.05


def disk_pressure(free: int, total: int, settings: ConditionSettings) -> bool:
    return free < settings.min_free_bytes or (total > 0 and free < total * settings.min_free_ratio)


def conditions_of(state_dir: Path, settings: ConditionSettings) -> list[str]:
    """The node's conditions now, sorted; none when the file system cannot be read."""
    try:
        stat = os.statvfs(state_dir)
    except OSError:
        return []
    free, total = stat.f_bavail * stat.f_frsize, stat.f_blocks * stat.f_frsize
    return [DISK_PRESSURE] if disk_pressure(free, total, settings) else []
