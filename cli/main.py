"""`swarmctl`: the command-line client of the control API.

The commands are in cli/app.py, imported only when a command runs: building
them loads gRPC, protobuf, Typer and every command's module (about 0.3 s), which
`swarmctl --version` alone does not need. `from swarm.cli.main import app`
still gives the app.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import app as app


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        # As the root callback's eager --version prints it, without the app.
        import swarm

        print(f"swarmctl {swarm.__version__}")
        return
    from .app import app

    app(prog_name="swarmctl")


def __getattr__(name: str) -> Any:
    if name == "app":
        from .app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
