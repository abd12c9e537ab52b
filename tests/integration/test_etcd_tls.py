"""The controller's etcd client over TLS with client certificates, against a
real etcd that requires them (--client-cert-auth), as PRODUCTION.md tells
operators to run it: the store works, and a client without a certificate of
that CA, or trusting another CA, is refused with StoreUnavailable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from swarm.api import pki
from swarm.controller.store.etcd import EtcdClient, EtcdSettings, StoreUnavailable, op_put
from tests.etcd_server import EtcdServer, ServerTLS


def _issue(ca: pki.CertificateAuthority, directory: Path, name: str, role: pki.Role) -> tuple[str, str]:
    key = pki.generate_key()
    cert = pki.sign_node_certificate(ca, pki.make_csr(key), node_id=name, role=role,
                                     cluster_id="etcd-test", addresses=["127.0.0.1"])
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(pki.cert_to_pem(cert))
    key_file.write_bytes(pki.key_to_pem(key))
    key_file.chmod(0o600)
    return str(cert_file), str(key_file)


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("etcd-pki")
    ca = pki.create_root_ca("etcd-test")
    (directory / "ca.crt").write_bytes(ca.cert_pem)
    # A controller-role certificate can serve (serverAuth, SAN 127.0.0.1).
    cert, key = _issue(ca, directory, "etcd", pki.Role.MANAGER)
    (directory / "server").write_text(f"{cert}\n{key}\n")
    _issue(ca, directory, "controller", pki.Role.MANAGER)
    other = pki.create_root_ca("someone-else")
    (directory / "other-ca.crt").write_bytes(other.cert_pem)
    _issue(other, directory, "stranger", pki.Role.MANAGER)
    return directory


@pytest.fixture(scope="module")
def tls_etcd(pki_dir: Path) -> Iterator[EtcdServer]:
    cert, key = (pki_dir / "server").read_text().split()
    server = EtcdServer.start(tls=ServerTLS(cert_file=cert, key_file=key,
                                            ca_file=str(pki_dir / "ca.crt")))
    try:
        yield server
    finally:
        server.stop()


def _settings(server: EtcdServer, pki_dir: Path, *, ca: str = "ca.crt",
              client: str | None = "controller") -> EtcdSettings:
    return EtcdSettings(endpoints=(server.endpoint,), timeout=3.0, ca_file=str(pki_dir / ca),
                        cert_file=str(pki_dir / f"{client}.crt") if client else "",
                        key_file=str(pki_dir / f"{client}.key") if client else "")


async def test_the_store_works_over_tls_with_a_client_certificate(
        tls_etcd: EtcdServer, pki_dir: Path) -> None:
    client = EtcdClient.open(_settings(tls_etcd, pki_dir))
    try:
        await client.txn([], [op_put(b"/swarm/tls-check", b"yes")], [])
        _, found = await client.get(b"/swarm/tls-check")
        assert found is not None
        assert found.value == b"yes"
    finally:
        await client.close()


@pytest.mark.parametrize(("ca", "client"), [
    ("ca.crt", None),               # no client certificate: etcd requires one
    ("ca.crt", "stranger"),         # a certificate from another CA
    ("other-ca.crt", "controller"),  # the client does not trust etcd's certificate
])
async def test_without_the_right_certificates_etcd_is_unavailable(
        tls_etcd: EtcdServer, pki_dir: Path, ca: str, client: str | None) -> None:
    etcd = EtcdClient.open(_settings(tls_etcd, pki_dir, ca=ca, client=client))
    try:
        with pytest.raises(StoreUnavailable):
            await etcd.get(b"/swarm/tls-check")
    finally:
        await etcd.close()
