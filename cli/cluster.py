"""`swarmctl cluster ...`: inspect (the CA and certificate settings) and
join-token (show or rotate the token a node joins with)."""

from __future__ import annotations

from typing import Annotated

import typer

from swarm.api.v1 import ca_pb2 as capb
from swarm.api.v1 import control_pb2 as cpb

from . import client, render
from .errors import BadInput, ReportingGroup
from .options import InspectOutputOpt, QuietOpt, examples

app = typer.Typer(help="Manage the cluster: its CA and join tokens.", no_args_is_help=True,
                  rich_markup_mode=None, cls=ReportingGroup)

_ROLES = {"worker": capb.JOIN_ROLE_WORKER, "controller": capb.JOIN_ROLE_CONTROLLER,
          "manager": capb.JOIN_ROLE_CONTROLLER}


def describe(info: capb.CAInfo, cluster: cpb.ClusterResponse) -> str:
    return render.details([
        (0, "ID", cluster.cluster.id),
        (0, "Leader", cluster.leader_addr or "-"),
        (0, "CA", None),
        (2, "Fingerprint (SHA-256)", info.fingerprint),
        (2, "Kind", "external" if info.external else "self-signed (created by the cluster)"),
        (2, "Expires", render.timestamp(info.ca_expires_at)),
        (2, "Cluster UID (certificate O)", info.cluster_uid),
        (0, "Node certificates", None),
        (2, "Validity", render.duration(info.node_cert_validity)),
        (2, "Renewal", "automatic, at a random 50-80% of the validity"),
        (2, "Revoked nodes", str(info.revoked_nodes)),
    ])


@app.command(epilog=examples("swarmctl cluster inspect", "swarmctl cluster inspect -o json"))
def inspect(ctx: typer.Context, output: InspectOutputOpt = render.Output.table) -> None:
    """Show the cluster: its CA's fingerprint and expiry, and the certificate settings."""
    with client.open_controller(ctx) as ctl:
        cluster = ctl.call(ctl.stub.GetCluster, cpb.GetClusterRequest())
        info = ctl.call(ctl.ca.GetCAInfo, capb.GetCAInfoRequest())
    info.ClearField("ca_cert_pem") if output is render.Output.table else None
    typer.echo(render.render(output, [info], lambda: describe(info, cluster)))


@app.command("join-token", epilog=examples(
    "swarmctl cluster join-token worker", "swarmctl cluster join-token -q controller",
    "swarmctl cluster join-token --rotate worker"))
def join_token(
    ctx: typer.Context,
    role: Annotated[str, typer.Argument(metavar="worker|controller",
                                        help="Which token: for workers or for controllers.")],
    rotate: Annotated[bool, typer.Option(
        "--rotate", help="Replace the token's secret: the old token stops working at once; "
                         "nodes already joined keep working.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Show (or rotate) the token a node joins the cluster with."""
    wanted = _ROLES.get(role.lower())
    if wanted is None:
        raise BadInput(f"invalid role {role!r}: expected worker or controller")
    settings = client.settings_of(ctx)
    with client.open_controller(ctx) as ctl:
        token = ctl.call(ctl.ca.GetJoinToken,
                         capb.GetJoinTokenRequest(role=wanted, rotate=rotate)).token
    if quiet:
        typer.echo(token)
        return
    if rotate:
        typer.echo(f"Rotated the {role.lower()} join token; the previous one no longer works.\n")
    controllers = " ".join(f"--controller {a}" for a in client.controller_addrs(settings.controller))
    typer.echo(f"To add a {role.lower()} to this cluster, run on the new node (as root):\n\n"
               f"    swarm-agent --join-token {token} \\\n"
               f"        {controllers} --state-dir /var/lib/swarm-agent \\\n"
               f"        --advertise-addr NODE_IP\n\n"
               f"The node checks the controller's CA against the token before it sends it; "
               f"the join port is the controller's port + 1.")
