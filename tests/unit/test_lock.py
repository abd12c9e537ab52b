"""deploy/requirements.lock (the pinned versions of a production install)
satisfies every runtime dependency pyproject.toml declares, and pins nothing
dev-only: a dependency bumped in one place and not the other fails here."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO / "deploy" / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = version
    return pins


def test_the_lock_satisfies_every_runtime_dependency() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = _pins()
    for spec in project["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is a dependency but not in requirements.lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), \
            f"requirements.lock pins {name}=={pins[name]}, pyproject.toml wants {requirement.specifier}"


def test_the_lock_pins_nothing_dev_only() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    dev = {canonicalize_name(Requirement(spec).name) for spec in project["optional-dependencies"]["dev"]}
    assert dev & set(_pins()) == set()
