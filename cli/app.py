"""`swarmctl`'s commands: the Typer app (run by cli/main.py)."""

from __future__ import annotations

from typing import Annotated

import typer

import swarm

from . import (
    client,
    cluster,
    dashboard,
    events,
    network,
    node,
    payload_commands,
    service,
    stack,
    version,
)
from . import controller as controller_cmd
from .dev import commands as dev_commands
from .errors import ReportingGroup

EPILOG = """\b
Exit status:
  0  success (for create, update and scale: the tasks run, unless -d was given)
  1  the controller refused the request, failed, or could not be reached
  2  bad usage or input (found before anything was sent)
  3  the change was made but the service did not converge: its tasks failed,
     its update paused or rolled back, or --timeout passed (see service ps)
  130  interrupted (Ctrl-C) while waiting; the change goes on regardless

\b
Environment:
  SWARMCTL_CONTROLLER  default for --controller (HOST:PORT)
  SWARMCTL_TLS_DIR     default for --tls-dir (the admin certificate)
  SWARMCTL_INSECURE    1: as --insecure
  XDG_CONFIG_HOME      where the context of `swarmctl dev up` is kept
                       (swarmctl/context.json, default under ~/.config)

\b
Examples:
  swarmctl node ls
  swarmctl service create web --image nginx:alpine --replicas 3 --publish 8080:80
  swarmctl service ps web
  swarmctl apply -f deploy/examples/web.yaml
  swarmctl service update -d web --image nginx:1.27
  swarmctl --controller 10.0.0.1:2377 service scale web=5"""

app = typer.Typer(
    name="swarmctl",
    help="Control a swarm: services, stacks, nodes and networks.",
    epilog=EPILOG,
    no_args_is_help=True,
    rich_markup_mode=None,
    cls=ReportingGroup,
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(service.app, name="service")
app.add_typer(node.app, name="node")
app.add_typer(network.app, name="network")
app.add_typer(cluster.app, name="cluster")
app.add_typer(controller_cmd.app, name="controller")
app.add_typer(stack.app, name="stack")
app.add_typer(payload_commands.secret_app, name="secret")
app.add_typer(payload_commands.config_app, name="config")
app.command("apply", epilog=stack.APPLY_EPILOG)(stack.apply_command)
app.add_typer(dev_commands.app, name="dev")
app.command("events", epilog=events.EPILOG)(events.events_command)
app.command("version", epilog=version.EPILOG)(version.version_command)
app.command("dashboard", epilog=dashboard.EPILOG)(dashboard.dashboard_command)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"swarmctl {swarm.__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    controller: Annotated[str, typer.Option(
        "--controller", "-c", envvar=client.CONTROLLER_ENV, metavar="HOST:PORT",
        help="Controller to talk to [default: the context of `swarmctl dev up`, "
             "else 127.0.0.1:2377].", show_default=False)] = "",
    timeout: Annotated[float, typer.Option(
        "--request-timeout", metavar="SECONDS", min=0.1,
        help="Deadline of each request (the wait of create, update and scale is their "
             "--timeout).")] = client.DEFAULT_TIMEOUT,
    tls_dir: Annotated[str, typer.Option(
        "--tls-dir", envvar=client.TLS_DIR_ENV, metavar="DIR",
        help="Admin identity: node.crt, node.key, ca.crt (as `swarm-controller --admin-out` "
             "writes) [default: the context of `swarmctl dev up`].", show_default=False)] = "",
    insecure: Annotated[bool, typer.Option(
        "--insecure", envvar=client.INSECURE_ENV,
        help="Plaintext gRPC to an --insecure controller (development only).")] = False,
    version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version,
        help="Print swarmctl's version and exit.")] = False,
) -> None:
    """Control a swarm: services, stacks, nodes and networks."""
    client.store_settings(ctx, client.Settings(controller=client.default_controller(controller),
                                               timeout=timeout, tls_dir=tls_dir,
                                               insecure=insecure))

