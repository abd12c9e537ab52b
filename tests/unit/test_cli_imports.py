"""swarmctl's start-up: the module graph of the CLI app, as every command
loads it, leaves out what only some commands use.

pyroute2 (about 95 ms and 11 MiB at import) is for `swarmctl dev` only,
cryptography (about 45 ms) for nothing swarmctl does to talk to a controller
(certfiles checks the admin key with the ssl module), PyYAML for `-o yaml` and
stack files. Checked in a fresh interpreter: the test process itself has
imported everything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("pyroute2", "cryptography", "yaml", "swarm.api.pki", "swarm.cli.dev.cluster",
         "swarm.cli.dev.hosts", "swarm.cli.compose.convert")

PROBE = """
import json, sys
from typer.main import get_command
from swarm.cli.main import app
get_command(app)  # every command's options built, as at each start-up
print(json.dumps(sorted(sys.modules)))
"""


def loaded_modules() -> set[str]:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                            env=dict(os.environ), check=True, timeout=60)
    return set(json.loads(result.stdout))


def test_the_cli_app_does_not_import_what_only_some_commands_use() -> None:
    loaded = loaded_modules()
    assert "swarm.cli.main" in loaded  # the probe did import the app
    assert "swarm.cli.dev.commands" in loaded  # `dev`'s options are still there
    assert sorted(name for name in loaded
                  if any(name == heavy or name.startswith(heavy + ".") for heavy in HEAVY)) == []


@pytest.mark.parametrize("name", ["load_stack", "Stack", "NAMESPACE_LABEL", "iter_messages"])
def test_compose_names_load_on_first_use(name: str) -> None:
    from swarm.cli import compose

    assert getattr(compose, name) is not None
    assert name in compose.__all__


VERSION_PROBE = """
import sys
from pathlib import Path
sys.argv = ["swarmctl", "--version"]
from swarm.cli.main import main
main()
print(sorted(m for m in ("typer", "grpc", "google.protobuf", "swarm.cli.app") if m in sys.modules))
"""


def test_version_alone_builds_no_command() -> None:
    """`swarmctl --version` prints what the app's eager --version prints,
    without importing the app (Typer, gRPC, protobuf)."""
    from typer.testing import CliRunner

    from swarm.cli.main import app

    fast = subprocess.run([sys.executable, "-c", VERSION_PROBE], capture_output=True, text=True,
                          env=dict(os.environ), check=True, timeout=60).stdout.splitlines()
    through_app = CliRunner().invoke(app, ["--request-timeout", "5", "--version"])
    assert through_app.exit_code == 0
    assert fast == [through_app.output.strip(), "[]"]


def test_admin_identity_checks_the_key_without_cryptography(tmp_path: Path) -> None:
    """--tls-dir is read with certfiles (the ssl module): a key that does not
    match the certificate is still one line naming the files."""
    from swarm.api import pki
    from swarm.api.certfiles import Role
    from swarm.cli.client import admin_identity
    from swarm.cli.errors import CliError

    ca = pki.create_root_ca("c1")
    pki.issue_admin_identity(ca, cluster_id="c1").save(tmp_path)
    identity = admin_identity(str(tmp_path))
    assert identity.role is Role.ADMIN
    other = pki.issue_identity(ca, node_id="n2", role=Role.WORKER, cluster_id="c1")
    (tmp_path / "node.key").write_bytes(other.key_pem)
    with pytest.raises(CliError, match=r"^cannot read the admin certificate: .*node\.key does "
                                       r"not match node\.crt"):
        admin_identity(str(tmp_path))
