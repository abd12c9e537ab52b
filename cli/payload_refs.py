"""Parsing and editing a service's secret and config references: the
`--secret`/`--config` flags of `service create`, the `--secret-add/-rm` and
`--config-add/-rm` of `service update`, and compose's short and long syntax
(cli/compose/) all end here, so one rule checks them: swarm.api.payloads,
the controller's own."""

from __future__ import annotations

from collections.abc import Sequence

from swarm.api import payloads
from swarm.api.payloads import Kind
from swarm.api.v1 import objects_pb2 as pb
from swarm.api.validation import ValidationError

from .errors import BadFlag

Reference = pb.SecretReference | pb.ConfigReference


def _number(flag: str, text: str, key: str) -> int:
    if not text.isdigit():
        raise BadFlag(flag, f"invalid {key} {text!r}: expected a number")
    value = int(text)
    if value > 0xFFFFFFFF:
        raise BadFlag(flag, f"invalid {key} {text!r}: out of range")
    return value


def make_reference(kind: Kind, source: str, target: str = "", uid: int = 0, gid: int = 0,
                   mode: int = 0) -> Reference:
    file = pb.FileTarget(name=target, uid=uid, gid=gid, mode=mode)
    if kind == "secret":
        return pb.SecretReference(secret_name=source, file=file)
    return pb.ConfigReference(config_name=source, file=file)


def source_of(ref: Reference) -> str:
    return ref.secret_name if isinstance(ref, pb.SecretReference) else ref.config_name


def parse_reference(kind: Kind, flag: str, text: str) -> Reference:
    """'NAME' or 'source=NAME,target=PATH,uid=U,gid=G,mode=0400', checked as the
    controller will (raises BadFlag: exit 2, nothing sent)."""
    fields: dict[str, str] = {}
    if "=" not in text:
        fields["source"] = text.strip()
    else:
        for item in text.split(","):
            key, has_value, value = item.partition("=")
            key = key.strip().lower()
            if not has_value or not value.strip():
                raise BadFlag(flag, f"invalid {text!r}: {key!r} needs a value")
            if key == "src":
                key = "source"
            if key not in ("source", "target", "uid", "gid", "mode"):
                raise BadFlag(flag, f"invalid {text!r}: unknown key {key!r} (expected source, "
                                    "target, uid, gid, mode)")
            fields[key] = value.strip()
    source = fields.get("source", "")
    try:
        payloads.check_name(kind, source, flag)
        mode = payloads.parse_mode(fields["mode"], f"{flag} mode") if "mode" in fields else 0
        target = payloads.normalize_target(kind, fields.get("target", ""), source,
                                           f"{flag} target")
    except ValidationError as error:
        raise BadFlag(flag, error.problem) from None
    return make_reference(kind, source, "" if target == source else target,
                          _number(flag, fields.get("uid", "0"), "uid"),
                          _number(flag, fields.get("gid", "0"), "gid"), mode)


def append_references(container: pb.ContainerSpec, kind: Kind, refs: Sequence[Reference]) -> None:
    if kind == "secret":
        container.secrets.extend(r for r in refs if isinstance(r, pb.SecretReference))
    else:
        container.configs.extend(r for r in refs if isinstance(r, pb.ConfigReference))


def edit_references(container: pb.ContainerSpec, kind: Kind, remove: Sequence[str],
                    add: Sequence[str]) -> None:
    """`service update --KIND-rm NAME --KIND-add SPEC`: removals by name (or
    target) first, then additions, which replace a reference to the same name."""
    if not remove and not add:
        return
    flag = f"--{kind}"
    current: list[Reference] = list(container.secrets if kind == "secret"
                                    else container.configs)
    for name in remove:
        if not name.strip():
            raise BadFlag(f"{flag}-rm", "expected a name")
        current = [r for r in current if source_of(r) != name and r.file.name != name]
    for text in add:
        new = parse_reference(kind, f"{flag}-add", text)
        current = [r for r in current if source_of(r) != source_of(new)] + [new]
    if kind == "secret":
        del container.secrets[:]
    else:
        del container.configs[:]
    append_references(container, kind, current)
