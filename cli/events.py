"""`swarmctl events`: the cluster's changes as they happen, as `docker events`
prints them (one line per event):

    2026-12-05T12:00:00.123456789Z service create 3kx9v0a1b2c3 (image=nginx, name=web, replicas=3)

The controller streams them from its watch cache (Control.Events,
controller/api/events.py), first those of its replay window from --since,
then live ones until --until or Ctrl-C. `-o json` prints one JSON object per
line (for jq), not one array. Filters: type=service|task|node|network|...,
name=NAME (an object's name or ID prefix; a task also matches by its
service's name), event=create|update|remove (docker's name for the action).
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator, Sequence
from typing import Annotated, Any

import grpc
import typer

from swarm.api.v1 import control_pb2 as cpb

from . import client, render
from .errors import EXIT_INTERRUPTED, BadFlag, CliError
from .logs import format_timestamp, parse_since
from .options import examples
from .parsing import parse_filters

EVENT_TYPES = ("service", "task", "node", "network", "cluster", "secret", "config")
ACTIONS = ("create", "update", "remove")
FILTER_KEYS = ("type", "name", "event")


def build_request(since: str, until: str, filters: Sequence[str], now_ns: int
                  ) -> tuple[cpb.EventsRequest, frozenset[str]]:
    """The request and the actions to keep (filtered here; the server filters the rest).
    Raises BadFlag for a bad flag, before anything is sent."""
    found = parse_filters("--filter", filters, FILTER_KEYS)
    for value in found.get("type", []):
        if value not in EVENT_TYPES:
            raise BadFlag("--filter", f"invalid type {value!r}: expected one of "
                                      f"{', '.join(EVENT_TYPES)}")
    for value in found.get("event", []):
        if value not in ACTIONS:
            raise BadFlag("--filter", f"invalid event {value!r}: expected one of "
                                      f"{', '.join(ACTIONS)}")
    request = cpb.EventsRequest(types=found.get("type", []), names=found.get("name", []))
    if since:
        request.since.FromNanoseconds(parse_since("--since", since, now_ns))
    if until:
        request.until.FromNanoseconds(parse_since("--until", until, now_ns))
    if since and until and request.until.ToNanoseconds() < request.since.ToNanoseconds():
        raise BadFlag("--until", "must not be before --since")
    return request, frozenset(found.get("event", []))


def event_line(event: cpb.Event) -> str:
    """docker's line: TIME TYPE ACTION ID (key=value, ...), the attributes sorted with
    the name among them."""
    attributes = dict(event.attributes)
    if event.name:
        attributes["name"] = event.name
    shown = ", ".join(f"{key}={value}" for key, value in sorted(attributes.items()))
    return (f"{format_timestamp(event.time.ToNanoseconds())} {event.type} {event.action} "
            f"{event.id}" + (f" ({shown})" if shown else ""))


def event_data(event: cpb.Event) -> dict[str, Any]:
    """One event as plain data for -o json (docker's field names where it has them)."""
    nanos = event.time.ToNanoseconds()
    return {"type": event.type, "action": event.action, "id": event.id, "name": event.name,
            "attributes": dict(event.attributes), "time": nanos // 1_000_000_000,
            "timeNano": nanos, "revision": event.revision}


def stream(ctl: client.Controller, request: cpb.EventsRequest
           ) -> Generator[cpb.Event, None, None]:
    """The events of one call; its errors become one-line RpcFailures. The caller
    cancels the call by closing the iterator."""
    call: Any = ctl.stub.Events(request)  # a grpc.Call too: cancel()
    try:
        for batch in call:
            yield from batch.events
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.CANCELLED:
            return
        raise client.describe_rpc_error(error, ctl.target, ctl.timeout) from None
    finally:
        call.cancel()


FilterOpt = Annotated[list[str] | None, typer.Option(
    "--filter", "-f", metavar="KEY=VALUE",
    help="type=service|task|node|network|cluster|secret|config, name=NAME (or ID prefix; a "
         "task also by its service's name), event=create|update|remove. Repeatable: "
         "values of one key are alternatives.")]


def events_command(
    ctx: typer.Context,
    since: Annotated[str, typer.Option(
        "--since", metavar="TIME",
        help="Show events from this time on (a duration before now such as 10m, RFC 3339 or "
             "Unix time), as far back as the controller keeps them (15 minutes).")] = "",
    until: Annotated[str, typer.Option(
        "--until", metavar="TIME",
        help="Stop after this time (same forms; a duration means that long ago, so "
             "`--since 10m --until 0s` prints what happened and ends).")] = "",
    filters: FilterOpt = None,
    output: Annotated[render.Output, typer.Option(
        "--output", "-o", case_sensitive=False,
        help="table: docker's one line per event; json: one JSON object per line.")]
        = render.Output.table,
) -> None:
    """Print the cluster's events as they happen (until --until or Ctrl-C)."""
    if output is render.Output.yaml:
        raise BadFlag("--output", "events are printed as lines or JSON lines (table or json)")
    request, actions = build_request(since, until, filters or [], time.time_ns())
    with client.open_controller(ctx) as ctl:
        events = stream(ctl, request)
        try:
            for event in events:
                if actions and event.action not in actions:
                    continue
                if output is render.Output.json:
                    typer.echo(json.dumps(event_data(event), sort_keys=True))
                else:
                    typer.echo(event_line(event))
        except KeyboardInterrupt:
            raise SystemExit(EXIT_INTERRUPTED) from None
        except CliError:
            raise
        finally:
            events.close()


EPILOG = examples("swarmctl events",
                  "swarmctl events --since 10m --until 0s",
                  "swarmctl events -f type=task -f name=web -o json")
