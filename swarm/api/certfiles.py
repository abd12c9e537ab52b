"""A node's TLS identity as the agent holds it between renewals, without the
`cryptography` package (about 14 MiB of a process's memory, needed only to
make keys and CSRs and to check a CA: joining and renewing, see pki).

What a running agent needs of its certificate is its PEM files (for gRPC's
TLS), its node ID and role (the subject's CN and OU) and its validity (when
to renew): read here from the certificate's DER with a small reader of the
few fields concerned, and the key checked against the certificate through
the ssl module (OpenSSL), which every asyncio process loads anyway. pki
re-exports Role, CONTROLLER_SERVER_NAME and renewal_time from here.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import random
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from cryptography import x509

# The DNS name every controller certificate carries, whatever addresses the
# controller is reached by. Clients verify the server against this name (see
# swarm.api.channels), so a controller can be dialled by any IP or DNS name
# without reissuing its certificate, while a worker certificate, which never
# carries it, cannot pose as a controller.
CONTROLLER_SERVER_NAME = "swarm-controller"
RENEW_AT_FRACTION = (0.5, 0.8)

_COMMON_NAME = bytes([0x55, 0x04, 0x03])  # 2.5.4.3
_ORGANIZATIONAL_UNIT = bytes([0x55, 0x04, 0x0B])  # 2.5.4.11


class Role(enum.StrEnum):
    """What a certificate's holder may do; written in the certificate's OU."""

    WORKER = "swarm-worker"
    MANAGER = "swarm-manager"  # a controller
    ADMIN = "swarm-admin"  # an operator's swarmctl

    def is_server(self) -> bool:
        return self is Role.MANAGER


class PemFiles(Protocol):
    """What a TLS channel needs of an identity (pki.NodeIdentity, NodeCertificate)."""

    @property
    def key_pem(self) -> bytes: ...

    @property
    def cert_pem(self) -> bytes: ...

    @property
    def ca_pem(self) -> bytes: ...


def renewal_time(not_before: dt.datetime, not_after: dt.datetime, rng: random.Random) -> dt.datetime:
    """When to renew: a uniformly random point at 50-80 % of the certificate's
    life, so nodes that joined together spread their renewals out (and a CA
    outage shorter than 20 % of the life goes unnoticed)."""
    low, high = RENEW_AT_FRACTION
    return not_before + (not_after - not_before) * rng.uniform(low, high)


class CertificateFormatError(ValueError):
    pass


def _tlv(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the DER element at `at`."""
    if at + 2 > len(data):
        raise CertificateFormatError("truncated DER")
    tag, length = data[at], data[at + 1]
    at += 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or at + count > len(data):
            raise CertificateFormatError("bad DER length")
        length = int.from_bytes(data[at:at + count], "big")
        at += count
    if at + length > len(data):
        raise CertificateFormatError("truncated DER")
    return tag, at, at + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    found = []
    while start < end:
        tag, value, after = _tlv(data, start)
        found.append((tag, value, after))
        start = after
    return found


def _time(tag: int, text: bytes) -> dt.datetime:
    value = text.decode("ascii")
    if tag == 0x17:  # UTCTime: YYMMDDHHMMSSZ, years 1950-2049 (RFC 5280)
        parsed = dt.datetime.strptime(value, "%y%m%d%H%M%SZ")
        if parsed.year >= 2050:
            parsed = parsed.replace(year=parsed.year - 100)
    elif tag == 0x18:  # GeneralizedTime: YYYYMMDDHHMMSSZ
        parsed = dt.datetime.strptime(value, "%Y%m%d%H%M%SZ")
    else:
        raise CertificateFormatError(f"unexpected time tag {tag:#x}")
    return parsed.replace(tzinfo=dt.UTC)


def certificate_fields(der: bytes) -> tuple[dict[bytes, str], dt.datetime, dt.datetime]:
    """(subject attributes by OID bytes, not before, not after) of an X.509
    certificate in DER. Reads only those fields; the signature is not
    checked here (TLS does that against the CA)."""
    _, cert_start, _ = _tlv(der, 0)
    tag, tbs_start, tbs_end = _tlv(der, cert_start)
    if tag != 0x30:
        raise CertificateFormatError("not a certificate")
    fields = _children(der, tbs_start, tbs_end)
    if fields and fields[0][0] == 0xA0:  # [0] version
        fields = fields[1:]
    if len(fields) < 5:
        raise CertificateFormatError("too few fields in tbsCertificate")
    # serial, signature algorithm, issuer, validity, subject
    _, validity_start, validity_end = fields[3]
    times = _children(der, validity_start, validity_end)
    if len(times) != 2:
        raise CertificateFormatError("bad validity")
    not_before, not_after = (_time(t, der[s:e]) for t, s, e in times)
    subject: dict[bytes, str] = {}
    _, subject_start, subject_end = fields[4]
    for _, set_start, set_end in _children(der, subject_start, subject_end):
        for _, pair_start, pair_end in _children(der, set_start, set_end):
            parts = _children(der, pair_start, pair_end)
            if len(parts) == 2 and parts[0][0] == 0x06:
                oid = der[parts[0][1]:parts[0][2]]
                subject.setdefault(oid, der[parts[1][1]:parts[1][2]].decode("utf-8", "replace"))
    return subject, not_before, not_after


def pem_to_der(pem: bytes) -> bytes:
    """The first PEM block's DER."""
    text = pem.decode("ascii", "replace")
    begin = text.find("-----BEGIN")
    start = text.find("\n", begin)
    end = text.find("-----END", start)
    if begin < 0 or start < 0 or end < 0:
        raise CertificateFormatError("not PEM")
    return base64.b64decode("".join(text[start:end].split()))


@dataclass(frozen=True)
class NodeCertificate:
    """A node's key, certificate and cluster CA (PEM), with what a running
    agent reads of the certificate. Quacks like pki.NodeIdentity for
    channels (key_pem, cert_pem, ca_pem), and `.cert` gives the parsed
    certificate (importing cryptography) for whoever needs more."""

    key_pem: bytes = field(repr=False)
    cert_pem: bytes
    ca_pem: bytes
    node_id: str = field(init=False)
    role: Role = field(init=False)
    not_before: dt.datetime = field(init=False)
    not_after: dt.datetime = field(init=False)

    def __post_init__(self) -> None:
        subject, not_before, not_after = certificate_fields(pem_to_der(self.cert_pem))
        try:
            role = Role(subject.get(_ORGANIZATIONAL_UNIT, ""))
        except ValueError:
            raise CertificateFormatError("the certificate names no role (OU)") from None
        object.__setattr__(self, "node_id", subject.get(_COMMON_NAME, ""))
        object.__setattr__(self, "role", role)
        object.__setattr__(self, "not_before", not_before)
        object.__setattr__(self, "not_after", not_after)

    @classmethod
    def of(cls, identity: Any) -> NodeCertificate:
        """From anything with key_pem, cert_pem and ca_pem (pki.NodeIdentity)."""
        return cls(identity.key_pem, identity.cert_pem, identity.ca_pem)

    @classmethod
    def load(cls, directory: Path) -> NodeCertificate:
        """node.key, node.crt and ca.crt of `directory`; ValueError when the
        key does not match the certificate (a crash between writing them)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            context.load_cert_chain(directory / "node.crt", directory / "node.key")
        except ssl.SSLError as error:
            raise CertificateFormatError(
                f"{directory}: node.key does not match node.crt ({error.reason})") from None
        return cls((directory / "node.key").read_bytes(), (directory / "node.crt").read_bytes(),
                   (directory / "ca.crt").read_bytes())

    @property
    def cert(self) -> x509.Certificate:
        from cryptography import x509  # only for those who need the whole certificate

        return x509.load_pem_x509_certificate(self.cert_pem)

    def renewal_delay(self, now: dt.datetime, rng: random.Random) -> float:
        """Seconds from now until renewal; 0 if already due (or expired)."""
        return max(0.0, (renewal_time(self.not_before, self.not_after, rng) - now)
                   .total_seconds())
