"""Debian's reference image registry (`docker-registry`): its config, shared by
the local cluster and the test suite's registry fixture."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

REGISTRY_BINARY = "/usr/bin/docker-registry"


def write_registry_config(directory: Path, addr: str, *,
                          htpasswd: Path | None = None) -> Path:
    """config.yml for a registry listening on addr, storing under
    directory/storage; basic auth when an htpasswd file is given. Returns the
    config's path (pass it to `docker-registry serve`)."""
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(directory / "storage")},
                    "delete": {"enabled": True}},
        "http": {"addr": addr, "secret": secrets.token_hex(16)},
    }
    if htpasswd is not None:
        config["auth"] = {"htpasswd": {"realm": "swarm", "path": str(htpasswd)}}
    path = directory / "config.yml"
    path.write_text(json.dumps(config))  # JSON is YAML: the registry reads it as its config
    return path
