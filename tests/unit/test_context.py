"""swarmctl's controller resolution: flag or env, else the dev context, else loopback."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest

from swarm.cli.client import DEFAULT_CONTROLLER, default_controller
from swarm.cli.dev import context
from swarm.cli.dev.context import (
    Context,
    SudoUser,
    context_path,
    read_context,
    remove_context,
    sudo_user,
    write_context,
)


def test_given_address_wins_over_the_context() -> None:
    write_context(Context("dev", "192.168.77.1:2377"))
    assert default_controller("10.1.1.1:2377") == "10.1.1.1:2377"


def test_context_then_default() -> None:
    assert default_controller(None) == DEFAULT_CONTROLLER
    write_context(Context("dev", "192.168.77.1:2377"))
    assert default_controller(None) == "192.168.77.1:2377"


def test_remove_only_the_named_context() -> None:
    write_context(Context("dev", "192.168.77.1:2377"))
    remove_context("other")
    assert read_context() == Context("dev", "192.168.77.1:2377")
    remove_context("dev")
    assert read_context() is None


def test_broken_context_file_is_ignored() -> None:
    path = context_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    assert read_context() is None
    assert default_controller("") == DEFAULT_CONTROLLER


def test_the_invoking_user_of_sudo_is_found_only_for_root() -> None:
    environ = {"SUDO_USER": "alice", "SUDO_UID": "1000", "SUDO_GID": "1000"}
    homes = {"alice": "/home/alice"}.__getitem__
    assert sudo_user(environ, 0, homes) == SudoUser(
        Path("/home/alice/.config/swarmctl/context.json"), 1000, 1000)
    assert sudo_user(environ, 1000, homes) is None  # not root: no one to write for
    assert sudo_user({**environ, "SUDO_USER": "root"}, 0, homes) is None
    assert sudo_user({**environ, "SUDO_UID": "x"}, 0, homes) is None
    assert sudo_user({**environ, "SUDO_USER": "bob"}, 0, homes) is None  # no such user
    assert sudo_user({}, 0, homes) is None


def test_dev_up_through_sudo_leaves_the_user_a_context_they_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("chown to another user needs root; CI runs it as root")
    # A real user of this machine whose home we may not write: nobody (65534);
    # its lookup is pointed at a temporary home.
    nobody = pwd.getpwnam("nobody")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("SUDO_USER", "nobody")
    monkeypatch.setenv("SUDO_UID", str(nobody.pw_uid))
    monkeypatch.setenv("SUDO_GID", str(nobody.pw_gid))
    monkeypatch.setattr(context, "invoking_user", lambda: context.sudo_user(
        os.environ, os.geteuid(), lambda name: str(home)))
    write_context(Context("dev", "192.168.77.1:2377"))
    theirs = home / ".config" / "swarmctl" / "context.json"
    assert json.loads(theirs.read_text())["controller"] == "192.168.77.1:2377"
    for made in (home / ".config", home / ".config" / "swarmctl", theirs):
        assert (made.stat().st_uid, made.stat().st_gid) == (nobody.pw_uid, nobody.pw_gid), made
    assert read_context() == Context("dev", "192.168.77.1:2377")  # root's own copy too
    remove_context("dev")
    assert not theirs.exists()
    assert read_context() is None
