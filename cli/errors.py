"""The errors swarmctl reports: always one line on stderr, never a traceback.

Exit codes: 0 success, 1 the controller refused or failed (or could not be
reached), 2 bad input caught before anything was sent, 3 the change was
accepted but the service did not converge (see cli/progress.py), 130 Ctrl-C
while waiting for it.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from . import colour

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_CONVERGED = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def one_line(text: str) -> str:
    """Collapse a (server-provided) message to a single line."""
    return " ".join(text.split())


class CliError(Exception):
    """A failure reported as `swarmctl: <message>`; exit status 1."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str) -> None:
        self.message = one_line(message)
        super().__init__(self.message)

    def show(self) -> None:
        stderr = typer.get_text_stream("stderr")
        prefix = colour.error("swarmctl:") if colour.enabled(stderr) else "swarmctl:"
        typer.echo(f"{prefix} {self.message}", err=True)


class BadInput(CliError):
    """Input refused before any request was sent; exit status 2."""

    exit_code = EXIT_USAGE


class BadFlag(BadInput):
    """A flag whose value does not parse: `swarmctl: --flag: why`."""

    def __init__(self, flag: str, message: str) -> None:
        self.flag = flag
        self.reason = message
        super().__init__(f"{flag}: {message}")


class NotConverged(CliError):
    """The controller took the change, but the tasks did not all come to run (they
    failed, the update paused or rolled back, or the wait timed out); exit status 3,
    distinct from 1 so that a script can tell "refused" from "accepted, not healthy"."""

    exit_code = EXIT_NOT_CONVERGED


class Interrupted(CliError):
    """Ctrl-C while waiting for convergence: the change stands and goes on without us."""

    exit_code = EXIT_INTERRUPTED


class ReportingGroup(TyperGroup):
    """A command group that reports a CliError raised by any command below it as one
    line on stderr and exits with the error's status."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except CliError as error:
            error.show()
            raise typer.Exit(error.exit_code) from None
