"""`swarmctl service ps`: the tasks of services (ListTasks filtered on the
controller by service, desired state and ID prefix; by node here, which needs
the hostnames), with the reason a pending task waits, and on stderr the write
error of a service whose tasks the controller cannot write."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer

from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb

from .. import client, completion, formatting, parsing, render
from ..client import fail_if, for_each
from ..options import OutputOpt, QuietOpt, examples
from .flags import as_list
from .inspect import get_service

_DESIRED_STATES = {name.lower(): value for name, value in pb.TaskState.items()}


def parse_task_filters(values: Sequence[str]) -> dict[str, list[str]]:
    """`service ps --filter`: desired-state=running|shutdown|..., node=, id=."""
    wanted = parsing.parse_filters("--filter", values, ("desired-state", "node", "id"))
    for state in wanted.get("desired-state", []):
        parsing.choice("--filter", state, _DESIRED_STATES)
    return wanted


def _node_matches(node_id: str, hostname: str, wanted: Sequence[str]) -> bool:
    return any(node_id.startswith(item) or hostname == item for item in wanted)


PS_EXAMPLES = examples("swarmctl service ps web",
                       "swarmctl service ps web --filter desired-state=running")


def ps(
    ctx: typer.Context,
    services: Annotated[list[str], typer.Argument(metavar="SERVICE", autocompletion=completion.services)],
    filters: Annotated[list[str] | None, typer.Option(
        "--filter", "-f", metavar="KEY=VALUE",
        help="desired-state=running|shutdown|..., node=NODE or id=PREFIX (repeatable).")
                       ] = None,
    no_trunc: Annotated[bool, typer.Option("--no-trunc", help="Do not truncate IDs and images.")
                        ] = False,
    quiet: QuietOpt = False,
    output: OutputOpt = render.Output.table,
    format_: formatting.FormatOpt = "",
) -> None:
    """List the tasks of services, with the reason a pending task is waiting."""
    fmt = formatting.parse_format(format_, output,
                                  columns=render.tasks_rows([], {}, render.now_utc())[0])
    wanted = parse_task_filters(as_list(filters))
    with client.open_controller(ctx) as ctl:
        found, failed = for_each(services, get_service(ctl))
        tasks: list[pb.Task] = []
        hostnames: dict[str, str] = {}
        if found:
            request = cpb.ListTasksRequest()
            request.filters.service_ids.extend(s.id for s in found)
            request.filters.desired_states.extend(
                _DESIRED_STATES[s.strip().lower()] for s in wanted.get("desired-state", []))
            request.filters.id_prefixes.extend(wanted.get("id", []))
            tasks = list(ctl.call(ctl.stub.ListTasks, request).tasks)
            if tasks and (output is render.Output.table or "node" in wanted or fmt):
                nodes = ctl.call(ctl.stub.ListNodes, cpb.ListNodesRequest()).nodes
                hostnames = {n.id: n.description.hostname for n in nodes}
    if "node" in wanted:
        tasks = [t for t in tasks
                 if _node_matches(t.node_id, hostnames.get(t.node_id, ""), wanted["node"])]
    if quiet:
        typer.echo("\n".join(t.id for t in tasks))
    elif fmt is not None:
        typer.echo(formatting.listing(fmt, render.tasks_rows(tasks, hostnames, render.now_utc(),
                                                             no_trunc=no_trunc)))
    elif found or output is not render.Output.table:
        typer.echo(render.render(output, tasks, lambda: render.tasks_table(
            tasks, hostnames, render.now_utc(), no_trunc=no_trunc)))
    for service in found:  # the tasks shown may not be all there should be: say why
        if line := render.write_error_line(service):
            typer.echo(line, err=True)
    fail_if(failed)
