"""Secrets and configs: the rules both sides share, pure.

A secret or config is a named payload (1 byte to 500 KiB, as Swarm's) that
services reference; each reference says which file it becomes in the
container (FileTarget: name, uid, gid, mode). The controller checks the
objects and references with these functions at its API edge; swarmctl checks
the same before sending (exit 2, nothing sent); the agent places the files
where `container_path` says.

Where the files appear: a secret at /run/secrets/TARGET (TARGET defaults to
the secret's name; an absolute TARGET is used as it is), a config at its
TARGET (default /NAME), as docker does. A target with a '..' component is
refused: it would name a place outside where the reference says
(/run/secrets/../../etc/passwd), and on the agent a path that leaves its
directory is refused again (defence in depth, agent/payloads.py).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Sequence
from typing import Literal

from swarm.api.v1 import objects_pb2 as pb
from swarm.api.validation import ValidationError

Kind = Literal["secret", "config"]

MAX_PAYLOAD_BYTES = 500 * 1024  # Swarm's limit (SwarmKit MaxSecretSize)
SECRETS_DIR = "/run/secrets"
DEFAULT_MODE = 0o444  # docker's default file mode for both
MAX_MODE = 0o777
_MAX_NAME = 64
# Docker's secret/config names: letters, digits, '_', '.', '-', starting with
# a letter or digit (SwarmKit validateSecretSpec: 64 characters at most).
_NAME_RE = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9_.-]{0,63})")
_MAX_TARGET = 4096


def _show(text: str, limit: int = 64) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def check_name(kind: Kind, name: str, field: str = "spec.name") -> None:
    if not name:
        raise ValidationError(field, f"a {kind} needs a name (e.g. db_password)")
    if len(name) > _MAX_NAME or not _NAME_RE.fullmatch(name):
        raise ValidationError(field, f"invalid {kind} name {_show(name)}: expected 1-64 letters, "
                                     "digits, '_', '.' or '-', starting with a letter or digit")


def check_data(kind: Kind, data: bytes, field: str = "data") -> None:
    if not data:
        raise ValidationError(field, f"the {kind} is empty (give it at least one byte)")
    if len(data) > MAX_PAYLOAD_BYTES:
        raise ValidationError(field, f"the {kind} is {len(data)} bytes, over the limit of "
                                     f"{MAX_PAYLOAD_BYTES} bytes (500 KiB)")


def check_labels(labels: Iterable[str], field: str = "spec.labels") -> None:
    for key in labels:
        if not str(key).strip():
            raise ValidationError(field, "label keys must not be empty")


def container_path(kind: Kind, target: str) -> str:
    """Where a file with this (normalized) target appears in the container."""
    if kind == "secret" and not target.startswith("/"):
        return posixpath.join(SECRETS_DIR, target)
    return target if target.startswith("/") else "/" + target


def normalize_target(kind: Kind, target: str, name: str, field: str) -> str:
    """The target with its default (the payload's name) filled in; raises
    ValidationError for one that would leave its place."""
    target = target or name
    if len(target) > _MAX_TARGET or "\0" in target:
        raise ValidationError(field, f"invalid target {_show(target)}")
    parts = target.split("/")
    if ".." in parts:
        raise ValidationError(field, f"target {_show(target)} has a '..' component: it would "
                                     "point outside "
                                     + (SECRETS_DIR if kind == "secret" and not
                                        target.startswith("/") else "the container's file system"))
    path = posixpath.normpath(container_path(kind, target))
    if path == "/" or target.endswith("/"):
        raise ValidationError(field, f"target {_show(target)} must name a file")
    if kind == "secret" and path == SECRETS_DIR:
        raise ValidationError(field, f"target {_show(target)} must name a file under "
                                     f"{SECRETS_DIR}")
    return target


def check_mode(mode: int, field: str) -> None:
    if mode > MAX_MODE:
        raise ValidationError(field, f"invalid file mode {mode:o} (octal): expected permission "
                                     "bits 0 to 0777, e.g. 0400")


def parse_mode(text: str, field: str) -> int:
    """An octal mode as written by an operator ("0400", "400", "0o400")."""
    raw = text.strip().lower().removeprefix("0o")
    if not raw or any(c not in "01234567" for c in raw):
        raise ValidationError(field, f"invalid file mode {_show(text)}: expected an octal "
                                     "number such as 0400 or 0444")
    mode = int(raw, 8)
    check_mode(mode, field)
    return mode


def normalize_file(kind: Kind, file: pb.FileTarget, name: str, field: str) -> None:
    """Check a reference's file target in place, filling in the defaults."""
    file.name = normalize_target(kind, file.name, name, f"{field}.name")
    check_mode(file.mode, f"{field}.mode")
    if file.mode == 0:
        file.mode = DEFAULT_MODE


def check_distinct_paths(container: pb.ContainerSpec, path: str) -> None:
    """No two payload files (nor a payload file and a mount) at one place."""
    seen: dict[str, str] = {posixpath.normpath(m.target): f"mounts[{i}]"
                            for i, m in enumerate(container.mounts) if m.target}
    entries: Sequence[tuple[Kind, str, pb.FileTarget]] = [
        *(("secret", f"secrets[{i}]", r.file) for i, r in enumerate(container.secrets)),
        *(("config", f"configs[{i}]", r.file) for i, r in enumerate(container.configs)),
    ]
    for kind, where, file in entries:
        target = posixpath.normpath(container_path(kind, file.name))
        if target in seen:
            raise ValidationError(f"{path}.{where}.file.name",
                                  f"{target} is already used by {seen[target]}")
        seen[target] = where


def _resolve(kind: Kind, ref_id: str, ref_name: str, by_id: dict[str, str],
             by_name: dict[str, str], field: str) -> tuple[str, str]:
    """(id, name) of a reference given by ID (wins) or name."""
    if ref_id:
        if ref_id not in by_id:
            raise ValidationError(f"{field}.{kind}_id", f"{kind} {_show(ref_id)} not found")
        return ref_id, by_id[ref_id]
    if not ref_name:
        raise ValidationError(f"{field}.{kind}_name", f"which {kind}? (give its name)")
    found = by_name.get(ref_name)
    if found is None:
        raise ValidationError(f"{field}.{kind}_name",
                              f"{kind} {_show(ref_name)} not found (create it first: "
                              f"swarmctl {kind} create {ref_name} FILE)")
    return found, ref_name


def resolve_references(container: pb.ContainerSpec, secrets: dict[str, str],
                       configs: dict[str, str], path: str = "spec.task.container") -> None:
    """Resolve the container's secret and config references in place: each
    gets its ID and name (from `secrets`/`configs`, ID -> name), and its file
    target checked with its defaults filled in. Raises ValidationError naming
    the first bad reference; nothing is changed then that matters (the caller
    works on a copy)."""
    kinds: tuple[tuple[Kind, dict[str, str]], ...] = (("secret", secrets), ("config", configs))
    for kind, known in kinds:
        by_name = {name: object_id for object_id, name in known.items()}
        refs = container.secrets if kind == "secret" else container.configs
        for index, ref in enumerate(refs):
            field = f"{path}.{kind}s[{index}]"
            if kind == "secret":
                assert isinstance(ref, pb.SecretReference)
                ref.secret_id, ref.secret_name = _resolve(
                    kind, ref.secret_id, ref.secret_name, known, by_name, field)
                name = ref.secret_name
            else:
                assert isinstance(ref, pb.ConfigReference)
                ref.config_id, ref.config_name = _resolve(
                    kind, ref.config_id, ref.config_name, known, by_name, field)
                name = ref.config_name
            normalize_file(kind, ref.file, name, f"{field}.file")
    check_distinct_paths(container, path)


def referenced_ids(container: pb.ContainerSpec) -> tuple[set[str], set[str]]:
    """(secret IDs, config IDs) a container spec uses."""
    return ({r.secret_id for r in container.secrets if r.secret_id},
            {r.config_id for r in container.configs if r.config_id})
