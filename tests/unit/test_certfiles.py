"""certfiles reads what a running agent needs of its certificate without
cryptography: checked here against cryptography's own reading of
certificates pki issues."""

from __future__ import annotations

import datetime as dt
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.api import certfiles, pki
from swarm.api.certfiles import NodeCertificate, Role

CA = pki.create_root_ca("cluster1")


@settings(max_examples=20, deadline=None)
@given(node_id=st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=40),
       role=st.sampled_from([Role.WORKER, Role.MANAGER]),
       days=st.integers(1, 40000))
def test_node_certificate_reads_what_cryptography_reads(node_id: str, role: Role,
                                                         days: int) -> None:
    identity = pki.issue_identity(CA, node_id=node_id, role=role, cluster_id="cluster1",
                                  validity=dt.timedelta(days=days))
    light = NodeCertificate.of(identity)
    cert = identity.cert
    assert (light.node_id, light.role) == (identity.node_id, identity.role)
    assert light.not_before == cert.not_valid_before_utc
    assert light.not_after == cert.not_valid_after_utc  # GeneralizedTime after 2049 too
    assert light.cert.serial_number == cert.serial_number
    rng_a, rng_b = random.Random(7), random.Random(7)
    now = dt.datetime.now(dt.UTC)
    assert light.renewal_delay(now, rng_a) == pki.renewal_delay(cert, now, rng_b)


def test_load_checks_the_key_against_the_certificate(tmp_path: Path) -> None:
    identity = pki.issue_identity(CA, node_id="n1", role=Role.WORKER, cluster_id="cluster1")
    identity.save(tmp_path)
    assert NodeCertificate.load(tmp_path).node_id == "n1"
    other = pki.issue_identity(CA, node_id="n2", role=Role.WORKER, cluster_id="cluster1")
    (tmp_path / "node.key").write_bytes(other.key_pem)
    with pytest.raises(ValueError, match=r"node\.key does not match node\.crt"):
        NodeCertificate.load(tmp_path)


@pytest.mark.parametrize("data", [b"", b"\x30", b"\x30\x85\x00\x00\x00\x00\x00",
                                  b"\x30\x03\x02\x01\x01"])
def test_bad_der_is_a_format_error(data: bytes) -> None:
    with pytest.raises(certfiles.CertificateFormatError):
        certfiles.certificate_fields(data)


def test_pki_reexports_the_same_objects() -> None:
    assert pki.Role is Role
    assert pki.CONTROLLER_SERVER_NAME == certfiles.CONTROLLER_SERVER_NAME
    assert pki.renewal_time is certfiles.renewal_time


def test_the_agent_imports_no_cryptography_until_it_joins_or_renews() -> None:
    """A running agent (its main module, the identity keeper, the channels)
    loads no cryptography (joining and renewing do), and no dnspython until
    a task needs the DNS responder."""
    code = ("import sys, swarm.agent.main, swarm.agent.identity, swarm.api.channels; "
            "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith("
            "('cryptography', 'dns.rdtypes', 'dns.renderer'))}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr
    used = ("import sys, swarm.agent.network.dns as d; d.dns.message.make_query('a.b', 'A'); "
            "print('dns.message' in sys.modules and hasattr(sys.modules['dns.message'], "
            "'make_query'))")
    out = subprocess.run([sys.executable, "-c", used], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True", out.stderr
