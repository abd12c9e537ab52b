"""`swarmctl service scale SERVICE=N...`: parse every pair before connecting,
then per service read a baseline and ScaleService (the controller retries its
own read-modify-write), print `web scaled to 5`, and wait for all the scaled
services together (unless -d). A service refused does not stop the others;
the command exits 1 for it at the end."""

from __future__ import annotations

from typing import Annotated

import typer

from swarm.api.v1 import control_pb2 as cpb

from .. import client, completion, parsing, progress
from ..client import fail_if, for_each
from ..errors import NotConverged
from ..options import DetachOpt, WaitTimeoutOpt, examples
from .wait import read_baseline, wait_converged

SCALE_EXAMPLES = examples("swarmctl service scale web=5",
                          "swarmctl service scale web=3 worker=0",
                          "swarmctl service scale -d web=10")


def scale(
    ctx: typer.Context,
    pairs: Annotated[list[str], typer.Argument(metavar="SERVICE=REPLICAS",
                                                autocompletion=completion.service_scales)],
    detach: DetachOpt = False,
    wait_for: WaitTimeoutOpt = progress.DEFAULT_WAIT,
) -> None:
    """Set the number of tasks of replicated services, then wait for them (unless -d)."""
    wanted = [parsing.scale_argument(pair) for pair in pairs]
    replicas = dict(wanted)
    timeout = progress.wait_timeout(wait_for)

    with client.open_controller(ctx) as ctl:

        def scale_one(ref: str) -> progress.Baseline:
            baseline = read_baseline(ctl, ref, with_tasks=not detach)
            ctl.call(ctl.stub.ScaleService,
                     cpb.ScaleServiceRequest(ref=baseline.service_id, replicas=replicas[ref]))
            typer.echo(f"{ref} scaled to {replicas[ref]}")
            return baseline

        scaled, failed = for_each(list(replicas), scale_one)
        if scaled and not detach:
            try:
                wait_converged(ctl, scaled, timeout)
            except NotConverged as error:
                # Some refs were refused as well: show this line too, then exit 1 for
                # the refusals (the more basic failure) below.
                if not failed:
                    raise
                error.show()
    fail_if(failed)
