from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from swarm.controller.store import EtcdClient, EtcdSettings, Store
from tests.etcd_server import EtcdServer


@pytest.fixture(autouse=True)
def own_config_home(tmp_path_factory: pytest.TempPathFactory,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    """swarmctl reads the operator's context file (~/.config/swarmctl): tests
    must neither see a real one nor write one."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))
    # Nor docker's credentials (~/.docker/config.json); and swarmctl resolves
    # no tag unless a test asks (--resolve-image): tests reach no registry but
    # the loopback ones they start.
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path_factory.mktemp("docker")))
    monkeypatch.setenv("SWARMCTL_RESOLVE_IMAGE", "never")
    # Under sudo, `dev up` also writes the invoking user's context: not from tests.
    for variable in ("SUDO_USER", "SUDO_UID", "SUDO_GID"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    server = EtcdServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd_prefix() -> str:
    """Each test gets a key space of its own in the shared etcd."""
    return f"/test-{uuid.uuid4().hex[:12]}/"


@pytest.fixture
async def store(etcd_server: EtcdServer, etcd_prefix: str) -> AsyncIterator[Store]:
    client = EtcdClient.open(EtcdSettings(endpoints=(etcd_server.endpoint,)))
    try:
        yield Store(client, etcd_prefix)
    finally:
        await client.close()


def pytest_collection_finish(session: pytest.Session) -> None:
    # An empty run proves nothing: fail it rather than let pytest exit 5.
    if not session.items and not session.config.option.collectonly:
        raise pytest.UsageError("no tests were collected")
