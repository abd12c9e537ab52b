"""`swarmctl service ls`: ListServices with the --filter keys turned into the
request's filters (the controller filters), plus the tasks for the table's
REPLICAS column; printed as a table, JSON/YAML or a --format template."""

from __future__ import annotations

from typing import Annotated

import typer

from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb

from .. import client, formatting, parsing, render
from ..options import OutputOpt, QuietOpt, examples
from .flags import as_list

_SERVICE_FILTERS = ("name", "id", "label")


LS_EXAMPLES = examples("swarmctl service ls",
                       "swarmctl service ls --filter label=tier=web -o json")


def list_services(
    ctx: typer.Context,
    output: OutputOpt = render.Output.table,
    quiet: QuietOpt = False,
    filters: Annotated[list[str] | None, typer.Option(
        "--filter", "-f", metavar="KEY=VALUE",
        help="name=NAME, id=PREFIX or label=KEY[=VALUE] (repeatable).")] = None,
    format_: formatting.FormatOpt = "",
) -> None:
    """List services."""
    fmt = formatting.parse_format(format_, output, columns=render.services_rows([], [])[0])
    wanted = parsing.parse_filters("--filter", as_list(filters), _SERVICE_FILTERS)
    request = cpb.ListServicesRequest()
    request.filters.names.extend(wanted.get("name", []))
    request.filters.id_prefixes.extend(wanted.get("id", []))
    for item in wanted.get("label", []):
        key, value = parsing.key_value("--filter", item, value_required=False)
        request.filters.labels[key] = value
    with client.open_controller(ctx) as ctl:
        services = list(ctl.call(ctl.stub.ListServices, request).services)
        if quiet:
            typer.echo("\n".join(s.id for s in services))
            return
        tasks: list[pb.Task] = []
        if output is render.Output.table and services:
            tasks = list(ctl.call(ctl.stub.ListTasks, cpb.ListTasksRequest()).tasks)
    if fmt is not None:
        typer.echo(formatting.listing(fmt, render.services_rows(services, tasks)))
        return
    typer.echo(render.render(output, services, lambda: render.services_table(services, tasks)))
