"""Options and help text shared by the noun modules."""

from __future__ import annotations

from typing import Annotated

import typer

from .render import Output

OutputOpt = Annotated[Output, typer.Option(
    "--output", "-o", case_sensitive=False, help="Output format: table, json or yaml.")]
InspectOutputOpt = Annotated[Output, typer.Option(
    "--output", "-o", case_sensitive=False,
    help="json (default), yaml, or table for a human-readable summary.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print IDs only.")]
DetachOpt = Annotated[bool, typer.Option(
    "--detach", "-d", help="Return at once instead of waiting for the tasks to run.")]
WaitTimeoutOpt = Annotated[str, typer.Option(
    "--timeout", metavar="DURATION",
    help="Stop waiting after this long and exit 3 (e.g. 30s, 2m). Progress is shown on "
         "stderr when it is a terminal; otherwise one final line.")]


def examples(*lines: str) -> str:
    """A command's epilog: example invocations, kept as typed (no re-wrapping)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)
