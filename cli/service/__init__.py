"""`swarmctl service ...`: the typer group and its commands, one module each
(as SwarmKit's cmd/swarmctl/service has a file per command):

    create.py     create              update.py   update, rollback
    ls.py         ls                  rebalance.py rebalance
    inspect.py    inspect             scale.py    scale
    ps.py         ps                  remove.py   rm
    logs.py       logs

and what they share: flags.py declares the flags create and update both take
(once, as SwarmKit's flagparser), options.py types them, task_spec.py applies
them to a spec, spec.py builds create's and update's specs (pure: a bad value
is a one-line error naming the flag, exit 2, before anything is sent), wait.py
reads the baseline before a change and waits for the tasks after it.

This module only registers the commands; the order here is the order in
`swarmctl service --help`."""

from __future__ import annotations

import typer

from ..errors import ReportingGroup
from . import create, inspect, logs, ls, ps, rebalance, remove, scale, update

app = typer.Typer(help="Manage services.", no_args_is_help=True, rich_markup_mode=None,
                  cls=ReportingGroup)

app.command("create", epilog=create.CREATE_EXAMPLES)(create.create)
app.command("ls", epilog=ls.LS_EXAMPLES)(ls.list_services)
app.command("inspect", epilog=inspect.INSPECT_EXAMPLES)(inspect.inspect)
app.command("ps", epilog=ps.PS_EXAMPLES)(ps.ps)
app.command("scale", epilog=scale.SCALE_EXAMPLES)(scale.scale)
app.command("update", epilog=update.UPDATE_EXAMPLES)(update.update)
app.command("rollback", epilog=update.ROLLBACK_EXAMPLES)(update.rollback)
app.command("rebalance", epilog=rebalance.REBALANCE_EXAMPLES)(rebalance.rebalance)
app.command("rm", epilog=remove.RM_EXAMPLES)(remove.remove)
app.command("logs", help=logs.LOGS_HELP, epilog=logs.LOGS_EXAMPLES)(logs.service_logs)
