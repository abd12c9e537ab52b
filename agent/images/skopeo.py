"""skopeo (the pulling tool) as the store runs it: its stderr turned into one
clear line per failure."""

from __future__ import annotations

import re

from .errors import ImageError
from .reference import Reference

MAX_STDERR = 64 * 1024


_FATAL_RE = re.compile(r'level=fatal msg="((?:[^"\\]|\\.)*)"')


def _skopeo_message(stderr: str) -> str:
    matches = _FATAL_RE.findall(stderr)
    if matches:
        message: str = matches[-1]
        return re.sub(r"\\(.)", r"\1", message)
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else "skopeo failed without a message"


def classify_error(ref: Reference, stderr: str) -> ImageError:
    """One clear line out of what skopeo 1.9 prints on stderr, e.g.
    level=fatal msg="initializing source docker://H/N:T: reading manifest T in
    H/N: manifest unknown: manifest unknown" (missing tag or repository),
    "... pinging container registry H: Get \\"http://H/v2/\\": dial tcp H:
    connect: connection refused" (registry down), "... unauthorized:
    authentication required" (no or wrong credentials), "writing blob:
    happened during read: Digest did not match, expected …, got …" (a
    corrupt layer), "reading config blob …: Download config.json digest …
    does not match expected …" (a corrupt config)."""
    message = _skopeo_message(stderr)
    detail = message
    prefix = f"initializing source docker://{ref}: "
    if detail.startswith(prefix):
        detail = detail[len(prefix):]
    low = message.lower()
    if ("did not match" in low or "does not match" in low or "invalid checksum" in low
            or "size mismatch" in low or "digest mismatch" in low):
        return ImageError(f"image {ref} failed verification: {detail}")
    ping = re.search(r"pinging container registry [^:]+(?::\d+)?: (.*)", message)
    if ping is not None:
        reason = re.sub(r'^Get "[^"]*": ', "", ping.group(1))
        if "http response to https client" in reason.lower():
            reason += " (not an insecure registry for this node)"
        return ImageError(f"registry {ref.registry} unreachable: {reason}")
    if any(word in low for word in ("unauthorized", "authentication required", "denied:",
                                    "access to the resource is denied", "forbidden",
                                    "invalid username/password")):
        return ImageError(f"access to {ref} denied: {detail}")
    if "no image found in manifest list" in low or "choosing image instance" in low:
        return ImageError(f"image {ref} has no variant for this node's platform: {detail}")
    if "manifest unknown" in low or "name unknown" in low or "not found" in low:
        return ImageError(f"image not found: {ref}")
    if any(word in low for word in ("dial tcp", "connection refused", "no such host",
                                    "i/o timeout", "connection reset", "network is unreachable",
                                    "x509:", "tls:", "context deadline exceeded")):
        return ImageError(f"registry {ref.registry} unreachable: {detail}")
    return ImageError(f"pulling {ref} failed: {detail}")
