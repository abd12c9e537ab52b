"""`swarmctl network ...`: create, ls, inspect, rm."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Sequence
from typing import Annotated

import grpc
import typer

from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb

from . import client, completion, formatting, parsing, progress, render
from .client import Controller, RpcFailure, fail_if, for_each
from .errors import BadFlag, BadInput, ReportingGroup
from .inspecting import show_inspected
from .options import InspectOutputOpt, OutputOpt, QuietOpt, examples

app = typer.Typer(help="Manage overlay networks.", no_args_is_help=True, rich_markup_mode=None,
                  cls=ReportingGroup)

DEFAULT_DRIVER = "overlay"
_NETWORK_FILTERS = ("name", "id")
# How long `network rm` and `stack rm` wait for tasks still stopping on a network.
DEFAULT_REMOVE_WAIT = "1m"
# `network rm` and `stack rm`: a network is removed once the tasks of the
# services just removed have stopped.
RemoveWaitOpt = Annotated[str, typer.Option(
    "--timeout", metavar="DURATION",
    help="Wait this long for tasks still stopping on a network (a service just removed) "
         "before giving up on removing it.")]
# How long `stack rm` and `--prune` retry a network the controller still counts
# as used by a service they just removed (it lingers in a cache for a moment).
SERVICE_GONE_PATIENCE = 5.0
_RETRY_PAUSE = 0.2


def get_network(ctl: Controller) -> Callable[[str], pb.Network]:
    return lambda ref: ctl.call(ctl.stub.GetNetwork, cpb.GetRequest(ref=ref)).network


def remove_when_free(ctl: Controller, ref: str, *, timeout: float, patience: float = 0.0,
                     missing_ok: bool = False) -> bool:
    """Remove the network, waiting up to `timeout` seconds while the controller
    says tasks are still stopping on it (its retry hint), and up to `patience`
    while it names services using it. Returns False when it was not there and
    `missing_ok`; raises the controller's last refusal when time is up."""
    start = time.monotonic()
    while True:
        try:
            ctl.call(ctl.stub.RemoveNetwork, cpb.RemoveRequest(ref=ref))
            return True
        except RpcFailure as error:
            if error.code == grpc.StatusCode.NOT_FOUND and missing_ok:
                return False
            waited = time.monotonic() - start
            limit = timeout if error.retry else patience
            if error.code != grpc.StatusCode.FAILED_PRECONDITION or waited >= limit:
                raise
        time.sleep(_RETRY_PAUSE)


def network_spec_from_options(name: str, *, driver: str = DEFAULT_DRIVER,
                              subnet: str | None = None, gateway: str | None = None,
                              attachable: bool = False, internal: bool = False,
                              ingress: bool = False,
                              labels: Sequence[str] = ()) -> pb.NetworkSpec:
    """The NetworkSpec `network create` sends; raises BadFlag for a bad value."""
    if not name.strip():
        raise BadInput("a network name is required")
    if not driver.strip():
        raise BadFlag("--driver", "must not be empty")
    if ingress and (attachable or internal):
        raise BadFlag("--ingress", "cannot go with --attachable or --internal")
    spec = pb.NetworkSpec(name=name, driver=driver.strip(), attachable=attachable,
                          internal=internal, ingress=ingress)
    if subnet is not None:
        spec.ipam.subnet = parsing.cidr("--subnet", subnet)
    if gateway is not None:
        if subnet is None:
            raise BadFlag("--gateway", "needs --subnet")
        spec.ipam.gateway = parsing.ip_address("--gateway", gateway)
        if ipaddress.ip_address(spec.ipam.gateway) not in ipaddress.ip_network(spec.ipam.subnet):
            raise BadFlag("--gateway", f"{gateway} is not in the subnet {spec.ipam.subnet}")
    for item in labels:
        key, value = parsing.key_value("--label", item, value_required=False)
        spec.labels[key] = value
    return spec


@app.command("create", epilog=examples(
    "swarmctl network create backend",
    "swarmctl network create --subnet 10.20.0.0/24 --gateway 10.20.0.1 front",
    "swarmctl network create --internal --label tier=data db-net",
    "swarmctl network create --attachable --driver overlay tools",
    "swarmctl network create --ingress --subnet 10.255.0.0/24 ingress",
) + """

\b
--internal: the network has no path out of the cluster; a service attached to
it cannot publish ports (--publish is refused).
--attachable: recorded and shown, for compatibility with docker; there are no
standalone containers here to attach.
--ingress: the routing mesh's network, which ports published in ingress mode
use (one per cluster; the leader makes one named 'ingress' when the cluster
has none, as `docker swarm init` does).""")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="Name of the network.")],
    driver: Annotated[str, typer.Option("--driver", "-d",
                                        help="Network driver (only overlay).")
                      ] = DEFAULT_DRIVER,
    subnet: Annotated[str | None, typer.Option(
        metavar="CIDR", help="Subnet (default: the next free /24 of the pool).")] = None,
    gateway: Annotated[str | None, typer.Option(metavar="IP",
                                                help="Gateway address in the subnet.")] = None,
    attachable: Annotated[bool, typer.Option(
        "--attachable", help="Let standalone containers attach (recorded only: there are "
                             "none here).")] = False,
    internal: Annotated[bool, typer.Option(
        "--internal", help="No path out of the cluster: its services cannot publish "
                           "ports.")] = False,
    ingress: Annotated[bool, typer.Option(
        "--ingress", help="The routing mesh's network (one per cluster; the leader makes one "
                          "named 'ingress' when the cluster has none).")] = False,
    label: Annotated[list[str] | None, typer.Option(
        "--label", metavar="K=V", help="Network label (repeatable).")] = None,
) -> None:
    """Create an overlay network; prints its ID."""
    spec = network_spec_from_options(name, driver=driver, subnet=subnet, gateway=gateway,
                                     attachable=attachable, internal=internal,
                                     ingress=ingress, labels=label or [])
    with client.open_controller(ctx) as ctl:
        response = ctl.call(ctl.stub.CreateNetwork, cpb.CreateNetworkRequest(spec=spec))
    typer.echo(response.network.id)


@app.command("ls", epilog=examples("swarmctl network ls", "swarmctl network ls -o yaml"))
def list_networks(
    ctx: typer.Context,
    output: OutputOpt = render.Output.table,
    quiet: QuietOpt = False,
    filters: Annotated[list[str] | None, typer.Option(
        "--filter", "-f", metavar="KEY=VALUE",
        help="name=NAME or id=PREFIX (repeatable).")] = None,
    format_: formatting.FormatOpt = "",
) -> None:
    """List networks."""
    fmt = formatting.parse_format(format_, output, columns=render.networks_rows([])[0])
    wanted = parsing.parse_filters("--filter", filters or [], _NETWORK_FILTERS)
    request = cpb.ListNetworksRequest()
    request.filters.names.extend(wanted.get("name", []))
    request.filters.id_prefixes.extend(wanted.get("id", []))
    with client.open_controller(ctx) as ctl:
        networks = list(ctl.call(ctl.stub.ListNetworks, request).networks)
    if quiet:
        typer.echo("\n".join(n.id for n in networks))
        return
    if fmt is not None:
        typer.echo(formatting.listing(fmt, render.networks_rows(networks)))
        return
    typer.echo(render.render(output, networks, lambda: render.networks_table(networks)))


@app.command("inspect", epilog=examples("swarmctl network inspect backend"))
def inspect(
    ctx: typer.Context,
    networks: Annotated[list[str], typer.Argument(metavar="NETWORK", autocompletion=completion.networks,
                                                  help="Names, IDs or ID prefixes.")],
    output: InspectOutputOpt = render.Output.json,
    format_: formatting.InspectFormatOpt = "",
) -> None:
    """Show networks in detail."""
    show_inspected(ctx, networks, get_network, render.network_details, output, format_)


@app.command("rm", epilog=examples("swarmctl network rm backend",
                                   "swarmctl network rm --timeout 2m front back"))
def remove(
    ctx: typer.Context,
    networks: Annotated[list[str], typer.Argument(metavar="NETWORK",
                                                  autocompletion=completion.networks)],
    wait_for: RemoveWaitOpt = DEFAULT_REMOVE_WAIT,
) -> None:
    """Remove networks that no service uses (once the tasks that used them have stopped)."""
    timeout = progress.wait_timeout(wait_for)
    with client.open_controller(ctx) as ctl:

        def remove_one(ref: str) -> None:
            remove_when_free(ctl, ref, timeout=timeout)
            typer.echo(ref)

        _, failed = for_each(networks, remove_one)
    fail_if(failed)
