"""Object identifiers: 25 lowercase base-36 characters, like docker's."""

from __future__ import annotations

import hashlib
import secrets

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
ID_LENGTH = 25


def _encode(number: int) -> str:
    chars = []
    for _ in range(ID_LENGTH):
        number, digit = divmod(number, 36)
        chars.append(_ALPHABET[digit])
    return "".join(chars)


def new_id() -> str:
    """A random ID (services, nodes, networks)."""
    return _encode(secrets.randbits(130))


def derived_id(*parts: str) -> str:
    """A deterministic ID from its parts: the same parts always give the same ID,
    so two controllers that race to create the same object collide in etcd."""
    digest = hashlib.blake2b("/".join(parts).encode(), digest_size=17).digest()
    return _encode(int.from_bytes(digest, "big"))
