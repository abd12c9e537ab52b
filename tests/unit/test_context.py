"""swarmctl's controller resolution: flag or env, else the dev context, else loopback."""

from __future__ import annotations

from swarm.cli.client import DEFAULT_CONTROLLER, default_controller
from swarm.cli.dev.context import Context, context_path, read_context, remove_context, write_context


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
