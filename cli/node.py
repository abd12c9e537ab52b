"""`swarmctl node ...`: ls, inspect, ps, update, promote, demote, rm.

promote/demote change the node's role as placement sees it (`node.role`
constraints); the controllers are separate processes here, so no quorum is at
stake and demoting the last manager is allowed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated

import typer

from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb

from . import client, completion, formatting, parsing, render
from .client import fail_if, for_each
from .errors import BadInput, ReportingGroup
from .inspecting import show_inspected
from .options import InspectOutputOpt, OutputOpt, QuietOpt, examples

app = typer.Typer(help="Manage nodes.", no_args_is_help=True, rich_markup_mode=None,
                  cls=ReportingGroup)

_AVAILABILITIES = {
    "active": pb.NodeSpec.ACTIVE,
    "pause": pb.NodeSpec.PAUSE,
    "drain": pb.NodeSpec.DRAIN,
}
_ROLES = {"worker": pb.NodeSpec.WORKER, "manager": pb.NodeSpec.MANAGER}
_NODE_FILTERS = ("name", "id", "label", "role")


def get_node(ctl: client.Controller) -> Callable[[str], pb.Node]:
    return lambda ref: ctl.call(ctl.stub.GetNode, cpb.GetRequest(ref=ref)).node




def updated_node_spec(current: pb.NodeSpec, *, availability: str | None = None,
                      role: str | None = None, label_add: Sequence[str] = (),
                      label_rm: Sequence[str] = ()) -> pb.NodeSpec:
    """A copy of `current` with the `node update` flags applied; raises BadFlag."""
    spec = pb.NodeSpec()
    spec.CopyFrom(current)
    if availability is not None:
        spec.availability = parsing.choice("--availability", availability, _AVAILABILITIES)
    if role is not None:
        spec.role = parsing.choice("--role", role, _ROLES)
    for key in label_rm:
        spec.labels.pop(parsing.key_only("--label-rm", key), None)
    for item in label_add:
        key, value = parsing.key_value("--label-add", item, value_required=False)
        spec.labels[key] = value
    return spec


def list_nodes_request(filters: Sequence[str]) -> cpb.ListNodesRequest:
    wanted = parsing.parse_filters("--filter", filters, _NODE_FILTERS)
    request = cpb.ListNodesRequest()
    request.filters.names.extend(wanted.get("name", []))
    request.filters.id_prefixes.extend(wanted.get("id", []))
    for item in wanted.get("label", []):
        key, value = parsing.key_value("--filter", item, value_required=False)
        request.filters.labels[key] = value
    request.filters.roles.extend(parsing.choice("--filter", role, _ROLES)
                                 for role in wanted.get("role", []))
    return request


@app.command("ls", epilog=examples("swarmctl node ls", "swarmctl node ls --filter role=manager"))
def list_nodes(
    ctx: typer.Context,
    output: OutputOpt = render.Output.table,
    quiet: QuietOpt = False,
    filters: Annotated[list[str] | None, typer.Option(
        "--filter", "-f", metavar="KEY=VALUE",
        help="name=HOSTNAME, id=PREFIX, label=KEY[=VALUE] or role=worker|manager "
             "(repeatable).")] = None,
    format_: formatting.FormatOpt = "",
) -> None:
    """List nodes."""
    fmt = formatting.parse_format(format_, output, columns=render.nodes_rows([])[0])
    request = list_nodes_request(filters or [])
    with client.open_controller(ctx) as ctl:
        nodes = list(ctl.call(ctl.stub.ListNodes, request).nodes)
    if quiet:
        typer.echo("\n".join(n.id for n in nodes))
        return
    if fmt is not None:
        typer.echo(formatting.listing(fmt, render.nodes_rows(nodes)))
        return
    typer.echo(render.render(output, nodes, lambda: render.nodes_table(nodes)))


@app.command("inspect", epilog=examples("swarmctl node inspect node-1",
                                         "swarmctl node inspect -o table node-1"))
def inspect(
    ctx: typer.Context,
    nodes: Annotated[list[str], typer.Argument(metavar="NODE", autocompletion=completion.nodes,
                                               help="Hostnames, IDs or ID prefixes.")],
    output: InspectOutputOpt = render.Output.json,
    format_: formatting.InspectFormatOpt = "",
) -> None:
    """Show nodes in detail."""
    show_inspected(ctx, nodes, get_node, render.node_details, output, format_)


@app.command("ps", epilog=examples("swarmctl node ps node-1"))
def ps(
    ctx: typer.Context,
    nodes: Annotated[list[str], typer.Argument(metavar="NODE", autocompletion=completion.nodes)],
    no_trunc: Annotated[bool, typer.Option("--no-trunc", help="Do not truncate IDs and images.")
                        ] = False,
    output: OutputOpt = render.Output.table,
    format_: formatting.FormatOpt = "",
) -> None:
    """List the tasks placed on nodes."""
    fmt = formatting.parse_format(format_, output,
                                  columns=render.tasks_rows([], {}, render.now_utc())[0])
    with client.open_controller(ctx) as ctl:
        found, failed = for_each(nodes, get_node(ctl))
        tasks: list[pb.Task] = []
        if found:
            request = cpb.ListTasksRequest()
            request.filters.node_ids.extend(n.id for n in found)
            tasks = list(ctl.call(ctl.stub.ListTasks, request).tasks)
    hostnames = {n.id: n.description.hostname for n in found}
    if fmt is not None:
        typer.echo(formatting.listing(fmt, render.tasks_rows(tasks, hostnames, render.now_utc(),
                                                             no_trunc=no_trunc)))
    else:
        typer.echo(render.render(output, tasks, lambda: render.tasks_table(
            tasks, hostnames, render.now_utc(), no_trunc=no_trunc)))
    fail_if(failed)


@app.command("update", epilog=examples(
    "swarmctl node update --availability drain node-1",
    "swarmctl node update --label-add zone=east --label-rm old node-1",
))
def update(
    ctx: typer.Context,
    node: Annotated[str, typer.Argument(metavar="NODE", autocompletion=completion.nodes)],
    availability: Annotated[str | None, typer.Option(
        metavar="active|pause|drain", help="Whether new tasks may be placed on the node "
                                           "(drain also moves its tasks away).")] = None,
    role: Annotated[str | None, typer.Option(metavar="worker|manager")] = None,
    label_add: Annotated[list[str] | None, typer.Option(
        metavar="K=V", help="Add or change a node label (repeatable).")] = None,
    label_rm: Annotated[list[str] | None, typer.Option(
        metavar="K", help="Remove a node label (repeatable).")] = None,
) -> None:
    """Change a node's availability, role or labels."""
    adds, removes = list(label_add or []), list(label_rm or [])

    def apply(spec: pb.NodeSpec) -> pb.NodeSpec:
        return updated_node_spec(spec, availability=availability, role=role, label_add=adds,
                                 label_rm=removes)

    apply(pb.NodeSpec())  # every value parses before anything is sent
    if availability is None and role is None and not adds and not removes:
        raise BadInput("nothing to change: give --availability, --role, --label-add or "
                       "--label-rm")
    with client.open_controller(ctx) as ctl:
        # The controller retries over status changes; only a concurrent spec change conflicts.
        current = ctl.call(ctl.stub.GetNode, cpb.GetRequest(ref=node)).node
        ctl.call(ctl.stub.UpdateNode, cpb.UpdateNodeRequest(
            node_id=current.id, version=current.meta.version, spec=apply(current.spec)))
    typer.echo(node)


def role_change(node: pb.Node, role: pb.NodeSpec.Role.ValueType) -> pb.NodeSpec | None:
    """The spec promote/demote sends, or None when the node already has the role
    (docker then says so and writes nothing)."""
    if node.spec.role == role:
        return None
    spec = pb.NodeSpec()
    spec.CopyFrom(node.spec)
    spec.role = role
    return spec


def _set_role(ctx: typer.Context, nodes: Sequence[str], role: pb.NodeSpec.Role.ValueType) -> None:
    word = pb.NodeSpec.Role.Name(role).lower()
    with client.open_controller(ctx) as ctl:

        def change_one(ref: str) -> None:
            current = ctl.call(ctl.stub.GetNode, cpb.GetRequest(ref=ref)).node
            spec = role_change(current, role)
            if spec is None:
                typer.echo(f"Node {ref} is already a {word}.")
                return
            ctl.call(ctl.stub.UpdateNode, cpb.UpdateNodeRequest(
                node_id=current.id, version=current.meta.version, spec=spec))
            typer.echo(f"Node {ref} {'promoted to' if role == pb.NodeSpec.MANAGER else 'demoted to'}"
                       f" a {word}.")

        _, failed = for_each(nodes, change_one)
    fail_if(failed)


@app.command("promote", epilog=examples("swarmctl node promote node-1"))
def promote(
    ctx: typer.Context,
    nodes: Annotated[list[str], typer.Argument(metavar="NODE", autocompletion=completion.nodes)],
) -> None:
    """Make nodes managers, for placement (node.role==manager constraints)."""
    _set_role(ctx, nodes, pb.NodeSpec.MANAGER)


@app.command("demote", epilog=examples("swarmctl node demote node-1"))
def demote(
    ctx: typer.Context,
    nodes: Annotated[list[str], typer.Argument(metavar="NODE", autocompletion=completion.nodes)],
) -> None:
    """Make nodes workers, for placement (node.role==worker constraints)."""
    _set_role(ctx, nodes, pb.NodeSpec.WORKER)


@app.command("rm", epilog=examples("swarmctl node rm node-3",
                                    "swarmctl node rm --force node-3"))
def remove(
    ctx: typer.Context,
    nodes: Annotated[list[str], typer.Argument(metavar="NODE", autocompletion=completion.nodes)],
    force: Annotated[bool, typer.Option("--force", "-f",
                                        help="Remove a node that is not down.")] = False,
) -> None:
    """Remove nodes from the cluster."""
    with client.open_controller(ctx) as ctl:

        def remove_one(ref: str) -> None:
            ctl.call(ctl.stub.RemoveNode, cpb.RemoveNodeRequest(ref=ref, force=force))
            typer.echo(ref)

        _, failed = for_each(nodes, remove_one)
    fail_if(failed)
