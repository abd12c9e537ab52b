"""`swarmctl controller ls`: the running controllers, which one leads, their
version and uptime. Each controller registers itself in etcd on a lease
(controller/registry.py), so a dead one leaves the list within its lease TTL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import typer

from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb

from . import client, render
from .errors import ReportingGroup
from .options import OutputOpt, examples

app = typer.Typer(help="Inspect the controllers.", no_args_is_help=True, rich_markup_mode=None,
                  cls=ReportingGroup)


def controller_rows(controllers: list[pb.ControllerInfo], now: datetime) -> list[dict[str, Any]]:
    """Plain data per controller; `leader` always present (true/false) and the
    uptime in whole seconds, for scripts."""
    rows = []
    for info in controllers:
        started = render.to_datetime(info.started_at) if render.has_time(info.started_at) else None
        rows.append({
            "addr": info.addr,
            "leader": bool(info.leader),
            "version": info.version,
            "started_at": render.timestamp(info.started_at),
            "uptime_s": int((now - started).total_seconds()) if started is not None else None,
        })
    return rows


@app.command("ls", epilog=examples("swarmctl controller ls", "swarmctl controller ls -o json"))
def list_controllers(ctx: typer.Context, output: OutputOpt = render.Output.table) -> None:
    """List the running controllers: address, whether it leads, version, uptime."""
    with client.open_controller(ctx) as ctl:
        controllers = list(ctl.call(ctl.stub.ListControllers, cpb.ListControllersRequest())
                           .controllers)
    rows = controller_rows(controllers, datetime.now(UTC))
    if output is not render.Output.table:
        typer.echo(render.plain(output, rows))
        return
    typer.echo(render.table(("ADDRESS", "LEADER", "VERSION", "UPTIME"), [
        (row["addr"], "yes" if row["leader"] else "-", row["version"],
         render.human_duration(float(row["uptime_s"])) if row["uptime_s"] is not None else "-")
        for row in rows]))
