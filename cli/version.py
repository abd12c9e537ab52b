"""`swarmctl version`: the client's version, every controller's (their registry
records) and every agent's (from its node description), with skew flagged: any
component whose version differs from the client's.

Versions are compared by their number (an agent describes itself as
"swarm-agent 0.2.0"); a component whose version cannot be read counts as skewed.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer

import swarm
from swarm.api.v1 import control_pb2 as cpb

from . import client, render
from .errors import CliError
from .options import examples

_NUMBER = re.compile(r"\d+\.\d+(?:\.\d+)?\S*")


def version_number(text: str) -> str:
    """'swarm-agent 0.2.0 (simulated)' -> '0.2.0'; '' when there is none."""
    found = _NUMBER.search(text)
    return found.group(0) if found else ""


def components(controllers: list[Any], nodes: list[Any], client_version: str
               ) -> list[dict[str, Any]]:
    """One row per component: role, name, version, and whether it is skewed."""
    rows: list[dict[str, Any]] = [{"role": "client", "name": "swarmctl",
                                   "version": client_version, "skew": False}]
    for info in sorted(controllers, key=lambda c: (not c.leader, c.addr)):
        number = version_number(info.version)
        rows.append({"role": "controller (leader)" if info.leader else "controller",
                     "name": info.addr, "version": number or info.version or "unknown",
                     "skew": number != client_version})
    for node in sorted(nodes, key=lambda n: n.description.hostname):
        number = version_number(node.description.agent_version)
        rows.append({"role": "agent", "name": node.description.hostname or node.id,
                     "version": number or node.description.agent_version or "unknown",
                     "skew": number != client_version})
    return rows


def version_command(
    ctx: typer.Context,
    output: Annotated[render.Output, typer.Option(
        "--output", "-o", case_sensitive=False, help="Output format: table, json or yaml.")]
        = render.Output.table,
) -> None:
    """Show the versions of swarmctl, every controller and every agent; skew is flagged."""
    mine = swarm.__version__
    try:
        with client.open_controller(ctx) as ctl:
            controllers = list(ctl.call(ctl.stub.ListControllers,
                                        cpb.ListControllersRequest()).controllers)
            nodes = list(ctl.call(ctl.stub.ListNodes, cpb.ListNodesRequest()).nodes)
    except CliError:
        typer.echo(f"swarmctl {mine}")  # as docker: the client's version, then the error
        raise
    rows = components(controllers, nodes, mine)
    skewed = [row for row in rows if row["skew"]]
    if output is not render.Output.table:
        typer.echo(render.plain(output, {"client": mine, "components": rows,
                                         "skew": bool(skewed)}))
        return
    typer.echo(render.table(("COMPONENT", "NAME", "VERSION", "SKEW"), [
        (row["role"], row["name"], row["version"], f"yes (client {mine})" if row["skew"] else "-")
        for row in rows]))
    if skewed:
        typer.echo(f"swarmctl: warning: {len(skewed)} component(s) run a version other than "
                   f"the client's {mine}", err=True)


EPILOG = examples("swarmctl version", "swarmctl version -o json")
