"""`swarmctl dev up|status|down`: a local multi-host cluster on this machine.

`cluster` (and through it pyroute2, about 95 ms and 11 MiB) is imported inside
the commands: `swarmctl` builds every command's options at start-up, and the
other commands must not pay for it (tests/unit/test_cli_imports.py).
"""

from __future__ import annotations

from typing import Annotated

import grpc
import typer

from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb

from .. import render
from ..errors import BadInput, CliError, ReportingGroup
from ..options import OutputOpt, examples
from .daemons import alive

app = typer.Typer(help="A local multi-host cluster on this machine (root).",
                  no_args_is_help=True, rich_markup_mode=None, cls=ReportingGroup)

NameOpt = Annotated[str, typer.Option("--name", help="Name of the local cluster.")]


def _say(line: str) -> None:
    typer.echo(line, err=True)


@app.command(epilog=examples("sudo swarmctl dev up", "sudo swarmctl dev up --nodes 5 --name big"))
def up(
    nodes: Annotated[int, typer.Option("--nodes", help="Number of simulated hosts.")] = 3,
    name: NameOpt = "dev",
    subnet: Annotated[str, typer.Option("--subnet", help="Underlay subnet of the hosts.")]
        = "192.168.77.0/24",
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="Plaintext gRPC, no certificates (development only; mutual TLS "
                           "with join tokens is the default).")] = False,
    controllers: Annotated[int, typer.Option(
        "--controllers", help="Number of controllers (one leads; the i-th from 0 listens "
                              "on port 2377+100*i).")] = 1,
    etcd_members: Annotated[int, typer.Option(
        "--etcd-members", help="Members of the etcd cluster (the i-th from 0 on port "
                               "2379+100*i).")] = 1,
    agent_arg: Annotated[list[str] | None, typer.Option(
        "--agent-arg", metavar="HOST:FLAG",
        help="One more flag for one host's agent (repeatable), e.g. "
             "h2:--generic-resource=gpu=2 (hosts are h1 to hN).")] = None,
) -> None:
    """Start etcd, controllers, a registry with the demo image and N agents, each on
    a simulated host (a network namespace on a shared underlay), and make plain
    swarmctl talk to it. Re-running after a crash or a reboot cleans up first."""
    from . import cluster

    for flag, value, limit in (("--controllers", controllers, cluster.MAX_CONTROLLERS),
                               ("--etcd-members", etcd_members, cluster.MAX_ETCD_MEMBERS)):
        if not 1 <= value <= limit:
            raise BadInput(f"{flag} {value}: expected 1 to {limit}")
    per_host: dict[str, list[str]] = {}
    for text in agent_arg or []:
        host, sep, flag = text.partition(":")
        if not sep or not host or not flag.startswith("-"):
            raise BadInput(f"--agent-arg {text!r}: expected HOST:FLAG, e.g. "
                           "h2:--generic-resource=gpu=2")
        per_host.setdefault(host, []).append(flag)
    if error := cluster.host_args_error(per_host, nodes):
        raise BadInput(error)
    try:
        state = cluster.up(name, nodes, subnet, _say, insecure=insecure,
                           controllers=controllers, etcd_members=etcd_members,
                           host_agent_args=per_host)
    except cluster.ClusterError as error:
        raise CliError(str(error)) from None
    typer.echo(f"cluster {name!r} is up: controller {', '.join(state.controller_addrs)}, "
               f"registry {state.registry} (image {state.registry}/{cluster.DEMO_IMAGE}:latest)")
    typer.echo("try: swarmctl node ls")


@app.command(epilog=examples("swarmctl dev status", "swarmctl dev status -o json"))
def status(name: NameOpt = "dev", output: OutputOpt = render.Output.table) -> None:
    """What runs where: the cluster's processes, its nodes and their tasks. With
    -o json|yaml: every process with its role, pid and address."""
    from . import cluster

    try:
        state = cluster.status(name)
    except cluster.ClusterError as error:
        raise CliError(str(error)) from None
    if output is not render.Output.table:
        typer.echo(render.plain(output, {"name": state.name, "processes": cluster.processes(state)}))
        return
    typer.echo(render.table(("PROCESS", "PID", "ADDRESS", "STATE"), [
        (d.role, str(d.pid), cluster.process_address(state, d.role) or "-",
         "running" if alive(d) else "gone") for d in state.daemons]))
    typer.echo("")
    with cluster.control_channel(state) as channel:
        stub = cgrpc.ControlStub(channel)
        try:
            nodes = stub.ListNodes(cpb.ListNodesRequest(), timeout=5).nodes
            tasks = stub.ListTasks(cpb.ListTasksRequest(), timeout=5).tasks
            services = stub.ListServices(cpb.ListServicesRequest(), timeout=5).services
        except grpc.RpcError as error:
            raise CliError(f"cannot reach controller at {state.controller}: "
                           f"{error.details()}") from None
    names = {s.id: s.spec.name for s in services}
    running: dict[str, list[str]] = {}
    for task in tasks:
        if task.status.state == pb.RUNNING:
            running.setdefault(task.node_id, []).append(
                f"{names.get(task.service_id, task.service_id[:12])}.{task.slot or task.node_id[:6]}")
    typer.echo(render.table(("NODE", "ADDRESS", "STATUS", "RUNNING TASKS"), [
        (n.description.hostname, n.status.addr,
         render.title_word(pb.NodeStatus.State.Name(n.status.state)),
         " ".join(sorted(running.get(n.id, []))) or "-")
        for n in sorted(nodes, key=lambda n: n.description.hostname)]))


@app.command(epilog=examples("sudo swarmctl dev down"))
def down(name: NameOpt = "dev") -> None:
    """Remove every process, container, namespace, link, mount, cgroup and file the
    cluster made. Safe to repeat."""
    from . import cluster

    try:
        cluster.down(name, _say)
    except cluster.ClusterError as error:
        raise CliError(str(error)) from None
    typer.echo(f"cluster {name!r} is down")
