"""Image references as docker parses them (`busybox`, `host:5000/team/app:1.2`,
`name@sha256:…`, `name:tag@sha256:…`), normalised to registry/path:tag, and
registry names (Docker Hub's aliases, loopback registries).

Pure, and shared: the agent pulls by them (agent/images), swarmctl finds the
registry of an image to send its credentials and resolve its tag to a digest
(cli/pull.py)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

DEFAULT_REGISTRY = "docker.io"
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io",
                                 "registry.hub.docker.com"})


_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")


class InvalidReference(ValueError):
    """The text is not a docker image reference; the message says which."""


@dataclass(frozen=True)
class Reference:
    """A normalised image reference: registry host[:port], repository path,
    and a tag or a digest (a digest wins: name:tag@digest pulls by digest)."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        if self.digest is not None:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag or 'latest'}"


def parse_reference(text: str) -> Reference:
    """Parse and normalise like docker: `busybox` is
    docker.io/library/busybox:latest, `user/app` docker.io/user/app:latest,
    `host:port/name:tag` stays as it is. A digest wins over a tag (docker's
`name:tag@digest` pulls by digest). Raises InvalidReference."""
    invalid = InvalidReference(f"invalid image reference: {text!r}")
    if not text or len(text) > 512 or text != text.strip():
        raise invalid
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.rsplit("@", 1)
        if not _DIGEST_RE.fullmatch(digest):
            raise invalid
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG_RE.fullmatch(tag):
            raise invalid
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        registry, path = first, remainder
        if not _DOMAIN_RE.fullmatch(registry):
            raise invalid
    else:
        registry, path = DEFAULT_REGISTRY, rest
    if registry in _DOCKER_HUB_ALIASES:
        registry = DEFAULT_REGISTRY
        if "/" not in path:
            path = f"library/{path}"
    if not _PATH_RE.fullmatch(path) or len(registry) + 1 + len(path) > 255:
        raise invalid
    if digest is not None:
        tag = None
    elif tag is None:
        tag = "latest"
    return Reference(registry, path, tag, digest)


def normalize_reference(text: str) -> str:
    """The canonical string of a reference (see parse_reference)."""
    return str(parse_reference(text))


def registry_address(registry: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address of a registry given as IP[:port] or [IPv6][:port]."""
    host = registry if registry.endswith("]") else registry.rsplit(":", 1)[0]
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_loopback_registry(registry: str) -> bool:
    if registry.rsplit(":", 1)[0] == "localhost":
        return True
    address = registry_address(registry)
    return address is not None and address.is_loopback


def registry_key(name: str) -> str:
    name = name.removeprefix("https://").removeprefix("http://").split("/", 1)[0]
    return DEFAULT_REGISTRY if name in _DOCKER_HUB_ALIASES else name


def tagged_form(text: str) -> str:
    """The reference without its digest, as the operator wrote it
    (`app:1@sha256:…` -> `app:1`): what a tag is resolved from again."""
    name, _, _ = text.partition("@")
    return name


def pinned(text: str, digest: str) -> str:
    """`text` pinned to `digest`, as docker writes it: `app:1@sha256:…` (the
    tag stays for people to read; nodes pull by the digest)."""
    return f"{tagged_form(text)}@{digest}"


def digest_of(text: str) -> str | None:
    """The digest a reference pins, if any."""
    _, at, digest = text.partition("@")
    return digest if at else None
