"""`swarmctl secret ...` and `swarmctl config ...`: create, ls, inspect, rm.

The two nouns behave alike (docker's), so one builder makes both apps. The
payload is read from FILE or standard input (`-`) and checked here first
(empty, over 500 KiB, a bad name: exit 2, nothing sent). `secret inspect`
shows metadata and a digest, never the data (the controller never sends
it); `config inspect --pretty` shows a config's data, as docker's does.
"""

# No `from __future__ import annotations`: the commands are made in a closure, and
# typer evaluates their annotations (which use `kind`) where they are defined.

import sys
from collections.abc import Sequence
from typing import Annotated

import typer

from swarm.api import payloads
from swarm.api.payloads import Kind
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.api.validation import ValidationError

from . import client, parsing, render
from .client import fail_if, for_each
from .errors import BadFlag, BadInput, ReportingGroup
from .options import InspectOutputOpt, OutputOpt, QuietOpt, examples

_FILTERS = ("name", "id", "label")


def read_payload(kind: Kind, source: str) -> bytes:
    """The payload from a file or '-' (stdin), checked (raises BadInput)."""
    try:
        if source == "-":
            data = sys.stdin.buffer.read(payloads.MAX_PAYLOAD_BYTES + 1)
        else:
            with open(source, "rb") as file:
                data = file.read(payloads.MAX_PAYLOAD_BYTES + 1)
    except OSError as error:
        raise BadInput(f"{kind} file {source}: {error.strerror or error}") from None
    try:
        payloads.check_data(kind, data, f"{kind} file {source}")
    except ValidationError as error:
        problem = error.problem if len(data) <= payloads.MAX_PAYLOAD_BYTES else (
            f"the {kind} is over the limit of {payloads.MAX_PAYLOAD_BYTES} bytes (500 KiB)")
        raise BadInput(f"{error.field}: {problem}") from None
    return data


def payload_table(objects: Sequence[pb.Secret] | Sequence[pb.Config]) -> str:
    now = render.now_utc()
    rows = [[obj.id, obj.spec.name, str(obj.size), render.ago(obj.meta.created_at, now),
             render.labels(obj.spec.labels)] for obj in objects]
    return render.table(["ID", "NAME", "SIZE", "CREATED", "LABELS"], rows)


def payload_details(obj: pb.Secret | pb.Config, data: bytes | None = None) -> str:
    lines: list[render.Line] = [
        (0, "ID", obj.id),
        (0, "Name", obj.spec.name),
        (0, "Size", f"{obj.size} bytes"),
        (0, "Digest", obj.digest),
    ]
    if obj.spec.labels:
        lines.append((0, "Labels", render.labels(obj.spec.labels)))
    lines += [(0, "Created", render.timestamp(obj.meta.created_at)),
              (0, "Updated", render.timestamp(obj.meta.updated_at))]
    text = render.details(lines)
    if data is not None:
        text += "\nData:\n" + data.decode("utf-8", errors="replace").rstrip("\n")
    return text


def make_app(kind: Kind) -> typer.Typer:
    plural = f"{kind}s"
    app = typer.Typer(help=f"Manage {plural}"
                      + (": sensitive data given to services as files in /run/secrets."
                         if kind == "secret" else ": files given to services."),
                      no_args_is_help=True, rich_markup_mode=None, cls=ReportingGroup)

    @app.command("create", help=f"Create a {kind} from FILE or standard input; prints its ID.",
                 epilog=examples(
        f"swarmctl {kind} create db_password ./password.txt",
        f"printf s3cret | swarmctl {kind} create --label env=prod db_password -",
    ) + f"""

\b
The {kind} is read from FILE, or from standard input with '-'; 1 byte to 500 KiB.
It cannot be changed once created: create a new one and point services at it
(`apply` does that for you, naming versions by content).""")
    def create(
        ctx: typer.Context,
        name: Annotated[str, typer.Argument(metavar="NAME", help=f"Name of the {kind}.")],
        file: Annotated[str, typer.Argument(metavar="FILE|-", help="Where the data is; '-': "
                                                                   "standard input.")],
        label: Annotated[list[str] | None, typer.Option(
            "--label", "-l", metavar="K=V", help=f"{kind.title()} label (repeatable).")] = None,
    ) -> None:
        try:
            payloads.check_name(kind, name, "NAME")
        except ValidationError as error:
            raise BadInput(str(error)) from None
        labels: dict[str, str] = {}
        for item in label or []:
            key, value = parsing.key_value("--label", item, value_required=False)
            labels[key] = value
        data = read_payload(kind, file)
        with client.open_controller(ctx) as ctl:
            if kind == "secret":
                object_id = ctl.call(ctl.stub.CreateSecret, cpb.CreateSecretRequest(
                    spec=pb.SecretSpec(name=name, labels=labels), data=data)).secret.id
            else:
                object_id = ctl.call(ctl.stub.CreateConfig, cpb.CreateConfigRequest(
                    spec=pb.ConfigSpec(name=name, labels=labels), data=data)).config.id
        typer.echo(object_id)

    @app.command("ls", help=f"List {plural} (never their data).", epilog=examples(
        f"swarmctl {kind} ls", f"swarmctl {kind} ls -q",
        f"swarmctl {kind} ls --filter label=env=prod"))
    def list_payloads(
        ctx: typer.Context,
        output: OutputOpt = render.Output.table,
        quiet: QuietOpt = False,
        filters: Annotated[list[str] | None, typer.Option(
            "--filter", "-f", metavar="KEY=VALUE",
            help="name=NAME, id=PREFIX or label=K[=V] (repeatable).")] = None,
    ) -> None:
        wanted = parsing.parse_filters("--filter", filters or [], _FILTERS)
        label_filters: dict[str, str] = {}
        for item in wanted.get("label", []):
            key, _, value = item.partition("=")
            if not key:
                raise BadFlag("--filter", f"invalid label filter {item!r}")
            label_filters[key] = value
        with client.open_controller(ctx) as ctl:
            found: list[pb.Secret] | list[pb.Config]
            if kind == "secret":
                request = cpb.ListSecretsRequest()
                request.filters.names.extend(wanted.get("name", []))
                request.filters.id_prefixes.extend(wanted.get("id", []))
                request.filters.labels.update(label_filters)
                found = list(ctl.call(ctl.stub.ListSecrets, request).secrets)
            else:
                config_request = cpb.ListConfigsRequest()
                config_request.filters.names.extend(wanted.get("name", []))
                config_request.filters.id_prefixes.extend(wanted.get("id", []))
                config_request.filters.labels.update(label_filters)
                found = list(ctl.call(ctl.stub.ListConfigs, config_request).configs)
        if quiet:
            typer.echo("\n".join(obj.id for obj in found))
            return
        typer.echo(render.render(output, found, lambda: payload_table(found)))

    @app.command("inspect", help=f"Show {plural}: metadata and a digest" + (
        ", never the data." if kind == "secret" else "; --pretty shows the data too."),
        epilog=examples(
        f"swarmctl {kind} inspect db_password",
        *([f"swarmctl {kind} inspect --pretty nginx_conf"] if kind == "config" else [])))
    def inspect(
        ctx: typer.Context,
        refs: Annotated[list[str], typer.Argument(metavar=kind.upper(),
                                                  help="Names, IDs or ID prefixes.")],
        output: InspectOutputOpt = render.Output.json,
        pretty: Annotated[bool, typer.Option(
            "--pretty", help="Human-readable" + (", with the data." if kind == "config"
                                                 else " (the data is never shown)."))] = False,
    ) -> None:
        with client.open_controller(ctx) as ctl:
            if kind == "secret":
                secrets, failed = for_each(refs, lambda ref: ctl.call(
                    ctl.stub.GetSecret, cpb.GetRequest(ref=ref)).secret)
                if pretty:
                    typer.echo("\n\n".join(payload_details(s) for s in secrets))
                elif secrets or output is not render.Output.table:
                    typer.echo(render.inspected(output, secrets, payload_details))
            else:
                configs, failed = for_each(refs, lambda ref: ctl.call(
                    ctl.stub.GetConfig, cpb.GetConfigRequest(ref=ref, with_data=pretty)))
                if pretty:
                    typer.echo("\n\n".join(payload_details(c.config, c.data) for c in configs))
                elif configs or output is not render.Output.table:
                    typer.echo(render.inspected(output, [c.config for c in configs],
                                                payload_details))
        fail_if(failed)

    @app.command("rm", help=f"Remove {plural} that no service uses (refused, naming the "
                 "services, otherwise).", epilog=examples(f"swarmctl {kind} rm db_password",
                                       f"swarmctl {kind} rm a b"))
    def remove(
        ctx: typer.Context,
        refs: Annotated[list[str], typer.Argument(metavar=kind.upper())],
    ) -> None:
        with client.open_controller(ctx) as ctl:
            method = ctl.stub.RemoveSecret if kind == "secret" else ctl.stub.RemoveConfig

            def remove_one(ref: str) -> None:
                ctl.call(method, cpb.RemoveRequest(ref=ref))
                typer.echo(ref)

            _, failed = for_each(refs, remove_one)
        fail_if(failed)

    return app


secret_app = make_app("secret")
config_app = make_app("config")
