"""Security flags and settings: swarm-controller's KEK handling, swarm-agent's
join flags, the swarmctl context's admin identity, the CA's cluster object."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from swarm.agent.identity import join_address
from swarm.agent.main import load_or_join, parse_args
from swarm.api import pki
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli.dev.context import Context, read_context, write_context
from swarm.controller.ca import CASettings, CASetupError, build_cluster_ca, load_cluster_ca, revocations_of
from swarm.controller.main import parse_args as controller_args

KEK = pki.generate_kek()


def test_init_creates_a_private_kek_file(tmp_path: Path) -> None:
    kek = tmp_path / "secrets" / "kek"
    config = controller_args(["--init", "--kek-file", str(kek)])
    assert stat.S_IMODE(kek.stat().st_mode) == 0o600
    assert config.ca.kek == kek.read_bytes().strip()
    assert not config.insecure
    # Later starts read the same file.
    assert controller_args(["--kek-file", str(kek)]).ca.kek == config.ca.kek


def test_kek_file_must_exist_without_init_and_be_private(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        controller_args(["--kek-file", str(tmp_path / "missing")])
    assert "use --init" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        controller_args([])
    assert "--kek-file is required" in capsys.readouterr().err
    loose = tmp_path / "loose"
    loose.write_bytes(KEK)
    loose.chmod(0o644)
    with pytest.raises(SystemExit):
        controller_args(["--kek-file", str(loose)])
    assert "chmod 600" in capsys.readouterr().err


def test_insecure_controller_needs_no_kek() -> None:
    assert controller_args(["--insecure"]).insecure


def test_external_ca_flags_go_together(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kek = tmp_path / "kek"
    ca = pki.create_root_ca("ext")
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    (tmp_path / "ca.key").write_bytes(pki.key_to_pem(ca.key))
    with pytest.raises(SystemExit):
        controller_args(["--init", "--kek-file", str(kek), "--external-ca-cert",
                         str(tmp_path / "ca.crt")])
    assert "go together" in capsys.readouterr().err
    config = controller_args(["--kek-file", str(kek), "--external-ca-cert", str(tmp_path / "ca.crt"),
                              "--external-ca-key", str(tmp_path / "ca.key")])
    state, loaded = build_cluster_ca(config.ca)
    assert state.external
    assert loaded.cert == ca.cert


def test_cluster_ca_round_trip_and_wrong_kek() -> None:
    state, ca = build_cluster_ca(CASettings(kek=KEK))
    assert load_cluster_ca(state, KEK).key.public_key() == ca.key.public_key()
    with pytest.raises(CASetupError, match="wrong key-encryption key"):
        load_cluster_ca(state, pki.generate_kek())
    with pytest.raises(CASetupError, match="no key-encryption key"):
        build_cluster_ca(CASettings())
    assert state.worker_token_secret != state.controller_token_secret
    assert pki.key_to_pem(ca.key) not in state.SerializeToString()  # only sealed


def test_revocations_come_from_the_cluster_object() -> None:
    state = pb.ClusterCA(revoked_nodes=[pb.RevokedNode(node_id="a"), pb.RevokedNode(node_id="b")])
    assert revocations_of(state).node_ids == {"a", "b"}
    assert revocations_of(None) == pki.Revocations()


def test_agent_join_flags(tmp_path: Path) -> None:
    config = parse_args(["--controller", "10.0.0.1:2377", "--state-dir", str(tmp_path),
                         "--advertise-addr", "10.0.0.5", "--join-token", "SWMTKN-1-x-y",
                         "--join-addr", "10.0.0.1:4000"])
    assert config.join_token == "SWMTKN-1-x-y"
    assert config.join_addrs == ("10.0.0.1:4000",)
    assert config.certs_dir == tmp_path / "certs"
    assert join_address("10.0.0.1:2377") == "10.0.0.1:2378"


async def test_agent_without_identity_or_token_says_what_to_do(tmp_path: Path) -> None:
    config = parse_args(["--controller", "10.0.0.1:2377", "--state-dir", str(tmp_path),
                         "--advertise-addr", "10.0.0.5"])
    with pytest.raises(Exception, match="--join-token"):
        await load_or_join(config)


async def test_agent_keeps_its_identity_in_the_state_dir(tmp_path: Path) -> None:
    ca = pki.create_root_ca("c")
    identity = pki.issue_identity(ca, node_id="n1", role=pki.Role.WORKER, cluster_id="c")
    config = parse_args(["--controller", "10.0.0.1:2377", "--state-dir", str(tmp_path),
                         "--advertise-addr", "10.0.0.5"])
    identity.save(config.certs_dir)
    assert stat.S_IMODE((config.certs_dir / "node.key").stat().st_mode) == 0o600
    assert (await load_or_join(config)).node_id == "n1"


def test_context_keeps_the_admin_identity_paths() -> None:
    write_context(Context("dev", "192.168.77.1:2377", cert="/a/node.crt", key="/a/node.key",
                          ca="/a/ca.crt"))
    assert read_context() == Context("dev", "192.168.77.1:2377", "/a/node.crt", "/a/node.key",
                                     "/a/ca.crt")
