"""Registry credentials in docker's format, read the same way on both sides.

swarmctl reads the operator's (`~/.docker/config.json`, or
`--registry-auth-file FILE`) to send with a service (--with-registry-auth)
and to resolve tags to digests; `swarm-agent --registry-auth-file FILE` reads
a node's own. The format is docker's::

    {"auths": {"registry.example.com": {"auth": "<base64 of user:password>"},
               "https://index.docker.io/v1/": {"auth": "..."}}}

(`username` and `password` given apart are accepted too, as docker writes
them for some logins). Keys are normalised as registry names
(swarm.api.imageref.registry_key: scheme and path dropped, Docker Hub's aliases
are docker.io). Credential helpers (`credsStore`, `credHelpers`) are not run:
a file that has nothing but them is refused with a line saying so.

Pure: parsing only; the callers read the file. A Credential's password stays
out of its repr, so that it cannot reach a log or a traceback by accident.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .imageref import InvalidReference, parse_reference, registry_key

MAX_FILE_BYTES = 1024 * 1024
MAX_FIELD = 4096  # bytes of a user name or password: far above any real one


class AuthFileError(ValueError):
    """The credentials file is unusable; the message names what and where."""


@dataclass(frozen=True)
class Credential:
    registry: str  # host[:port]; docker.io for Docker Hub
    username: str
    password: str = field(repr=False)

    def basic_token(self) -> str:
        """base64 of user:password, as docker's `auth` field and HTTP basic auth."""
        return base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def credential_problem(registry: str, username: str, password: str) -> str | None:
    """Why these cannot be credentials for a registry, or None."""
    if not registry or registry != registry_key(registry) or any(c.isspace() for c in registry):
        return f"invalid registry name {registry!r}"
    if not username:
        return "the user name is empty"
    if ":" in username:
        return "the user name contains ':' (basic auth cannot carry it)"
    if not password:
        return "the password is empty"
    if len(username.encode()) > MAX_FIELD or len(password.encode()) > MAX_FIELD:
        return f"the user name or password is longer than {MAX_FIELD} bytes"
    if any(ord(c) < 32 for c in username + password):
        return "the user name or password contains control characters"
    return None


def _entry(key: str, entry: Any, where: str) -> Credential:
    if not isinstance(entry, dict):
        raise AuthFileError(f"{where}: auths[{key!r}]: expected an object")
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            text = base64.b64decode(auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise AuthFileError(f"{where}: auths[{key!r}].auth: not base64 of "
                                "user:password") from None
        username, colon, password = text.partition(":")
        if not colon:
            raise AuthFileError(f"{where}: auths[{key!r}].auth: not base64 of user:password "
                                "(no ':')")
    else:
        given_user, given_password = entry.get("username"), entry.get("password")
        if not isinstance(given_user, str) or not isinstance(given_password, str):
            raise AuthFileError(f"{where}: auths[{key!r}]: has neither `auth` nor "
                                "`username` and `password`")
        username, password = given_user, given_password
    registry = registry_key(key)
    problem = credential_problem(registry, username, password)
    if problem is not None:
        raise AuthFileError(f"{where}: auths[{key!r}]: {problem}")
    return Credential(registry, username, password)


def parse_auth_file(data: bytes, where: str) -> dict[str, Credential]:
    """The credentials of a docker config.json, by registry. `where` (the
    file's name) starts every error. Raises AuthFileError."""
    if len(data) > MAX_FILE_BYTES:
        raise AuthFileError(f"{where}: larger than {MAX_FILE_BYTES // 1024} KiB")
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AuthFileError(f"{where}: not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise AuthFileError(f"{where}: expected a JSON object with `auths`")
    auths = document.get("auths", {})
    if not isinstance(auths, dict):
        raise AuthFileError(f"{where}: `auths` must be an object")
    found: dict[str, Credential] = {}
    for key, entry in auths.items():
        if isinstance(entry, dict) and not entry:
            continue  # docker leaves `{}` for registries a credential helper serves
        credential = _entry(str(key), entry, where)
        found[credential.registry] = credential
    if not found and (document.get("credsStore") or document.get("credHelpers")):
        raise AuthFileError(f"{where}: its credentials are in a credential helper "
                            "(credsStore/credHelpers), which swarmctl does not run; give "
                            "--registry-auth-file with an `auths` entry instead")
    return found


def image_registry(image: str) -> str:
    """The registry an image is pulled from (docker.io for Docker Hub's);
    raises InvalidReference."""
    return parse_reference(image).registry


def credential_for(image: str, credentials: Mapping[str, Credential]) -> Credential | None:
    """The credentials for the registry of `image`, if any (none for an
    invalid reference: the controller names that problem)."""
    try:
        return credentials.get(image_registry(image))
    except InvalidReference:
        return None
