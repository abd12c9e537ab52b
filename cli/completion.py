"""Shell completion of object names: `swarmctl service scale <TAB>` lists the
cluster's services, `swarmctl node update <TAB>` its nodes.

Completion runs inside the shell's prompt, so it must never print an error
or keep the operator waiting: each lookup has a short deadline, and any
failure (no controller, no certificate) completes nothing, which the shell
shows as no suggestions. The static part (commands and options) comes from
typer: `swarmctl --install-completion` or `--show-completion`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import typer

from swarm.api.v1 import control_pb2 as cpb

from . import client
from .compose import NAMESPACE_LABEL
from .errors import CliError

# The shell waits for us on every TAB: a controller that does not answer
# within this is as good as absent.
LOOKUP_TIMEOUT = 1.5

NamesOf = Callable[[client.Controller], Iterable[str]]


def _root_settings(ctx: typer.Context) -> client.Settings:
    """The global options as typed so far. The root callback does not run
    while completing, so they are read from the parsed parameters."""
    params = ctx.find_root().params
    return client.Settings(
        controller=client.default_controller(params.get("controller") or None),
        timeout=LOOKUP_TIMEOUT,
        tls_dir=str(params.get("tls_dir") or ""),
        insecure=bool(params.get("insecure")))


def matching(names: Iterable[str], incomplete: str, suffix: str = "") -> list[str]:
    """The names that start with what was typed, sorted, each with `suffix`."""
    return sorted({name + suffix for name in names if name.startswith(incomplete)})


def lookup(ctx: typer.Context, names_of: NamesOf) -> list[str]:
    """The names `names_of` reads from the controller; none on any failure."""
    settings = _root_settings(ctx)
    try:
        with client.connect(settings.controller, timeout=settings.timeout,
                            tls_dir=settings.tls_dir, insecure=settings.insecure) as ctl:
            return list(names_of(ctl))
    except (CliError, OSError, ValueError):
        return []


def _services(ctl: client.Controller) -> Iterable[str]:
    return (s.spec.name for s in ctl.call(ctl.stub.ListServices, cpb.ListServicesRequest()).services)


def _nodes(ctl: client.Controller) -> Iterable[str]:
    return (n.description.hostname or n.id
            for n in ctl.call(ctl.stub.ListNodes, cpb.ListNodesRequest()).nodes)


def _networks(ctl: client.Controller) -> Iterable[str]:
    return (n.spec.name for n in ctl.call(ctl.stub.ListNetworks, cpb.ListNetworksRequest()).networks)


def _stacks(ctl: client.Controller) -> Iterable[str]:
    request = cpb.ListServicesRequest()
    request.filters.labels[NAMESPACE_LABEL] = ""
    return (s.spec.labels[NAMESPACE_LABEL]
            for s in ctl.call(ctl.stub.ListServices, request).services)


def services(ctx: typer.Context, incomplete: str) -> list[str]:
    return matching(lookup(ctx, _services), incomplete)


def service_scales(ctx: typer.Context, incomplete: str) -> list[str]:
    """`SERVICE=` for `service scale`: the operator types the count."""
    if "=" in incomplete:
        return []
    return matching(lookup(ctx, _services), incomplete, suffix="=")


def nodes(ctx: typer.Context, incomplete: str) -> list[str]:
    return matching(lookup(ctx, _nodes), incomplete)


def networks(ctx: typer.Context, incomplete: str) -> list[str]:
    return matching(lookup(ctx, _networks), incomplete)


def stacks(ctx: typer.Context, incomplete: str) -> list[str]:
    return matching(lookup(ctx, _stacks), incomplete)
