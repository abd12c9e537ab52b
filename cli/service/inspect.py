"""`swarmctl service inspect`: GetService for each name, ID or prefix, printed
as JSON (default), YAML, a readable table or a --format template; get_service
is also how `service ps` resolves its arguments."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb

from .. import client, completion, formatting, render
from ..inspecting import show_inspected
from ..options import InspectOutputOpt, examples


def get_service(ctl: client.Controller) -> Callable[[str], pb.Service]:
    return lambda ref: ctl.call(ctl.stub.GetService, cpb.GetRequest(ref=ref)).service


INSPECT_EXAMPLES = examples("swarmctl service inspect web",
                            "swarmctl service inspect -o table web")


def inspect(
    ctx: typer.Context,
    services: Annotated[list[str], typer.Argument(metavar="SERVICE", autocompletion=completion.services,
                                                  help="Names, IDs or ID prefixes.")],
    output: InspectOutputOpt = render.Output.json,
    format_: formatting.InspectFormatOpt = "",
) -> None:
    """Show services in detail."""
    show_inspected(ctx, services, get_service, render.service_details, output, format_)
