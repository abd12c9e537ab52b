"""`--format` on ls, ps and inspect: docker's template forms (swarm/api/templates.py).

A listing's fields are its table's columns under docker's names (the header
in CamelCase: DESIRED STATE is .DesiredState; NETWORK ID is .ID), so
`swarmctl service ls --format '{{.Name}} {{.Replicas}}'` and
`--format 'table {{.ID}}\\t{{.Name}}'` work as with docker; `{{json .}}` prints
a row's fields as JSON. inspect's data is the object itself (the same data as
`-o json`), its fields found by docker-style names too (`{{.Spec.Name}}`).

The template is parsed, and a listing's fields checked, before anything is
sent: a bad one is exit 2, naming --format.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import typer
from google.protobuf.message import Message

from swarm.api.templates import Format, TemplateError

from . import render
from .errors import BadFlag

FormatOpt = Annotated[str, typer.Option(
    "--format", metavar="TEMPLATE",
    help="Print with a Go-style template: '{{.Name}}', '{{json .}}', "
         "'table {{.ID}}\\t{{.Name}}'.")]

# inspect: docker's `inspect -f` too.
InspectFormatOpt = Annotated[str, typer.Option(
    "--format", "-f", metavar="TEMPLATE",
    help="Print with a Go-style template: '{{.ID}}', '{{.Spec.Name}}', '{{json .Spec}}'.")]


def field_name(header: str) -> str:
    """A column's template field: 'DESIRED STATE' -> 'DesiredState', 'NETWORK ID' -> 'ID'."""
    if header.endswith(" ID"):
        return "ID"
    return "".join(word if word == "ID" else word.title() for word in header.split())


def parse_format(text: str, output: render.Output, *, columns: Sequence[str] = (),
                 default_output: render.Output = render.Output.table) -> Format | None:
    """The parsed --format (None without one); BadFlag when it does not parse, names
    a field the listing lacks, or comes with another -o."""
    if not text:
        return None
    if output is not default_output:
        raise BadFlag("--format", "cannot be combined with -o/--output")
    try:
        fmt = Format.parse(text)
        if columns:
            fmt.check_fields([field_name(c) for c in columns])
    except TemplateError as error:
        raise BadFlag("--format", str(error)) from None
    return fmt


def listing(fmt: Format, rows: render.Rows) -> str:
    headers, cells = rows
    names = [field_name(h) for h in headers]
    items = [dict(zip(names, row, strict=True)) for row in cells]
    try:
        return fmt.render(items)
    except TemplateError as error:
        raise BadFlag("--format", str(error)) from None


def objects(fmt: Format, messages: Sequence[Message]) -> str:
    data: list[Any] = render.to_data(messages)
    return fmt.render(data, strict=False)
