"""`swarmctl service logs`: parse --tail and --since before connecting, then
stream the tasks' lines from the nodes through the controller (cli/logs.py does
the streaming and the prefixes; this module only maps the flags)."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer

from swarm.api.v1 import logs_pb2 as lpb

from .. import client, completion, logs
from ..options import examples

LOGS_HELP = """Show the output of a service's tasks.

Each line is prefixed with its task and node, as `docker service logs` does
(web.1.<task id>@node-a | ...); lines the containers wrote to stderr go to
stderr. Without --follow, the command ends once every node holding the
service's logs has sent them; a node that is down or does not answer in time
is named in a warning on stderr, and its lines are missing.

The logs live on the nodes, in the files the container monitor (conmon)
writes, rotated at the service's --log-opt max-size (default 10m) with
max-file files kept (default 3): the oldest lines of a chatty task are gone,
and the command reads across the files kept (--follow follows a rotation).
They go away with the container: logs of tasks removed from the task
history, of scaled-down tasks and of removed services are gone, as with
docker."""


LOGS_EXAMPLES = examples(
    "swarmctl service logs web",
    "swarmctl service logs -f --tail 10 web",
    "swarmctl service logs --since 10m --timestamps web",
    "swarmctl service logs --raw web > web.log")


def service_logs(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(metavar="SERVICE", autocompletion=completion.services,
                                           help="Name, ID or ID prefix.")],
    follow: Annotated[bool, typer.Option("--follow", "-f",
                                         help="Keep printing new lines until interrupted.")
                      ] = False,
    tail: Annotated[str, typer.Option("--tail", "-n", metavar="N",
                                      help="Only the last N lines of each task, or 'all'.")
                    ] = "all",
    since: Annotated[str | None, typer.Option(
        metavar="TIME", show_default=False,
        help="Only lines written since TIME: RFC 3339 (2026-11-29T03:00:00Z), a Unix "
             "time, or a duration before now (10m, 1h30m).")] = None,
    timestamps: Annotated[bool, typer.Option("--timestamps", "-t",
                                             help="Print each line's time (RFC 3339, UTC).")
                          ] = False,
    no_task_ids: Annotated[bool, typer.Option("--no-task-ids",
                                              help="Leave task IDs out of the prefix.")] = False,
    no_trunc: Annotated[bool, typer.Option("--no-trunc", help="Do not truncate IDs.")] = False,
    raw: Annotated[bool, typer.Option("--raw", help="Print the lines alone, without the "
                                                    "task and node prefix.")] = False,
) -> None:
    options = lpb.LogOptions(follow=follow)
    lines = logs.parse_tail("--tail", tail)
    if lines is not None:
        options.tail = lines
    if since is not None:
        options.since.FromNanoseconds(logs.parse_since("--since", since, time.time_ns()))
    fmt = logs.Format(timestamps=timestamps, task_ids=not no_task_ids, no_trunc=no_trunc,
                      raw=raw)
    with client.open_controller(ctx) as ctl:
        # sys.stdout and sys.stderr are looked up now: test runners swap them per invocation.
        logs.stream_logs(ctl, service, options, fmt, logs.binary(sys.stdout),
                         logs.binary(sys.stderr), lambda text: typer.echo(text, err=True))

