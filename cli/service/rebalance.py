"""`swarmctl service rebalance`: ask the controller to spread a replicated
service's tasks over its eligible nodes again (RebalanceService, which plans
the fewest moves), print a line per moved slot with the reason, and wait until
the moved tasks run (unless -d or --dry-run, which changes nothing)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer

from swarm.api.v1 import control_pb2 as cpb

from .. import client, completion, progress
from ..options import DetachOpt, WaitTimeoutOpt, examples
from .wait import read_baseline, wait_converged

REBALANCE_EXAMPLES = examples(
    "swarmctl service rebalance web --dry-run",
    "swarmctl service rebalance web",
    "swarmctl service rebalance -d web",
)


def rebalance(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(metavar="SERVICE", autocompletion=completion.services)],
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print which slots would move where and why; change nothing.")
                       ] = False,
    detach: DetachOpt = False,
    wait_for: WaitTimeoutOpt = progress.DEFAULT_WAIT,
) -> None:
    """Spread a replicated service's tasks over its eligible nodes again (after nodes
    joined or came back), moving as few as possible, as a rolling update with the
    service's update config (parallelism, delay, order, failure action); then wait
    until the moved tasks run (unless -d)."""
    timeout = progress.wait_timeout(wait_for)
    with client.open_controller(ctx) as ctl:
        baseline = read_baseline(ctl, service, with_tasks=not (detach or dry_run))
        response = ctl.call(ctl.stub.RebalanceService, cpb.RebalanceServiceRequest(
            ref=baseline.service_id, dry_run=dry_run))
        name = response.service.spec.name
        if not response.moves:
            typer.echo(f"{name}: {response.message}")
            return
        nodes = ctl.call(ctl.stub.ListNodes, cpb.ListNodesRequest()).nodes
        hostnames = {node.id: node.description.hostname or node.id for node in nodes}
        for line in rebalance_lines(name, response.moves, hostnames):
            typer.echo(line)
        if dry_run:
            count = len(response.moves)
            typer.echo(f"dry run: {count} slot{'s' if count != 1 else ''} would move "
                       f"({response.message.removeprefix('dry run: ')}); nothing was changed")
            return
        if not detach:
            wait_converged(ctl, [baseline], timeout)


def rebalance_lines(name: str, moves: Sequence[cpb.RebalanceMove],
                    hostnames: dict[str, str]) -> list[str]:
    """'web.3: h1 -> h3 (node h1 has 3 tasks of web, h3 has 0)', a line per slot."""
    return [f"{name}.{move.slot}: {hostnames.get(move.from_node, move.from_node)} -> "
            f"{hostnames.get(move.to_node, move.to_node)} ({move.reason})" for move in moves]
