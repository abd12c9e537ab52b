"""`--resolve-image` and `--with-registry-auth` in `apply` and `service
update`, against a live control plane (real etcd and controller, simulated
nodes) and a real `docker-registry` behind htpasswd, where the tags are
resolved: a moved tag is an image change for `always`, nothing for `changed`;
`update --force` looks the tag up again, `update --replicas` does not; an
apply with credentials sends them to unchanged services without rolling
them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.test_registry_auth_e2e import PASSWORD, TOKEN, USER, push_app
from tests.integration.live import LiveCluster, ok, swarmctl
from tests.registry import RegistryServer, bcrypt_hash

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    if bcrypt_hash("probe") is None:
        pytest.fail("libcrypt has no bcrypt for the registry's htpasswd file")
    server = RegistryServer.start(tmp_path_factory.mktemp("registry"),
                                  credentials=(USER, PASSWORD))
    try:
        yield server
    finally:
        server.stop()


def test_apply_and_update_pin_tags_to_digests(live: LiveCluster, auth_registry: RegistryServer,
                                              tmp_path: Path) -> None:
    image, digest1 = push_app(auth_registry, "v1", tag="apply")
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"auths": {auth_registry.addr: {"auth": TOKEN}}}))
    stack = tmp_path / "stack.yaml"
    stack.write_text(f"name: priv\nservices:\n  app:\n    image: {image}\n")
    creds = ("--registry-auth-file", str(auth))

    def apply(*flags: str) -> str:
        return ok(swarmctl(live, "apply", "-f", str(stack), "-d", *flags)).stdout

    out = apply("--with-registry-auth", *creds, "--resolve-image", "always")
    assert "service priv_app: created" in out
    created = live.service("priv_app")
    assert created.spec.task.container.image == f"{image}@{digest1}"
    assert created.registry_auth.registry == auth_registry.addr
    assert created.registry_auth.sealed

    # Again with credentials: they are sent, nothing rolls.
    out = apply("--with-registry-auth", *creds, "--resolve-image", "always")
    assert "service priv_app: unchanged (registry credentials sent)" in out
    again = live.service("priv_app")
    assert again.spec_version == created.spec_version
    assert again.registry_auth.sealed != created.registry_auth.sealed  # sealed afresh
    # Without: the credentials only resolve the tag, and nothing is written.
    live.eventually(lambda: len(live.running("priv_app")) == 1, 15, "the task running")
    before = live.snapshot()
    assert "service priv_app: unchanged" in apply(*creds, "--resolve-image", "always")
    assert live.snapshot() == before

    # The tag moves: `changed` keeps what runs, `always` rolls to the new digest.
    _, digest2 = push_app(auth_registry, "v2", tag="apply")
    assert "service priv_app: unchanged" in apply(*creds, "--resolve-image", "changed")
    assert live.snapshot() == before
    dry = ok(swarmctl(live, "apply", "-f", str(stack), "--dry-run", *creds,
                      "--resolve-image", "always")).stdout
    assert f'~ task.container.image: "{image}@{digest1}" -> "{image}@{digest2}"' in dry
    assert "service priv_app: updated" in apply(*creds, "--resolve-image", "always")
    assert live.service("priv_app").spec.task.container.image == f"{image}@{digest2}"

    # `service update`: --replicas leaves the image; --force (always) looks it up again.
    _, digest3 = push_app(auth_registry, "v3", tag="apply")
    ok(swarmctl(live, "service", "update", "priv_app", "-d", "--replicas", "2", *creds,
                "--resolve-image", "always"))
    assert live.service("priv_app").spec.task.container.image == f"{image}@{digest2}"
    ok(swarmctl(live, "service", "update", "priv_app", "-d", "--force", *creds,
                "--resolve-image", "never"))
    assert live.service("priv_app").spec.task.container.image == f"{image}@{digest2}"
    ok(swarmctl(live, "service", "update", "priv_app", "-d", "--force", *creds,
                "--resolve-image", "always"))
    assert live.service("priv_app").spec.task.container.image == f"{image}@{digest3}"
    # Without credentials the registry refuses: one warning, the pinned image kept.
    result = swarmctl(live, "service", "update", "priv_app", "-d", "--image", image,
                      "--resolve-image", "always")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("\n") == 1, result.stderr
    assert "authentication required" in result.stderr
    assert f"keeping {image}@{digest3}, which the service runs" in result.stderr
    assert live.service("priv_app").spec.task.container.image == f"{image}@{digest3}"
