"""`swarm-agent`'s command line: flags, bad flags (one line, non-zero exit),
the node description and the per-state-dir runtime settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from swarm.agent.main import default_cgroup_parent, describe, parse_args, runc_settings


def _args(tmp_path: Path, *extra: str) -> list[str]:
    return ["--controller", "127.0.0.1:2377", "--state-dir", str(tmp_path / "state"),
            "--advertise-addr", "127.0.0.1", *extra]


def test_flags(tmp_path: Path) -> None:
    config = parse_args(_args(tmp_path, "--controller", "10.0.0.2:2377", "--label", "zone=a",
                              "--label", "ssd=", "--registry-insecure", "reg:5000",
                              "--hostname", "n1", "--bind-root", str(tmp_path)))
    assert config.controllers == ("127.0.0.1:2377", "10.0.0.2:2377")
    assert config.labels == {"zone": "a", "ssd": ""}
    assert config.insecure_registries == ("reg:5000",)
    assert config.hostname == "n1"
    assert config.state_dir == tmp_path / "state"
    assert config.state_dir.is_dir()
    settings = runc_settings(config)
    assert settings.state_dir == tmp_path / "state" / "runtime"
    assert settings.allowed_bind_roots == (tmp_path,)
    assert settings.cgroup_parent == config.cgroup_parent == default_cgroup_parent(
        tmp_path / "state")

    description = describe(config)
    assert description.hostname == "n1"
    assert description.advertise_addr == "127.0.0.1"
    assert list(description.addresses) == ["127.0.0.1"]
    assert description.resources.nano_cpus == (os.cpu_count() or 1) * 1_000_000_000
    assert description.resources.memory_bytes > 0
    assert dict(description.engine_labels) == {"zone": "a", "ssd": ""}
    assert description.platform.os == "linux"


def test_each_state_dir_has_its_own_cgroup_parent(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    assert default_cgroup_parent(one) != default_cgroup_parent(two)
    assert default_cgroup_parent(one) == default_cgroup_parent(one)  # stable: adoption
    assert parse_args(_args(tmp_path, "--cgroup-parent", "mine")).cgroup_parent == "mine"


def test_deep_state_dirs_get_short_socket_dirs(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 80)
    config = parse_args(["--controller", "h:1", "--state-dir", str(deep),
                         "--advertise-addr", "::1"])
    socket_dir = runc_settings(config).sockets_dir
    assert len(f"{socket_dir}/{'a' * 64}/attach") <= 107


@pytest.mark.parametrize(("args", "message"), [
    (["--controller", "nohostport"], "--controller: expected HOST:PORT, got 'nohostport'"),
    (["--advertise-addr", "host.example"], "not an IP address: 'host.example'"),
    (["--label", "novalue"], "expected KEY=VALUE, got 'novalue'"),
    (["--cgroup-parent", "../up"], "--cgroup-parent: invalid cgroup parent '../up'"),
])
def test_bad_flags_give_one_clear_line(tmp_path: Path, args: list[str], message: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args([*_args(tmp_path), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert message in err


def test_missing_flags_from_the_command_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "swarm.agent.main", "--controller", "h:1"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("swarm-agent: error: the following arguments are required:")
    assert result.stderr.count("\n") == 1


def test_image_gc_flags(tmp_path: Path) -> None:
    default = parse_args(_args(tmp_path)).image_gc
    assert (default.high_percent, default.low_percent, default.max_bytes) == (80.0, 60.0, None)
    config = parse_args(_args(tmp_path, "--image-gc-high", "90%", "--image-gc-low", "70",
                              "--image-gc-max-bytes", "1000000"))
    assert config.image_gc.high_percent == 90.0
    assert config.image_gc.low_percent == 70.0
    assert config.image_gc.max_bytes == 1_000_000


@pytest.mark.parametrize("flags", [("--image-gc-high", "50", "--image-gc-low", "60"),
                                   ("--image-gc-high", "101"), ("--image-gc-low", "x"),
                                   ("--image-gc-max-bytes", "0")])
def test_bad_image_gc_flags(tmp_path: Path, flags: tuple[str, ...],
                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(_args(tmp_path, *flags))
    assert exit_info.value.code == 2
    assert "image-gc" in capsys.readouterr().err
