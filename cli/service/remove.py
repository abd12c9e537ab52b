"""`swarmctl service rm`: RemoveService for each service named (the controller
shuts their tasks down); one refused does not stop the others, exit 1 at the end."""

from __future__ import annotations

from typing import Annotated

import typer

from swarm.api.v1 import control_pb2 as cpb

from .. import client, completion
from ..client import fail_if, for_each
from ..options import examples

RM_EXAMPLES = examples("swarmctl service rm web", "swarmctl service rm web worker")


def remove(
    ctx: typer.Context,
    services: Annotated[list[str], typer.Argument(metavar="SERVICE", autocompletion=completion.services)],
) -> None:
    """Remove services (their tasks are shut down)."""
    with client.open_controller(ctx) as ctl:

        def remove_one(ref: str) -> None:
            ctl.call(ctl.stub.RemoveService, cpb.RemoveRequest(ref=ref))
            typer.echo(ref)

        _, failed = for_each(services, remove_one)
    fail_if(failed)
