"""Colour on a terminal only: never in a pipe, a file or a dumb terminal, and
never when NO_COLOR is set (https://no-color.org, the convention docker's
and most CLIs' users expect)."""

from __future__ import annotations

import os
from typing import TextIO

import typer

# Task states by what they mean to an operator watching a rollout.
_STATE_COLOURS = {"running": typer.colors.GREEN, "complete": typer.colors.GREEN,
                  "failed": typer.colors.RED, "rejected": typer.colors.RED,
                  "orphaned": typer.colors.RED}


def enabled(stream: TextIO) -> bool:
    return (stream.isatty() and os.environ.get("TERM", "") != "dumb"
            and "NO_COLOR" not in os.environ)


def for_state(text: str, state: str) -> str:
    """`text` in the colour of a task state: green done well, red failed,
    yellow on its way."""
    return typer.style(text, fg=_STATE_COLOURS.get(state, typer.colors.YELLOW))


def error(text: str) -> str:
    return typer.style(text, fg=typer.colors.RED, bold=True)


def bold(text: str) -> str:
    return typer.style(text, bold=True)
