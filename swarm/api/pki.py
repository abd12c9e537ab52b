"""The cluster PKI: root CA, join tokens, node keys and certificates, renewal
timing, revocation, and reading a gRPC peer's identity.

Everything here is built on `cryptography` (pyca/cryptography), the
maintained, audited standard for X.509 and primitives in Python; nothing is
hand-rolled except the token format, which follows Docker Swarm's.

The model, as in SwarmKit:

- One self-signed root CA per cluster (ECDSA P-256). Its private key is kept
  in etcd encrypted with a key-encryption key (KEK) that only the controllers'
  configuration holds (`encrypt_ca_key` / `decrypt_ca_key`). Secrets and
  other payloads are sealed with a cluster data key (`DataKey`), itself kept
  in etcd sealed under the KEK (`seal_data_key`).
- A node makes its own key (`generate_key`) and sends only a CSR
  (`make_csr`). The CA ignores the CSR's subject and writes the identity
  itself (`sign_node_certificate`): node ID in CN, role in OU, cluster ID in
  O. So a node can never choose who it is.
- Join tokens `SWMTKN-1-<CA digest>-<secret>` carry a digest of the root CA
  certificate, which lets a joining node check the CA it was sent
  (`verify_ca_for_token`) before it sends its secret anywhere, and a secret
  that says which role the node gets (`role_for_token`).
- Certificates are renewed at a random 50-80 % of their life
  (`renewal_time`) so a fleet that joined together does not renew together.
- Removed nodes are refused by serial and by node ID (`check_not_revoked`):
  gRPC's Python TLS has no CRL hook, so revocation is an application check
  made on every call.

All functions take `now` where time matters (tests and renewal planning do
not sleep) and never touch the network; this module does not import grpc.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import hmac
import ipaddress
import os
import random
import re
import secrets
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .certfiles import CONTROLLER_SERVER_NAME, RENEW_AT_FRACTION, Role, renewal_time

__all__ = ["CONTROLLER_SERVER_NAME", "RENEW_AT_FRACTION", "Role", "renewal_time"]

# CONTROLLER_SERVER_NAME, Role, RENEW_AT_FRACTION and renewal_time live in
# certfiles (no cryptography there: a running agent imports only that).
DEFAULT_NODE_VALIDITY = dt.timedelta(days=90)
DEFAULT_CA_VALIDITY = dt.timedelta(days=20 * 365)
# Certificates start this long before they are issued, so a node whose clock
# is a little behind the CA's can use a fresh certificate at once.
CLOCK_SKEW_ALLOWANCE = dt.timedelta(minutes=5)

CA_COMMON_NAME = "swarm-ca"


class PKIError(Exception):
    """Base of every error this module raises on bad input."""


class InvalidJoinToken(PKIError):
    """A join token is malformed, is for another CA, or has the wrong secret."""


class CAMismatch(InvalidJoinToken):
    """The CA certificate a node was given is not the one its token names."""


class CAKeyDecryptionError(PKIError):
    """The CA key could not be decrypted: wrong KEK, or the blob was altered."""


class InvalidCSR(PKIError):
    """A certificate signing request is malformed, unsigned or uses a weak key."""


class RevokedCertificate(PKIError):
    """The peer's certificate or node has been revoked."""


class InvalidPeer(PKIError):
    """A peer's certificate lacks the fields a cluster certificate has."""


# ----------------------------------------------------------------- keys


PrivateKey = ec.EllipticCurvePrivateKey


def generate_key() -> PrivateKey:
    """A fresh ECDSA P-256 key: small, fast to make and to sign with (RSA
    keygen takes ~100 ms per key and would dominate the test suite)."""
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def key_from_pem(data: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"expected an ECDSA private key, got {type(key).__name__}")
    return key


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_from_pem(data: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as error:
        raise PKIError(f"not a PEM certificate: {error}") from None


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate as colon-separated hex, as `openssl x509
    -fingerprint -sha256` prints it (for `swarmctl cluster inspect`)."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


# ----------------------------------------------------------------- the CA


@dataclass(frozen=True)
class CertificateAuthority:
    """The cluster's root: its certificate and (on controllers only) its key."""

    cert: x509.Certificate
    key: PrivateKey

    @property
    def cert_pem(self) -> bytes:
        return cert_to_pem(self.cert)

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes) -> CertificateAuthority:
        """An existing (external) CA: checks the key belongs to the certificate
        and that the certificate may sign certificates."""
        cert = cert_from_pem(cert_pem)
        key = key_from_pem(key_pem)
        if cert.public_key() != key.public_key():
            raise PKIError("the CA key does not match the CA certificate")
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            raise PKIError("the CA certificate has no basicConstraints extension") from None
        if not constraints.ca:
            raise PKIError("the CA certificate is not a CA (basicConstraints CA:FALSE)")
        return cls(cert=cert, key=key)


def create_root_ca(cluster_id: str, *, validity: dt.timedelta = DEFAULT_CA_VALIDITY,
                   now: dt.datetime | None = None) -> CertificateAuthority:
    """A new self-signed root CA for the cluster (what `--init` creates)."""
    now = now or _utcnow()
    key = generate_key()
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
    ])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW_ALLOWANCE)
        .not_valid_after(now + validity)
        # path_length=0: the root signs leaf certificates only; a leaked node
        # key can never be used to mint further certificates.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert=cert, key=key)


# ------------------------------------------------- CA key at rest (in etcd)

# Format: "swarm-ca-key.v1$<scrypt log2 N>$<salt>$<nonce>$<ciphertext>", fields
# base64. Printable so `etcdctl get` shows something recognisable; the cost
# parameter is stored so it can be raised later without breaking old blobs.
_BLOB_PREFIX = "swarm-ca-key.v1"
_SCRYPT_LOG2_N = 15  # 32 MiB, ~0.1 s: fine once per controller start
_KEK_MIN_BYTES = 16


def generate_kek() -> bytes:
    """A random KEK for a controllers' configuration file (43 printable chars)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=")


def load_kek(path: Path) -> bytes:
    """Read a KEK file; refuse one others can read, as ssh does with keys."""
    mode = path.stat().st_mode
    if mode & 0o077:
        raise PKIError(f"{path}: the CA key-encryption key must not be readable by group or others "
                       f"(mode {mode & 0o777:o}; chmod 600 it)")
    kek = path.read_bytes().strip()
    if len(kek) < _KEK_MIN_BYTES:
        raise PKIError(f"{path}: the CA key-encryption key is too short "
                       f"({len(kek)} bytes, need at least {_KEK_MIN_BYTES})")
    return kek


def _derive(kek: bytes, salt: bytes, log2_n: int) -> bytes:
    # scrypt rather than using the KEK directly: the KEK may be a passphrase an
    # operator typed, and a memory-hard KDF makes guessing it from a stolen
    # etcd backup expensive.
    return Scrypt(salt=salt, length=32, n=2**log2_n, r=8, p=1).derive(kek)


def seal_with_kek(plaintext: bytes, kek: bytes, *, aad: bytes) -> bytes:
    """`plaintext` sealed with AES-256-GCM under a key derived from the KEK.

    `aad` is authenticated, not stored: it binds the blob to what it is for
    (the cluster, the purpose), so a blob copied from another cluster or
    another field does not open."""
    if len(kek) < _KEK_MIN_BYTES:
        raise PKIError(f"the key-encryption key is too short ({len(kek)} bytes, "
                       f"need at least {_KEK_MIN_BYTES})")
    salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
    sealed = AESGCM(_derive(kek, salt, _SCRYPT_LOG2_N)).encrypt(nonce, plaintext, aad)
    fields = [_BLOB_PREFIX, str(_SCRYPT_LOG2_N), *(_b64(part) for part in (salt, nonce, sealed))]
    return "$".join(fields).encode()


def open_with_kek(blob: bytes, kek: bytes, *, aad: bytes, what: str) -> bytes:
    """The plaintext of a `seal_with_kek` blob; `what` names it in errors."""
    try:
        prefix, log2_n_text, *parts = blob.decode("ascii").split("$")
        if prefix != _BLOB_PREFIX or len(parts) != 3:
            raise ValueError
        log2_n = int(log2_n_text)
        if not 10 <= log2_n <= 22:
            raise ValueError
        salt, nonce, sealed = (_unb64(part) for part in parts)
    except ValueError:
        raise CAKeyDecryptionError(f"not an encrypted {what} (expected a {_BLOB_PREFIX} blob)") from None
    try:
        return AESGCM(_derive(kek, salt, log2_n)).decrypt(nonce, sealed, aad)
    except InvalidTag:
        raise CAKeyDecryptionError(
            f"cannot decrypt the {what}: wrong key-encryption key (check the controllers' KEK "
            f"file), a different cluster, or the stored {what} was altered") from None


def encrypt_ca_key(key: PrivateKey, kek: bytes, *, cluster_id: str) -> bytes:
    """The CA key sealed under the KEK, bound to the cluster ID (a blob copied
    from another cluster that happens to share a KEK does not decrypt here)."""
    return seal_with_kek(key_to_pem(key), kek, aad=cluster_id.encode())


def decrypt_ca_key(blob: bytes, kek: bytes, *, cluster_id: str) -> PrivateKey:
    return key_from_pem(open_with_kek(blob, kek, aad=cluster_id.encode(), what="CA key"))


# ------------------------------------- payloads at rest (secrets, credentials)

# Envelope encryption, as SwarmKit and Kubernetes' KMS provider do it: one
# random data key per cluster encrypts payloads (fast: no KDF per payload);
# the data key itself is kept in etcd sealed under the KEK, so rotating the
# KEK re-seals 32 bytes, not every secret.
_DATA_BLOB_PREFIX = b"swarm-data.v1$"
DATA_KEY_BYTES = 32


class SealedDataError(PKIError):
    """A sealed payload does not open: altered, or sealed for something else."""


@dataclass(frozen=True)
class DataKey:
    key: bytes = field(repr=False)

    @classmethod
    def generate(cls) -> DataKey:
        return cls(secrets.token_bytes(DATA_KEY_BYTES))

    def seal(self, plaintext: bytes, *, context: str) -> bytes:
        """AES-256-GCM; `context` (e.g. "secret/<id>") is authenticated, so a
        blob moved to another object's record does not open there."""
        nonce = secrets.token_bytes(12)
        return _DATA_BLOB_PREFIX + nonce + AESGCM(self.key).encrypt(nonce, plaintext, context.encode())

    def open(self, blob: bytes, *, context: str) -> bytes:
        if not blob.startswith(_DATA_BLOB_PREFIX) or len(blob) < len(_DATA_BLOB_PREFIX) + 12 + 16:
            raise SealedDataError(f"{context}: not a sealed payload")
        body = blob[len(_DATA_BLOB_PREFIX):]
        try:
            return AESGCM(self.key).decrypt(body[:12], body[12:], context.encode())
        except InvalidTag:
            raise SealedDataError(f"{context}: the sealed payload does not open "
                                  "(altered, or sealed by another cluster)") from None


def _data_key_aad(cluster_id: str) -> bytes:
    return f"{cluster_id}/data-key".encode()


def seal_data_key(data_key: DataKey, kek: bytes, *, cluster_id: str) -> bytes:
    return seal_with_kek(data_key.key, kek, aad=_data_key_aad(cluster_id))


def open_data_key(blob: bytes, kek: bytes, *, cluster_id: str) -> DataKey:
    key = open_with_kek(blob, kek, aad=_data_key_aad(cluster_id), what="cluster data key")
    if len(key) != DATA_KEY_BYTES:
        raise CAKeyDecryptionError("the cluster data key has the wrong length")
    return DataKey(key)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# ----------------------------------------------------------- join tokens

TOKEN_PREFIX = "SWMTKN"
TOKEN_VERSION = "1"
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"
# Lengths as Docker Swarm's: a SHA-256 digest needs 50 base-36 digits, a
# 128-bit secret 25.
_DIGEST_CHARS = 50
_SECRET_CHARS = 25
_TOKEN_RE = re.compile(r"^SWMTKN-(?P<version>[^-]+)-(?P<digest>[^-]*)-(?P<secret>[^-]*)$")


def _base36(number: int, width: int) -> str:
    digits = []
    while number:
        number, digit = divmod(number, 36)
        digits.append(_BASE36[digit])
    return "".join(reversed(digits)).rjust(width, "0")


def ca_digest(ca_cert: x509.Certificate) -> str:
    """The token's CA digest: SHA-256 of the DER certificate in base 36."""
    digest = hashlib.sha256(ca_cert.public_bytes(serialization.Encoding.DER)).digest()
    return _base36(int.from_bytes(digest, "big"), _DIGEST_CHARS)


def new_token_secret() -> str:
    return _base36(secrets.randbits(128), _SECRET_CHARS)


@dataclass(frozen=True)
class JoinToken:
    ca_digest: str
    secret: str = field(repr=False)  # keep secrets out of logs and tracebacks

    def __str__(self) -> str:
        return f"{TOKEN_PREFIX}-{TOKEN_VERSION}-{self.ca_digest}-{self.secret}"


def new_join_token(ca_cert: x509.Certificate) -> JoinToken:
    """A fresh token for the CA; a cluster keeps one per role (worker,
    controller) and rotating one replaces its secret."""
    return JoinToken(ca_digest=ca_digest(ca_cert), secret=new_token_secret())


def parse_join_token(text: str) -> JoinToken:
    """Parse 'SWMTKN-1-<digest>-<secret>'; the error says what is wrong, never
    echoing the secret."""
    match = _TOKEN_RE.match(text.strip())
    if not match:
        raise InvalidJoinToken("invalid join token: expected SWMTKN-1-<CA digest>-<secret> "
                               "(as printed by `swarmctl cluster join-token worker|controller`)")
    if match["version"] != TOKEN_VERSION:
        raise InvalidJoinToken(f"invalid join token: unsupported version {match['version']!r} "
                               f"(this node understands version {TOKEN_VERSION})")
    for part, value, width in (("CA digest", match["digest"], _DIGEST_CHARS),
                               ("secret", match["secret"], _SECRET_CHARS)):
        if len(value) != width or value.strip(_BASE36):
            raise InvalidJoinToken(f"invalid join token: the {part} must be {width} characters "
                                   f"of 0-9a-z, got {len(value)}")
    return JoinToken(ca_digest=match["digest"], secret=match["secret"])


def verify_ca_for_token(ca_pem: bytes, token: JoinToken) -> x509.Certificate:
    """On the joining node, before anything is sent: the CA certificate the
    controller offered must be the one the token names. Raises CAMismatch."""
    cert = cert_from_pem(ca_pem)
    if not hmac.compare_digest(ca_digest(cert), token.ca_digest):
        raise CAMismatch("the controller's CA certificate does not match the join token's CA "
                         "digest: wrong cluster, a rotated CA, or someone in the middle")
    return cert


def find_ca_for_token(offered_pems: Iterable[bytes], token: JoinToken) -> x509.Certificate:
    """The certificate among those a controller offered in its TLS handshake
    (see swarm.api.channels.fetch_offered_chain) that the token pins. Raises
    CAMismatch if none does; unparsable entries are skipped."""
    for pem in offered_pems:
        try:
            return verify_ca_for_token(pem, token)
        except PKIError:
            continue
    raise CAMismatch("none of the certificates the controller offered matches the join token's CA "
                     "digest: wrong cluster, a rotated CA, or someone in the middle")


def role_for_token(token: JoinToken, ca_cert: x509.Certificate, *,
                   worker: JoinToken, controller: JoinToken) -> Role:
    """On the CA: which role a presented token grants, given the cluster's
    current worker and controller tokens. Raises InvalidJoinToken.

    Both secrets are always compared in constant time, so timing reveals
    neither a secret nor which role matched."""
    if not hmac.compare_digest(token.ca_digest, ca_digest(ca_cert)):
        raise CAMismatch("join token refused: its CA digest is not this cluster's root CA "
                         "(a token from another cluster, or from before a CA rotation)")
    is_worker = hmac.compare_digest(token.secret, worker.secret)
    is_controller = hmac.compare_digest(token.secret, controller.secret)
    if is_controller:
        return Role.MANAGER
    if is_worker:
        return Role.WORKER
    raise InvalidJoinToken("join token refused: the secret matches neither the worker nor the "
                           "controller token (it may have been rotated)")


# --------------------------------------------------- node certificates


def make_csr(key: PrivateKey) -> bytes:
    """A PEM CSR for the node's key. The subject is left empty on purpose: the
    CA decides the identity, the node only proves it holds the key."""
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def _public_key_of_csr(csr_pem: bytes) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as error:
        raise InvalidCSR(f"not a PEM certificate signing request: {error}") from None
    if not csr.is_signature_valid:
        raise InvalidCSR("the CSR's signature does not verify (not made with the key it carries)")
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise InvalidCSR(f"unsupported curve {key.curve.name}: use P-256 or P-384")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise InvalidCSR(f"RSA key of {key.key_size} bits is too weak: use at least 2048")
        return key
    raise InvalidCSR(f"unsupported key type {type(key).__name__}: use ECDSA P-256")


def _san_entries(names: Iterable[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):  # keep order, drop duplicates
        host = name.strip("[]")
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return entries


def sign_node_certificate(ca: CertificateAuthority, csr_pem: bytes, *, node_id: str, role: Role,
                          cluster_id: str, validity: dt.timedelta = DEFAULT_NODE_VALIDITY,
                          addresses: Sequence[str] = (), now: dt.datetime | None = None
                          ) -> x509.Certificate:
    """Issue a certificate for a CSR: CN=node ID, OU=role, O=cluster ID.

    Controllers (Role.MANAGER) get the fixed SAN CONTROLLER_SERVER_NAME plus
    `addresses` (hosts or IPs, for clients that verify by address) and may act
    as TLS servers; workers and admins get client-only certificates. The CA's
    own validity caps the certificate's."""
    if not node_id or not cluster_id:
        raise PKIError("node_id and cluster_id must be non-empty")
    public_key = _public_key_of_csr(csr_pem)
    now = now or _utcnow()
    not_after = min(now + validity, ca.cert.not_valid_after_utc)
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, node_id),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
    ])
    names = [node_id]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if role.is_server():
        names = [CONTROLLER_SERVER_NAME, node_id, *addresses]
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW_ALLOWANCE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
            content_commitment=False, data_encipherment=False, key_agreement=False,
            key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False),
            critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(_san_entries(names)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                       critical=False)
    )
    return builder.sign(ca.key, hashes.SHA256())


@dataclass(frozen=True)
class NodeIdentity:
    """What a node holds: its key, its certificate and the cluster's root CA.
    `channels` builds TLS credentials from it."""

    key_pem: bytes = field(repr=False)
    cert_pem: bytes
    ca_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        return cert_from_pem(self.cert_pem)

    @property
    def node_id(self) -> str:
        return _single(self.cert.subject, NameOID.COMMON_NAME)

    @property
    def role(self) -> Role:
        return Role(_single(self.cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME))

    def save(self, directory: Path) -> None:
        """Write node.key (0600), node.crt and ca.crt, each atomically, so a
        renewal racing with a restart never leaves a half-written file."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_atomic(directory / "ca.crt", self.ca_pem, 0o644)
        # Key before certificate: a crash in between leaves a new key with the
        # old certificate, which load() rejects loudly, never the reverse.
        _write_atomic(directory / "node.key", self.key_pem, 0o600)
        _write_atomic(directory / "node.crt", self.cert_pem, 0o644)

    @classmethod
    def load(cls, directory: Path) -> NodeIdentity:
        identity = cls(key_pem=(directory / "node.key").read_bytes(),
                       cert_pem=(directory / "node.crt").read_bytes(),
                       ca_pem=(directory / "ca.crt").read_bytes())
        if key_from_pem(identity.key_pem).public_key() != identity.cert.public_key():
            raise PKIError(f"{directory}: node.key does not match node.crt")
        return identity


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def issue_identity(ca: CertificateAuthority, *, node_id: str, role: Role, cluster_id: str,
                   validity: dt.timedelta = DEFAULT_NODE_VALIDITY, addresses: Sequence[str] = (),
                   now: dt.datetime | None = None) -> NodeIdentity:
    """Key, CSR and certificate in one step, for identities made where the CA
    is: the first controller's own, and admin client certificates written by
    `cluster init` / `dev up`. Joining nodes use make_csr instead, so their
    key never leaves them."""
    key = generate_key()
    cert = sign_node_certificate(ca, make_csr(key), node_id=node_id, role=role,
                                 cluster_id=cluster_id, validity=validity, addresses=addresses,
                                 now=now)
    return NodeIdentity(key_pem=key_to_pem(key), cert_pem=cert_to_pem(cert), ca_pem=ca.cert_pem)


def issue_admin_identity(ca: CertificateAuthority, *, cluster_id: str, name: str = "admin",
                         validity: dt.timedelta = DEFAULT_NODE_VALIDITY,
                         now: dt.datetime | None = None) -> NodeIdentity:
    """An operator's client certificate for swarmctl (OU swarm-admin)."""
    return issue_identity(ca, node_id=name, role=Role.ADMIN, cluster_id=cluster_id,
                          validity=validity, now=now)


def verify_issued_by(cert: x509.Certificate, ca_cert: x509.Certificate, *,
                     now: dt.datetime | None = None) -> None:
    """Check a certificate was signed by the CA and is within its validity
    window (what a node does with a certificate it was just issued)."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as error:
        raise PKIError(f"certificate not issued by the cluster CA: {str(error) or 'bad signature'}") from None
    now = now or _utcnow()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise PKIError(f"certificate valid only from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} "
                       f"to {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")


# ------------------------------------------------------------- renewal


def renewal_delay(cert: x509.Certificate, now: dt.datetime, rng: random.Random) -> float:
    """Seconds from now until renewal; 0 if already due (or expired)."""
    when = renewal_time(cert.not_valid_before_utc, cert.not_valid_after_utc, rng)
    return max(0.0, (when - now).total_seconds())


# ------------------------------------------------------- peer identity


@dataclass(frozen=True)
class PeerIdentity:
    node_id: str
    role: Role
    cluster_id: str
    serial: int
    not_after: dt.datetime


class HasAuthContext(Protocol):
    """The part of a grpc (or grpc.aio) ServicerContext this module reads."""

    def auth_context(self) -> Mapping[str, Iterable[bytes]]: ...


_FIELD_NAMES = {NameOID.COMMON_NAME: "CN", NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
                NameOID.ORGANIZATION_NAME: "O"}


def _single(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    values = name.get_attributes_for_oid(oid)
    if len(values) != 1:
        label = _FIELD_NAMES.get(oid, oid.dotted_string)
        raise InvalidPeer(f"certificate subject has {len(values)} {label} fields, expected 1")
    value = values[0].value
    return value if isinstance(value, str) else value.decode()


def identity_of_cert(cert: x509.Certificate) -> PeerIdentity:
    """Read node ID, role and cluster from a cluster-issued certificate."""
    role_text = _single(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
    try:
        role = Role(role_text)
    except ValueError:
        raise InvalidPeer(f"certificate OU {role_text!r} is not a cluster role") from None
    return PeerIdentity(node_id=_single(cert.subject, NameOID.COMMON_NAME), role=role,
                        cluster_id=_single(cert.subject, NameOID.ORGANIZATION_NAME),
                        serial=cert.serial_number, not_after=cert.not_valid_after_utc)


@functools.lru_cache(maxsize=16384)
def _identity_of_pem(pem: bytes) -> PeerIdentity:
    """identity_of_cert of a PEM, remembered: every agent RPC (a heartbeat
    every few seconds from each of thousands of nodes) names the same
    certificate, and parsing it was a good part of a heartbeat's cost. An
    invalid certificate raises and is not remembered; revocation is checked
    per call (check_not_revoked), not here."""
    return identity_of_cert(cert_from_pem(pem))


def peer_identity(context: HasAuthContext) -> PeerIdentity | None:
    """The verified peer of a gRPC call, or None on a plaintext (--insecure)
    connection.

    grpc's auth_context() maps property names to lists of bytes. With TLS it
    holds 'x509_common_name' and 'x509_pem_cert' (the client certificate,
    already verified against the server's root by the TLS handshake, since
    the server requires and verifies client certificates). The CN comes as a
    property of its own, but the OU does not, so the PEM is parsed; the two
    CNs are compared as a guard against reading the wrong certificate."""
    auth = context.auth_context()
    pems = list(auth.get("x509_pem_cert", ()))
    if not pems:
        return None
    identity = _identity_of_pem(pems[0])
    common_names = [value.decode() for value in auth.get("x509_common_name", ())]
    if common_names != [identity.node_id]:
        raise InvalidPeer(f"TLS peer common name {common_names} does not match the certificate's "
                          f"{identity.node_id!r}")
    return identity


# ---------------------------------------------------------- revocation


@dataclass(frozen=True)
class Revocations:
    """What the cluster refuses: serials of revoked certificates and IDs of
    removed nodes (a removed node's every certificate, including one issued
    while the removal was in flight). Rebuilt from etcd by the controller."""

    serials: frozenset[int] = frozenset()
    node_ids: frozenset[str] = frozenset()


def check_not_revoked(peer: PeerIdentity, revocations: Revocations) -> None:
    """Raise RevokedCertificate if the peer's certificate or node is revoked."""
    if peer.node_id in revocations.node_ids:
        raise RevokedCertificate(f"node {peer.node_id} has been removed from the cluster")
    if peer.serial in revocations.serials:
        raise RevokedCertificate(f"certificate {peer.serial:x} of node {peer.node_id} has been revoked")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
