"""What the commands that change a service share around the change: the
baseline read before it (the service and its tasks, so that only what follows
is judged), the wait until the tasks run the new spec (cli/progress.py draws
and judges; -d skips it), and warnings on stderr."""

from __future__ import annotations

import sys

import typer

from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb

from .. import client, progress


def warn(line: str) -> None:
    """A warning line on stderr (pull's, about credentials or pinning)."""
    typer.echo(line, err=True)


def wait_converged(ctl: client.Controller, baselines: list[progress.Baseline], timeout: float) -> None:
    """Wait until the services' tasks run their specs, drawing progress on stderr;
    raises NotConverged (exit 1) on a failed update or at the timeout."""
    # sys.stderr is looked up now, not at import: test runners swap it per invocation.
    progress.wait_until_converged(ctl, baselines, timeout=timeout, stream=sys.stderr)


def read_baseline(ctl: client.Controller, ref: str, *, rollback: bool = False,
              with_tasks: bool = True) -> progress.Baseline:
    """The service and (when we are going to wait) the tasks it has before a change, so
    that only what follows the change is judged (see progress.Baseline)."""
    service = ctl.call(ctl.stub.GetService, cpb.GetRequest(ref=ref)).service
    tasks: list[pb.Task] = []
    if with_tasks:
        request = cpb.ListTasksRequest()
        request.filters.service_ids.append(service.id)
        tasks = list(ctl.call(ctl.stub.ListTasks, request).tasks)
    return progress.baseline_of(service, tasks, rollback=rollback)
