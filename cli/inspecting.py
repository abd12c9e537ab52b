"""docker's `X inspect a b` for every resource that has one (service, node,
network): each reference fetched on its own (a refused one is reported on
stderr and counted, the others go on), then shown as JSON (the default), YAML,
a readable table or a --format template, and the exit status is 1 if any
reference was refused. The commands differ only in how they fetch one object
and how the table describes it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import typer
from google.protobuf.message import Message

from . import client, formatting, render

M = TypeVar("M", bound=Message)


def show_inspected(ctx: typer.Context, refs: Sequence[str],
                   fetch: Callable[[client.Controller], Callable[[str], M]],
                   describe: Callable[[M], str], output: render.Output, format_: str) -> None:
    fmt = formatting.parse_format(format_, output, default_output=render.Output.json)
    with client.open_controller(ctx) as ctl:
        found, failed = client.for_each(refs, fetch(ctl))
    if fmt is not None:
        typer.echo(formatting.objects(fmt, found))
    elif found or output is not render.Output.table:
        typer.echo(render.inspected(output, found, describe))
    client.fail_if(failed)
