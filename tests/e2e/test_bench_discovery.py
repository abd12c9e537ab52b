"""bench.discovery's end-to-end mode (--scale-ups) runs on a local cluster of
its own, prints its figures and leaves nothing behind; bad input is one line
and makes nothing. The figures are not asserted (performance is measured,
never tested)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from swarm.cli.dev.cluster import STATE_ROOT

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(300)


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench.discovery", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=240, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def clusters() -> set[str]:
    """The local clusters' state directories and namespaces that exist."""
    netns = Path("/run/netns")
    names = {p.name for p in STATE_ROOT.iterdir()} if STATE_ROOT.is_dir() else set()
    return names | ({n for n in os.listdir(netns) if n.startswith("swd-")} if netns.is_dir()
                    else set())


def test_scale_ups_end_to_end_print_figures_and_leave_nothing() -> None:
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("the local cluster needs root (namespaces, runc); CI runs it as root")
    before = clusters()
    result = run_bench("--scale-ups", "2", "--nodes", "2")
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    figures = json.loads(line)
    assert (figures["mode"], figures["nodes"], figures["scale_ups"]) == ("end_to_end", 2, 2)
    for key in ("p50_ms", "p99_ms", "dns_p99_ms", "http_p99_ms"):
        assert figures[key] > 0, key
    assert clusters() <= before


@pytest.mark.parametrize(("args", "message"), [
    (["--scale-ups", "-1"], "--scale-ups: expected 1 to 200"),
    (["--scale-ups", "3", "--nodes", "1"], "--nodes: expected 2 to 10"),
])
def test_bad_input_is_one_line_and_makes_nothing(args: list[str], message: str) -> None:
    before = clusters() if os.geteuid() == 0 else set()
    result = run_bench(*args)
    assert result.returncode == 2
    assert result.stderr.strip() == f"python -m bench.discovery: error: {message}"
    assert result.stdout == ""
    if os.geteuid() == 0:
        assert clusters() <= before
