"""bench.overlay runs end to end (short), prints its figures and leaves
nothing behind; bad input is one line and makes nothing. The figures
themselves are not asserted (performance is measured, never tested)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.overlay import header_bound_ratio, line_goodput, summarize
from tests.network.conftest import require_root

REPO = Path(__file__).resolve().parents[2]


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench.overlay", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def leftovers(pid: int) -> list[str]:
    """Namespaces a run of that process left (Hosts names them swt-PID-...)."""
    run = Path("/run/netns")
    return [n for n in os.listdir(run) if n.startswith(f"swt-{pid}-")] if run.is_dir() else []


def iperf3_servers() -> list[str]:
    found = subprocess.run(["pgrep", "-a", "-f", "iperf3 --server --bind 1"], capture_output=True,
                           text=True, check=False).stdout
    return found.splitlines()


def test_a_short_run_prints_both_paths_and_leaves_nothing() -> None:
    require_root()
    before = iperf3_servers()
    process = subprocess.Popen([sys.executable, "-m", "bench.overlay", "--rounds", "1",
                                "--seconds", "1", "--link-gbit", "1"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    (line,) = out.splitlines()
    figures = json.loads(line)
    assert figures["bench"] == "overlay"
    assert (figures["underlay_mtu"], figures["overlay_mtu"]) == (1500, 1450)
    for key in ("overlay_gbps", "underlay_gbps", "link_overlay_gbps", "link_underlay_gbps"):
        assert figures[key] > 0, key
    assert len(figures["overlay_gbps_rounds"]) == len(figures["underlay_gbps_rounds"]) == 1
    # Shaped to 1 Gbit/s, neither path gets (much) beyond the line rate.
    assert figures["link_underlay_gbps"] < 1.2
    assert 0 < figures["link_underlay_of_line_rate"] < 1.2
    assert leftovers(process.pid) == []
    assert iperf3_servers() == before


@pytest.mark.parametrize(("args", "message"), [
    (["--rounds", "0"], "--rounds 0: expected at least 1"),
    (["--mtu", "1300"], "--mtu 1300: expected at least 1330"),
    (["--link-gbit", "-1"], "--link-gbit -1.0: expected at least 0"),
])
def test_bad_input_is_one_line_and_makes_nothing(args: list[str], message: str) -> None:
    # Checked before anything is made (or root is asked for).
    result = run_bench(*args)
    assert result.returncode != 0
    assert result.stderr.strip() == f"bench.overlay: {message}"
    assert result.stdout == ""


def test_header_bound_ratio_is_the_mss_ratio() -> None:
    # MSS 1398 inside a 1450 overlay against 1448 on a 1500 underlay.
    assert header_bound_ratio(1450, 1500) == pytest.approx(1398 / 1448)
    assert header_bound_ratio(8950, 9000) > header_bound_ratio(1450, 1500)


def test_line_goodput_counts_whole_frames() -> None:
    assert line_goodput(10, 1500) == pytest.approx(10 * 1448 / 1514)


def test_summarize_takes_medians_and_keeps_every_round() -> None:
    figures = {"overlay": [{"gbps": 8.0, "retransmits": 1}, {"gbps": 9.0, "retransmits": 0},
                           {"gbps": 3.0, "retransmits": 2}],
               "underlay": [{"gbps": 10.0, "retransmits": 0}, {"gbps": 9.5, "retransmits": 4},
                            {"gbps": 10.5, "retransmits": 0}]}
    summary = summarize("link_", figures)
    assert summary["link_overlay_gbps"] == 8.0
    assert summary["link_underlay_gbps"] == 10.0
    assert summary["link_overlay_ratio"] == 0.8
    assert summary["link_overlay_gbps_rounds"] == [8.0, 9.0, 3.0]
    assert summary["link_underlay_retransmits"] == 4
