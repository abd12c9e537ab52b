"""Where plain `swarmctl` finds its controller when neither --controller nor
SWARMCTL_CONTROLLER says: the context file that `swarmctl dev up` writes.

    $XDG_CONFIG_HOME/swarmctl/context.json   (default ~/.config/...)
    {"name": "dev", "controller": "192.168.77.1:2377",
     "cert": ".../admin/node.crt", "key": ".../admin/node.key", "ca": ".../admin/ca.crt"}

cert/key/ca are the admin identity swarmctl presents (mutual TLS); empty for
an --insecure cluster.

Run through sudo, `dev up` writes the context twice: for root (as above) and
for the invoking user (SUDO_USER's ~/.config/swarmctl/context.json, owned by
them), so that plain `swarmctl` works in the operator's own shell afterwards;
`dev down` removes both.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
from collections.abc import Callable, Mapping
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


@dataclass(frozen=True)
class SudoUser:
    """The user who ran `sudo swarmctl ...`, and where their context goes."""

    path: Path
    uid: int
    gid: int


def sudo_user(environ: Mapping[str, str], euid: int,
              home_of: Callable[[str], str]) -> SudoUser | None:
    """The invoking user of a root process started through sudo (pure but for
    home_of, which maps a user name to its home directory); None otherwise."""
    name, uid, gid = (environ.get(k, "") for k in ("SUDO_USER", "SUDO_UID", "SUDO_GID"))
    if euid != 0 or not name or name == "root" or not uid.isdigit() or not gid.isdigit():
        return None
    try:
        home = home_of(name)
    except KeyError:
        return None
    return SudoUser(Path(home) / ".config" / "swarmctl" / "context.json", int(uid), int(gid))


def invoking_user() -> SudoUser | None:
    """The user who ran this process through sudo, if anyone did."""
    return sudo_user(os.environ, os.geteuid(), lambda name: pwd.getpwnam(name).pw_dir)


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


def _write(path: Path, context: Context) -> list[Path]:
    """Write atomically; returns the directories it had to make."""
    made = [d for d in reversed(path.parents) if not d.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(asdict(context)) + "\n")
    partial.replace(path)  # never a half-written context
    return made


def write_context(context: Context) -> Path:
    path = context_path()
    _write(path, context)
    user = invoking_user()
    if user is not None and user.path != path:
        with contextlib.suppress(OSError):  # their home may be unwritable: root's copy stays
            for made in [*_write(user.path, context), user.path]:
                os.chown(made, user.uid, user.gid)
    return path


def remove_context(name: str) -> None:
    """Forget the context if it is `name`'s (another cluster's stays)."""
    user = invoking_user()
    for path in (context_path(), *([user.path] if user is not None else [])):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            if json.loads(path.read_text())["name"] == name:
                path.unlink()
