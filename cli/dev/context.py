"""Where plain `swarmctl` finds its controller when neither --controller nor
SWARMCTL_CONTROLLER says: the context file that `swarmctl dev up` writes.

    $XDG_CONFIG_HOME/swarmctl/context.json   (default ~/.config/...)
    {"name": "dev", "controller": "192.168.77.1:2377",
     "cert": ".../admin/node.crt", "key": ".../admin/node.key", "ca": ".../admin/ca.crt"}

cert/key/ca are the admin identity swarmctl presents (mutual TLS); empty for
an --insecure cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Context:
    name: str
    controller: str
    cert: str = ""
    key: str = ""
    ca: str = ""


def context_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "swarmctl" / "context.json"


def read_context() -> Context | None:
    """The current context; None when there is none or it is unreadable (a
    broken file must not stop --controller from working)."""
    try:
        data = json.loads(context_path().read_text())
        return Context(name=str(data["name"]), controller=str(data["controller"]),
                       cert=str(data.get("cert", "")), key=str(data.get("key", "")),
                       ca=str(data.get("ca", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_context(context: Context) -> Path:
    path = context_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(asdict(context)) + "\n")
    partial.replace(path)  # never a half-written context
    return path


def remove_context(name: str) -> None:
    """Forget the context if it is `name`'s (another cluster's stays)."""
    current = read_context()
    if current is not None and current.name == name:
        with contextlib.suppress(FileNotFoundError):
            context_path().unlink()
