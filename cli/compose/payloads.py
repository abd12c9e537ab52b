"""The file's top-level `secrets:` and `configs:`, and each service's use of them.

Top level, as compose writes them:

    secrets:
      db_password:
        file: ./db_password.txt      # read now; stored as STACK_db_password.3f9a1c
      tls_key:
        external: true               # exists already, under its own name
        name: prod_tls_key           # (optional) that name

A payload from a file is named by its content: STACK_KEY (or `name:`) plus
'.' and the first 6 hex digits of its SHA-256, so a changed file is a new
version and the services using it roll to it (cli/stack_payloads.py). The
file is read here, checked (it exists, 1 byte to 500 KiB), and kept in
memory only; nothing prints it.

Per service, the short syntax (`secrets: [db_password]`) or the long one
(`- source: db_password` with target, uid, gid, mode). The target defaults
to the key, as docker's does: /run/secrets/db_password, or /db_password
for a config. `mode` is octal in YAML (0400) or a string ("0400").
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from swarm.api import payloads
from swarm.api.payloads import Kind
from swarm.api.v1 import objects_pb2 as pb
from swarm.api.validation import ValidationError

from .context import Context
from .model import Node, StackPayload, quote
from .schema import as_external, as_integer, as_list, as_mapping, as_string, fail
from .top_level import context_name

DIGEST_CHARS = 6
_MAX_ID = 2**32 - 1


def content_name(base: str, data: bytes) -> str:
    """NAME.DIGEST: the version of a payload named by its content."""
    return f"{base}.{hashlib.sha256(data).hexdigest()[:DIGEST_CHARS]}"


def top_payloads(context: Context, kind: Kind, node: Node | None) -> dict[str, StackPayload]:
    declared: dict[str, StackPayload] = {}
    if node is None:
        return declared
    section = f"{kind}s"
    for key, value in as_mapping(node, section).items():
        path = f"{section}.{key}"
        options = as_mapping(value, path)
        external = False
        custom_name: str | None = None
        file_node: Node | None = None
        for option, option_node in options.items():
            where = f"{path}.{option}"
            if option == "external":
                external, legacy_name = as_external(option_node, where)
                custom_name = legacy_name or custom_name
            elif option == "name":
                custom_name = as_string(option_node, where)
            elif option == "file":
                file_node = option_node
            elif option in ("labels", "driver", "driver_opts", "template_driver"):
                context.warn(option_node, where, "not supported; ignored")
            elif option in ("environment", "content"):
                fail(option_node, where, f"not supported: give the {kind} as `file:` (or "
                                         "`external: true`)")
            elif not option.startswith("x-"):
                fail(option_node, where, "unknown key (expected file, external or name)")
        if external:
            if file_node is not None:
                fail(file_node, f"{path}.file", f"an external {kind} takes no file")
            name = custom_name or key
            _check_name(kind, value, f"{path}.name", name)
            declared[key] = StackPayload(key=key, kind=kind, name=name, external=True,
                                         location=value.location)
            continue
        if file_node is None:
            fail(value, path, f"a {kind} needs `file:` (or `external: true`)")
        source = as_string(file_node, f"{path}.file")
        data = _read(context, kind, file_node, f"{path}.file", source)
        name = content_name(custom_name or context_name(context, key), data)
        _check_name(kind, value, f"{path}.name" if custom_name else path, name)
        declared[key] = StackPayload(key=key, kind=kind, name=name, external=False,
                                     location=value.location, data=data, source=source)
    return declared


def _check_name(kind: Kind, node: Node, path: str, name: str) -> None:
    try:
        payloads.check_name(kind, name, path)
    except ValidationError as error:
        fail(node, path, error.problem)


def _read(context: Context, kind: Kind, node: Node, path: str, source: str) -> bytes:
    file = Path(source)
    if not file.is_absolute():
        file = context.base_dir / file
    try:
        data = context.read_bytes(file)
    except OSError as error:
        fail(node, path, f"cannot read {kind} file {quote(source)}: "
                         f"{error.strerror or error}")
    try:
        payloads.check_data(kind, data, path)
    except ValidationError as error:
        fail(node, path, f"{kind} file {quote(source)}: {error.problem}")
    return data


def service_references(context: Context, kind: Kind, node: Node, path: str
                       ) -> list[pb.SecretReference | pb.ConfigReference]:
    """A service's `secrets:` or `configs:` list, by the stored names."""
    declared = context.secrets if kind == "secret" else context.configs
    refs: list[pb.SecretReference | pb.ConfigReference] = []
    for index, item in enumerate(as_list(node, path)):
        where = f"{path}[{index}]"
        target, uid, gid, mode = "", 0, 0, 0
        target_node = item
        if isinstance(item.value, dict):
            fields = as_mapping(item, where)
            if "source" not in fields:
                fail(item, where, "source: required (the top-level name)")
            key = as_string(fields["source"], f"{where}.source")
            for option, value in fields.items():
                at = f"{where}.{option}"
                if option == "target":
                    target, target_node = as_string(value, at), value
                elif option in ("uid", "gid"):
                    number = as_integer(value, at, maximum=_MAX_ID)
                    uid, gid = (number, gid) if option == "uid" else (uid, number)
                elif option == "mode":
                    mode = _mode(value, at)
                elif option != "source" and not option.startswith("x-"):
                    fail(value, at, "unknown key (expected source, target, uid, gid, mode)")
        else:
            key = as_string(item, where)
        payload = declared.get(key)
        if payload is None:
            fail(item, where, f"{kind} {quote(key)} is not declared in the top-level "
                              f"`{kind}s:`")
        try:
            target = payloads.normalize_target(kind, target, key, f"{where}.target")
        except ValidationError as error:
            fail(target_node, f"{where}.target", error.problem)
        file = pb.FileTarget(name=target, uid=uid, gid=gid, mode=mode)
        refs.append(pb.SecretReference(secret_name=payload.name, file=file) if kind == "secret"
                    else pb.ConfigReference(config_name=payload.name, file=file))
    return refs


def _mode(node: Node, path: str) -> int:
    """YAML's octal 0400 (an int, 256), or a string "0400"."""
    if isinstance(node.value, str):
        try:
            return payloads.parse_mode(node.value, path)
        except ValidationError as error:
            fail(node, path, error.problem)
    if isinstance(node.value, bool) or not isinstance(node.value, int):
        fail(node, path, "expected an octal file mode such as 0400")
    if not 0 <= node.value <= payloads.MAX_MODE:
        fail(node, path, f"invalid mode {node.value}: expected permission bits 0 to 0777, "
                         "written in octal (e.g. 0400)")
    return node.value

