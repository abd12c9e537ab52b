"""The cluster PKI without the network: tokens, CA key sealing, issuing,
renewal timing, revocation and reading a peer's identity."""

from __future__ import annotations

import datetime as dt
import random
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.api import pki
from swarm.api.pki import Role

CLUSTER = "cluster-a"
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def ca() -> pki.CertificateAuthority:
    return pki.create_root_ca(CLUSTER, now=NOW)


@pytest.fixture(scope="module")
def other_ca() -> pki.CertificateAuthority:
    return pki.create_root_ca("cluster-b", now=NOW)


# ------------------------------------------------------------ join tokens


def test_token_round_trip_has_swarm_form(ca: pki.CertificateAuthority) -> None:
    token = pki.new_join_token(ca.cert)
    text = str(token)
    assert re.fullmatch(r"SWMTKN-1-[0-9a-z]{50}-[0-9a-z]{25}", text)
    assert pki.parse_join_token(f"  {text}\n") == token
    assert token.secret not in repr(token)  # secrets stay out of logs


@pytest.mark.parametrize(("text", "problem"), [
    ("", "expected SWMTKN-1-"),
    ("hello", "expected SWMTKN-1-"),
    ("SWMTKN-2-" + "0" * 50 + "-" + "0" * 25, "unsupported version '2'"),
    ("SWMTKN-1-" + "0" * 49 + "-" + "0" * 25, "CA digest must be 50 characters"),
    ("SWMTKN-1-" + "0" * 50 + "-" + "0" * 24, "secret must be 25 characters"),
    ("SWMTKN-1-" + "A" * 50 + "-" + "0" * 25, "of 0-9a-z"),
    ("SWMTKN-1-" + "0" * 50 + "-" + "0" * 25 + "-x", "expected SWMTKN-1-"),
])
def test_malformed_tokens_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(pki.InvalidJoinToken, match=re.escape(problem)):
        pki.parse_join_token(text)


def test_token_grants_its_role(ca: pki.CertificateAuthority) -> None:
    worker, controller = pki.new_join_token(ca.cert), pki.new_join_token(ca.cert)
    assert worker.secret != controller.secret
    for token, role in ((worker, Role.WORKER), (controller, Role.MANAGER)):
        presented = pki.parse_join_token(str(token))
        assert pki.role_for_token(presented, ca.cert, worker=worker, controller=controller) is role


def test_wrong_or_rotated_secret_is_refused(ca: pki.CertificateAuthority) -> None:
    worker, controller = pki.new_join_token(ca.cert), pki.new_join_token(ca.cert)
    rotated = pki.new_join_token(ca.cert)
    with pytest.raises(pki.InvalidJoinToken, match="matches neither") as caught:
        pki.role_for_token(worker, ca.cert, worker=rotated, controller=controller)
    assert worker.secret not in str(caught.value)


def test_right_secret_for_another_ca_is_refused(ca: pki.CertificateAuthority,
                                                other_ca: pki.CertificateAuthority) -> None:
    worker, controller = pki.new_join_token(ca.cert), pki.new_join_token(ca.cert)
    forged = pki.JoinToken(ca_digest=pki.ca_digest(other_ca.cert), secret=worker.secret)
    with pytest.raises(pki.CAMismatch, match="not this cluster's root CA"):
        pki.role_for_token(forged, ca.cert, worker=worker, controller=controller)


def test_joining_node_checks_the_offered_ca(ca: pki.CertificateAuthority,
                                            other_ca: pki.CertificateAuthority) -> None:
    token = pki.new_join_token(ca.cert)
    assert pki.verify_ca_for_token(ca.cert_pem, token) == ca.cert
    with pytest.raises(pki.CAMismatch):
        pki.verify_ca_for_token(other_ca.cert_pem, token)
    leaf = pki.issue_identity(ca, node_id="ctl", role=Role.MANAGER, cluster_id=CLUSTER, now=NOW)
    # What a controller presents in its handshake: its leaf, then the root.
    assert pki.find_ca_for_token([leaf.cert_pem, b"junk", ca.cert_pem], token) == ca.cert
    with pytest.raises(pki.CAMismatch, match="none of the certificates"):
        pki.find_ca_for_token([leaf.cert_pem, other_ca.cert_pem], token)


# ------------------------------------------------------- CA key at rest


def test_ca_key_sealing_round_trip(ca: pki.CertificateAuthority) -> None:
    kek = pki.generate_kek()
    blob = pki.encrypt_ca_key(ca.key, kek, cluster_id=CLUSTER)
    assert blob.startswith(b"swarm-ca-key.v1$")
    assert b"PRIVATE KEY" not in blob
    key = pki.decrypt_ca_key(blob, kek, cluster_id=CLUSTER)
    assert key.private_numbers() == ca.key.private_numbers()
    # Each sealing uses a fresh salt and nonce.
    assert pki.encrypt_ca_key(ca.key, kek, cluster_id=CLUSTER) != blob


def test_ca_key_refused_with_wrong_kek_cluster_or_tampering(ca: pki.CertificateAuthority) -> None:
    kek = pki.generate_kek()
    blob = pki.encrypt_ca_key(ca.key, kek, cluster_id=CLUSTER)
    with pytest.raises(pki.CAKeyDecryptionError, match="wrong key-encryption key"):
        pki.decrypt_ca_key(blob, pki.generate_kek(), cluster_id=CLUSTER)
    with pytest.raises(pki.CAKeyDecryptionError, match="wrong key-encryption key"):
        pki.decrypt_ca_key(blob, kek, cluster_id="cluster-b")
    tampered = blob[:-3] + (b"AAA" if blob[-3:] != b"AAA" else b"BBB")
    with pytest.raises(pki.CAKeyDecryptionError):
        pki.decrypt_ca_key(tampered, kek, cluster_id=CLUSTER)
    with pytest.raises(pki.CAKeyDecryptionError, match="not an encrypted CA key"):
        pki.decrypt_ca_key(b"-----BEGIN PRIVATE KEY-----", kek, cluster_id=CLUSTER)
    with pytest.raises(pki.PKIError, match="too short"):
        pki.encrypt_ca_key(ca.key, b"short", cluster_id=CLUSTER)


def test_data_key_seals_payloads_bound_to_their_context() -> None:
    key = pki.DataKey.generate()
    blob = key.seal(b"hunter2", context="secret/abc")
    assert b"hunter2" not in blob
    assert key.open(blob, context="secret/abc") == b"hunter2"
    assert key.seal(b"hunter2", context="secret/abc") != blob  # fresh nonce
    with pytest.raises(pki.SealedDataError, match="does not open"):
        key.open(blob, context="secret/other")
    with pytest.raises(pki.SealedDataError, match="does not open"):
        pki.DataKey.generate().open(blob, context="secret/abc")
    with pytest.raises(pki.SealedDataError, match="not a sealed payload"):
        key.open(b"hunter2", context="secret/abc")
    assert "key=" not in repr(key)


def test_data_key_is_kept_sealed_under_the_kek() -> None:
    kek, key = pki.generate_kek(), pki.DataKey.generate()
    blob = pki.seal_data_key(key, kek, cluster_id=CLUSTER)
    assert key.key not in blob
    assert pki.open_data_key(blob, kek, cluster_id=CLUSTER) == key
    with pytest.raises(pki.CAKeyDecryptionError, match="cluster data key"):
        pki.open_data_key(blob, pki.generate_kek(), cluster_id=CLUSTER)
    with pytest.raises(pki.CAKeyDecryptionError):
        pki.open_data_key(blob, kek, cluster_id="cluster-b")


def test_kek_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "ca.kek"
    path.write_bytes(pki.generate_kek() + b"\n")
    path.chmod(0o644)
    with pytest.raises(pki.PKIError, match="chmod 600"):
        pki.load_kek(path)
    path.chmod(0o600)
    assert len(pki.load_kek(path)) == 43


# ------------------------------------------------------------- the CA


def test_root_ca_is_a_long_lived_self_signed_p256_ca(ca: pki.CertificateAuthority) -> None:
    cert = ca.cert
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca
    assert constraints.path_length == 0
    assert cert.not_valid_after_utc - NOW >= dt.timedelta(days=19 * 365)
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == CLUSTER
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", pki.fingerprint(cert))


def test_external_ca_is_checked(ca: pki.CertificateAuthority, other_ca: pki.CertificateAuthority) -> None:
    key_pem = pki.key_to_pem(ca.key)
    assert pki.CertificateAuthority.from_pem(ca.cert_pem, key_pem).cert == ca.cert
    with pytest.raises(pki.PKIError, match="does not match"):
        pki.CertificateAuthority.from_pem(ca.cert_pem, pki.key_to_pem(other_ca.key))
    leaf = pki.issue_identity(ca, node_id="n1", role=Role.WORKER, cluster_id=CLUSTER, now=NOW)
    with pytest.raises(pki.PKIError, match="not a CA"):
        pki.CertificateAuthority.from_pem(leaf.cert_pem, leaf.key_pem)


# ---------------------------------------------------- node certificates


def _san(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (names.get_values_for_type(x509.DNSName),
            [str(ip) for ip in names.get_values_for_type(x509.IPAddress)])


def _usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_node_certificate_carries_identity_chosen_by_the_ca(ca: pki.CertificateAuthority) -> None:
    key = pki.generate_key()
    # The node asks to be "root" of another cluster; the CA ignores it.
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "root"),
                                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "swarm-manager")]))
           .sign(key, hashes.SHA256()))
    cert = pki.sign_node_certificate(ca, csr.public_bytes(Encoding.PEM), node_id="node1",
                                     role=Role.WORKER, cluster_id=CLUSTER, now=NOW)
    peer = pki.identity_of_cert(cert)
    assert (peer.node_id, peer.role, peer.cluster_id) == ("node1", Role.WORKER, CLUSTER)
    assert cert.public_key() == key.public_key()
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=90)
    pki.verify_issued_by(cert, ca.cert, now=NOW)
    # A worker certificate can neither serve nor pass as a controller.
    assert _usages(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert pki.CONTROLLER_SERVER_NAME not in _san(cert)[0]


def test_controller_certificate_names_and_usages(ca: pki.CertificateAuthority) -> None:
    identity = pki.issue_identity(ca, node_id="ctl1", role=Role.MANAGER, cluster_id=CLUSTER,
                                  addresses=["10.0.0.5", "ctl1.example", "[fd00::1]", "10.0.0.5"],
                                  validity=dt.timedelta(days=7), now=NOW)
    cert = identity.cert
    assert _san(cert) == (["swarm-controller", "ctl1", "ctl1.example"], ["10.0.0.5", "fd00::1"])
    assert _usages(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=7)
    assert cert.not_valid_before_utc == NOW - pki.CLOCK_SKEW_ALLOWANCE
    assert (identity.node_id, identity.role) == ("ctl1", Role.MANAGER)


def test_certificate_never_outlives_the_ca() -> None:
    short_ca = pki.create_root_ca(CLUSTER, validity=dt.timedelta(days=30), now=NOW)
    identity = pki.issue_identity(short_ca, node_id="n", role=Role.WORKER, cluster_id=CLUSTER, now=NOW)
    assert identity.cert.not_valid_after_utc == short_ca.cert.not_valid_after_utc


def test_admin_certificate(ca: pki.CertificateAuthority) -> None:
    admin = pki.issue_admin_identity(ca, cluster_id=CLUSTER, now=NOW)
    assert (admin.node_id, admin.role) == ("admin", Role.ADMIN)
    assert _usages(admin.cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}


def test_bad_csrs_are_refused(ca: pki.CertificateAuthority) -> None:
    with pytest.raises(pki.InvalidCSR, match="not a PEM"):
        pki.sign_node_certificate(ca, b"nonsense", node_id="n", role=Role.WORKER, cluster_id=CLUSTER)
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    weak_csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(weak, hashes.SHA256())
    with pytest.raises(pki.InvalidCSR, match="too weak"):
        pki.sign_node_certificate(ca, weak_csr.public_bytes(Encoding.PEM), node_id="n",
                                  role=Role.WORKER, cluster_id=CLUSTER)


def test_issued_certificate_checks(ca: pki.CertificateAuthority, other_ca: pki.CertificateAuthority) -> None:
    identity = pki.issue_identity(ca, node_id="n", role=Role.WORKER, cluster_id=CLUSTER, now=NOW)
    with pytest.raises(pki.PKIError, match=r"not issued by the cluster CA: .+"):
        pki.verify_issued_by(identity.cert, other_ca.cert, now=NOW)
    with pytest.raises(pki.PKIError, match="valid only from"):
        pki.verify_issued_by(identity.cert, ca.cert, now=NOW + dt.timedelta(days=91))


def test_identity_files(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    identity = pki.issue_identity(ca, node_id="n", role=Role.WORKER, cluster_id=CLUSTER, now=NOW)
    identity.save(tmp_path / "certs")
    assert (tmp_path / "certs" / "node.key").stat().st_mode & 0o777 == 0o600
    assert pki.NodeIdentity.load(tmp_path / "certs") == identity
    (tmp_path / "certs" / "node.key").write_bytes(pki.key_to_pem(pki.generate_key()))
    with pytest.raises(pki.PKIError, match="does not match"):
        pki.NodeIdentity.load(tmp_path / "certs")


# ---------------------------------------------------------------- renewal


@settings(max_examples=300, deadline=None)
@given(start_offset_s=st.integers(min_value=-10**9, max_value=10**9),
       life_s=st.integers(min_value=60, max_value=20 * 365 * 86400),
       seed=st.integers(min_value=0, max_value=2**32))
def test_renewal_falls_at_50_to_80_percent_of_life(start_offset_s: int, life_s: int, seed: int) -> None:
    not_before = NOW + dt.timedelta(seconds=start_offset_s)
    not_after = not_before + dt.timedelta(seconds=life_s)
    when = pki.renewal_time(not_before, not_after, random.Random(seed))
    fraction = (when - not_before) / (not_after - not_before)
    assert 0.5 - 1e-6 <= fraction <= 0.8 + 1e-6


def test_renewal_times_spread_over_the_window() -> None:
    rng = random.Random(7)
    life = dt.timedelta(days=90)
    fractions = [(pki.renewal_time(NOW, NOW + life, rng) - NOW) / life for _ in range(2000)]
    # Not clustered at one point: both ends of the window get used.
    assert min(fractions) < 0.52
    assert max(fractions) > 0.78


def test_renewal_delay(ca: pki.CertificateAuthority) -> None:
    cert = pki.issue_identity(ca, node_id="n", role=Role.WORKER, cluster_id=CLUSTER, now=NOW).cert
    delay = pki.renewal_delay(cert, NOW, random.Random(1))
    assert dt.timedelta(days=44) < dt.timedelta(seconds=delay) < dt.timedelta(days=73)
    assert pki.renewal_delay(cert, NOW + dt.timedelta(days=80), random.Random(1)) == 0.0


# ------------------------------------------------ peers and revocation


class FakeContext:
    def __init__(self, auth: Mapping[str, Iterable[bytes]]) -> None:
        self._auth = auth

    def auth_context(self) -> Mapping[str, Iterable[bytes]]:
        return self._auth


def test_peer_identity_from_auth_context(ca: pki.CertificateAuthority) -> None:
    identity = pki.issue_identity(ca, node_id="n1", role=Role.WORKER, cluster_id=CLUSTER, now=NOW)
    # What grpc's auth_context() holds on a mutual-TLS call (abridged).
    auth = {"transport_security_type": [b"ssl"], "x509_common_name": [b"n1"],
            "x509_pem_cert": [identity.cert_pem]}
    peer = pki.peer_identity(FakeContext(auth))
    assert peer == pki.PeerIdentity(node_id="n1", role=Role.WORKER, cluster_id=CLUSTER,
                                    serial=identity.cert.serial_number,
                                    not_after=identity.cert.not_valid_after_utc)
    assert pki.peer_identity(FakeContext({"transport_security_type": [b"insecure"]})) is None
    with pytest.raises(pki.InvalidPeer, match="does not match"):
        pki.peer_identity(FakeContext({**auth, "x509_common_name": [b"n2"]}))


def test_certificate_without_a_cluster_role_is_invalid(ca: pki.CertificateAuthority) -> None:
    key = pki.generate_key()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n"),
                                     x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "root")]))
            .issuer_name(ca.cert.subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(days=1))
            .sign(ca.key, hashes.SHA256()))
    with pytest.raises(pki.InvalidPeer, match="not a cluster role"):
        pki.identity_of_cert(cert)


def test_revoked_serial_or_node_is_refused(ca: pki.CertificateAuthority) -> None:
    peer = pki.identity_of_cert(
        pki.issue_identity(ca, node_id="n1", role=Role.WORKER, cluster_id=CLUSTER, now=NOW).cert)
    pki.check_not_revoked(peer, pki.Revocations())
    pki.check_not_revoked(peer, pki.Revocations(serials=frozenset({peer.serial + 1}),
                                                node_ids=frozenset({"n2"})))
    with pytest.raises(pki.RevokedCertificate, match="has been revoked"):
        pki.check_not_revoked(peer, pki.Revocations(serials=frozenset({peer.serial})))
    with pytest.raises(pki.RevokedCertificate, match="removed from the cluster"):
        pki.check_not_revoked(peer, pki.Revocations(node_ids=frozenset({"n1"})))
