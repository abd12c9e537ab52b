"""Node conditions: the agent's disk-pressure decision (agent/conditions.py)
and the scheduler's filter that feeds such a node no new tasks."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from swarm.agent.conditions import DISK_PRESSURE, ConditionSettings, conditions_of, disk_pressure
from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.scheduler.filters import ConditionFilter
from tests.unit.test_scheduler import infos, node, only_reason, placements, schedule, tasks_of

MIB = 1 << 20


def test_disk_pressure_below_the_floor_or_the_ratio() -> None:
    settings = ConditionSettings(min_free_bytes=256 * MIB, min_free_ratio=0.05)
    assert disk_pressure(100 * MIB, 100_000 * MIB, settings)  # under the floor
    assert disk_pressure(4_000 * MIB, 100_000 * MIB, settings)  # under 5 %
    assert not disk_pressure(6_000 * MIB, 100_000 * MIB, settings)
    assert not disk_pressure(300 * MIB, 1_000 * MIB, settings)


def test_a_full_small_file_system_is_reported() -> None:
    """A real 8 MiB tmpfs as the state dir, filled (root; CI runs it as root)."""
    if os.geteuid() != 0:
        if not os.environ.get("CI"):
            pytest.skip("mounting a tmpfs needs root")
        raise AssertionError("CI runs as root")
    settings = ConditionSettings(min_free_bytes=2 * MIB, min_free_ratio=0.0)
    with tempfile.TemporaryDirectory(prefix="swarm-disk-") as directory:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", directory], check=True)
        try:
            state_dir = Path(directory)
            assert conditions_of(state_dir, settings) == []
            (state_dir / "fill").write_bytes(b"\0" * (7 * MIB))
            assert conditions_of(state_dir, settings) == [DISK_PRESSURE]
            (state_dir / "fill").unlink()
            assert conditions_of(state_dir, settings) == []
        finally:
            subprocess.run(["umount", directory], check=True)


def test_the_scheduler_feeds_no_node_that_reports_a_condition() -> None:
    full = node("full")
    full.status.conditions.append(DISK_PRESSURE)
    nodes = infos([full, node("ok")])
    condition = ConditionFilter()
    assert [n for n, info in nodes.items() if condition.check(info)] == ["ok"]
    assert placements(schedule(tasks_of("t", 4), nodes)) == {"ok": 4}
    del nodes["ok"]
    assert only_reason(schedule(tasks_of("t", 1), nodes)) == \
        "no suitable node (1 node reports a condition (disk pressure))"
    assert condition.explain(2) == "2 nodes report a condition (disk pressure)"
    assert pb.NodeStatus().conditions == []  # none unless reported


def test_node_ls_shows_a_condition_beside_the_state() -> None:
    from swarm.cli import render

    reporting = pb.Node(id="n" * 25, description=pb.NodeDescription(hostname="node-1"),
                        status=pb.NodeStatus(state=pb.NodeStatus.READY, addr="10.0.0.2",
                                             conditions=[DISK_PRESSURE]))
    row = render.nodes_table([reporting]).splitlines()[1]
    assert "Ready (disk-pressure)" in row
