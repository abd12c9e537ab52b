"""Private registries and one image everywhere, on real parts: Debian's
`docker-registry` behind htpasswd (bcrypt from the system's libcrypt), real
skopeo, a `swarm-controller` process (mutual TLS), two `swarm-agent`
processes running runc containers, and the real `swarmctl` as a process.
Loopback only.

What an operator cares about: a pull without credentials is REJECTED with the
reason in `service ps`; with `--with-registry-auth` the service runs; the
password is in no process's command line while it pulls, in no log and in no
etcd key; a tag pushed again after the service was created changes nothing
that new tasks run until `service update --image`; an unreachable registry is
one warning and the tag is kept. The store's and the resolver's parts are
tested on their own first.

The cluster fixture (tests/agent/test_agent_e2e.py) stops the processes by
PID and removes every container, also when a test fails.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarm.agent.images import ImageError, ImageStore
from swarm.api.registryauth import Credential
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli import pull
from swarm.controller.store import EtcdClient, EtcdSettings
from tests.agent.conftest import require_root_and_tools
from tests.agent.test_agent_e2e import Cluster, cluster, running
from tests.agent.test_logs_e2e import swarmctl
from tests.etcd_server import EtcdServer, free_port
from tests.processes import start_agent
from tests.registry import RegistryServer, bcrypt_hash, build_busybox_image

__all__ = ["cluster"]  # the fixture, imported for the tests below

USER = "deployer"
PASSWORD = "Zq8-pull-secret-7781"  # searched for in command lines, logs and etcd
TOKEN = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
FORBIDDEN = (PASSWORD.encode(), TOKEN.encode())


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    require_root_and_tools()
    if bcrypt_hash("probe") is None and not os.environ.get("CI"):
        pytest.skip("libcrypt has no bcrypt for the registry's htpasswd file")
    server = RegistryServer.start(tmp_path_factory.mktemp("auth-registry"),
                                  credentials=(USER, PASSWORD))
    try:
        yield server
    finally:
        server.stop()


def push_app(registry: RegistryServer, version: str, tag: str = "1") -> tuple[str, str]:
    """app:TAG whose /version says `version`; (reference, manifest digest)."""
    reference = build_busybox_image(registry.addr, "app", tag, {"/version": f"{version}\n".encode()},
                                    credentials=(USER, PASSWORD))
    return reference, registry.manifest_digest("app", tag)


class CmdlineSampler:
    """Reads every process's /proc/PID/cmdline in a loop (a thread), noting
    any that holds a forbidden string and whether a skopeo was seen (proof
    that it sampled during a pull)."""

    def __init__(self, forbidden: tuple[bytes, ...]) -> None:
        self.forbidden = forbidden
        self.hits: list[bytes] = []
        self.skopeo: list[bytes] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cmdline-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as file:
                        cmdline = file.read()
                except OSError:
                    continue
                if any(f in cmdline for f in self.forbidden):
                    self.hits.append(cmdline)
                if b"skopeo\0" in cmdline and b"copy\0" in cmdline:
                    self.skopeo.append(cmdline)
            self.samples += 1

    def __enter__(self) -> CmdlineSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


# ------------------------------------------------------------------ the parts


async def test_store_pulls_with_a_tasks_credential_by_digest(
        tmp_path: Path, auth_registry: RegistryServer) -> None:
    old, old_digest = push_app(auth_registry, "old", tag="store")
    store = ImageStore(tmp_path / "store")
    try:
        with pytest.raises(ImageError, match=r"^access to .* denied"):
            await store.ensure(old)  # the node has none of its own
        wrong = Credential(auth_registry.addr, USER, "wrong")
        with pytest.raises(ImageError, match=r"^access to .* denied"):
            await store.ensure(old, wrong)
        # Pinned, then the tag moves: the pinned reference still pulls the old bytes.
        pinned = f"{old}@{old_digest}"
        _, new_digest = push_app(auth_registry, "new", tag="store")
        assert new_digest != old_digest
        right = Credential(auth_registry.addr, USER, PASSWORD)
        with CmdlineSampler(FORBIDDEN) as sampler:
            image = await store.ensure(pinned, right)
        assert image.digest == old_digest
        assert (image.layers[0] / "version").read_text() == "old\n"
        assert sampler.skopeo, f"no skopeo seen in {sampler.samples} samples"
        assert all(b"/dev/fd/" in c for c in sampler.skopeo)  # the memfd, not a path
        assert sampler.hits == []
        # Nothing of them on the store's disk.
        for path in (tmp_path / "store").rglob("*"):
            if path.is_file() and not path.is_symlink() and path.stat().st_size < 1 << 20:
                data = path.read_bytes()
                assert not any(f in data for f in FORBIDDEN), path
    finally:
        await store.close()


def test_resolving_tags_against_a_registry_with_basic_auth(auth_registry: RegistryServer) -> None:
    reference, digest = push_app(auth_registry, "resolve", tag="resolve")
    right = {auth_registry.addr: Credential(auth_registry.addr, USER, PASSWORD)}
    wrong = {auth_registry.addr: Credential(auth_registry.addr, USER, "nope")}
    assert pull.resolve_digest(reference, right) == digest
    with pytest.raises(pull.ResolveError, match=r"^authentication required"):
        pull.resolve_digest(reference, {})
    with pytest.raises(pull.ResolveError, match=r"^access denied"):
        pull.resolve_digest(reference, wrong)
    with pytest.raises(pull.ResolveError, match=r"^manifest unknown"):
        pull.resolve_digest(f"{auth_registry.addr}/app:missing", right)
    closed = f"127.0.0.1:{free_port()}"
    with pytest.raises(pull.ResolveError, match=f"^registry {closed} unreachable"):
        pull.resolve_digest(f"{closed}/app:1", right)


# ------------------------------------------------------------------ end to end


async def stored_values(etcd_server: EtcdServer, prefix: str) -> list[bytes]:
    client = EtcdClient.open(EtcdSettings(endpoints=(etcd_server.endpoint,)))
    try:
        _, kvs = await client.range_prefix(prefix.encode())
        return [kv.key + b"=" + kv.value for kv in kvs]
    finally:
        await client.close()


async def test_private_registry_end_to_end(
        cluster: Cluster, auth_registry: RegistryServer, etcd_server: EtcdServer,
        etcd_prefix: str, tmp_path: Path) -> None:
    cluster.start_agent("node-a")
    cluster.start_agent("node-b")
    await cluster.wait_ready(2)
    image, digest1 = push_app(auth_registry, "v1")
    auth_file = tmp_path / "auth.json"
    auth_file.write_text(json.dumps({"auths": {auth_registry.addr: {"auth": TOKEN}}}))
    auth_file.chmod(0o600)
    outputs: list[str] = []

    def cli(*args: str) -> tuple[int, str, str]:
        result = swarmctl(cluster, *args, timeout=120)
        outputs.extend((result.out, result.err))
        return result.code, result.out, result.err

    common = ("--stop-grace-period", "300ms", "--update-parallelism", "0",
              "--", "sh", "-c", "cat /version; exec sleep 1000")

    # Without credentials: the tag cannot be resolved (one warning), and the
    # nodes' pulls are REJECTED with the reason, shown by `service ps`.
    code, _, err = cli("service", "create", "nocreds", "--image", image, "-d",
                       "--resolve-image", "always", *common)
    assert code == 0, err
    assert err.count("\n") == 1, err
    assert "authentication required" in err, err
    await cluster.wait(
        (await cluster.control.GetService(_get("nocreds"))).service.id,
        lambda ts: any(t.status.state == pb.REJECTED for t in ts), "rejected", 60)
    code, out, _ = cli("service", "ps", "nocreds", "--no-trunc")
    assert code == 0
    assert "Rejected" in out or "rejected" in out, out
    assert f"access to {auth_registry.addr}/app" in out, out
    assert "denied" in out, out
    assert cli("service", "rm", "nocreds")[0] == 0

    # With them: resolved to the digest, pulled, running -- and the password
    # in no command line while the agents pull.
    with CmdlineSampler(FORBIDDEN) as sampler:
        code, out, err = cli("service", "create", "web", "--image", image, "--replicas", "1",
                             "--with-registry-auth", "--registry-auth-file", str(auth_file),
                             "--resolve-image", "always", *common)
    assert code == 0, (out, err)
    assert "warning" not in err, err
    assert sampler.skopeo, f"no skopeo pull seen in {sampler.samples} samples"
    assert sampler.hits == []
    web = (await cluster.control.GetService(_get("web"))).service
    assert web.spec.task.container.image == f"{image}@{digest1}"
    assert web.registry_auth.registry == auth_registry.addr
    assert not web.registry_auth.sealed

    # A new image under the same tag changes nothing new tasks run...
    _, digest2 = push_app(auth_registry, "v2")
    assert digest2 != digest1
    assert cli("service", "scale", "web=3")[0] == 0
    tasks = await cluster.wait(web.id, lambda ts: len(running(ts)) == 3, "3 running", 90)
    assert {t.spec.container.image for t in running(tasks)} == {f"{image}@{digest1}"}
    assert len({t.node_id for t in running(tasks)}) == 2  # node-b pulled it too
    await _versions(cluster, "web", {"v1"})

    # ... until `service update --image` resolves the tag again.
    code, out, err = cli("service", "update", "web", "--image", image, "--with-registry-auth",
                         "--registry-auth-file", str(auth_file), "--resolve-image", "always")
    assert code == 0, (out, err)
    web = (await cluster.control.GetService(_get("web"))).service
    assert web.spec.task.container.image == f"{image}@{digest2}"
    tasks = await cluster.wait(web.id, lambda ts: len(running(ts)) == 3 and all(
        t.spec.container.image.endswith(digest2) for t in running(ts)), "updated", 90)
    await _versions(cluster, "web", {"v2"}, only=running(tasks))

    # An unreachable registry: one warning, the tag kept.
    closed = f"127.0.0.1:{free_port()}/app:1"
    code, _, err = cli("service", "create", "far", "--image", closed, "-d",
                       "--resolve-image", "always", "--", "sleep", "1")
    assert code == 0
    assert err.count("\n") == 1, err
    assert err.startswith(f"warning: image {closed}: cannot resolve its digest (registry "), err
    assert "unreachable" in err, err
    assert "using the tag" in err, err
    far = (await cluster.control.GetService(_get("far"))).service
    assert far.spec.task.container.image == closed

    # The password is in no log and in no etcd key.
    logs = [cluster.controller.log(), *(agent.log() for agent in cluster.agents.values()),
            *outputs]
    for text in logs:
        assert PASSWORD not in text
        assert TOKEN not in text
    for value in await stored_values(etcd_server, etcd_prefix):
        assert not any(f in value for f in FORBIDDEN)


def _get(name: str) -> cpb.GetRequest:
    return cpb.GetRequest(ref=name)


async def _versions(cluster: Cluster, service: str, wanted: set[str],
                    only: list[pb.Task] | None = None) -> None:
    """The /version each running task printed (its first log line)."""
    deadline = time.monotonic() + 30
    while True:
        result = swarmctl(cluster, "service", "logs", service, "--raw", "--no-task-ids")
        lines = [line.strip() for line in result.out.splitlines() if line.strip()]
        if only is not None:
            result = swarmctl(cluster, "service", "logs", service, "--no-trunc")
            lines = [line.rsplit("| ", 1)[-1].strip() for line in result.out.splitlines()
                     if any(t.id in line for t in only)]
        if lines and set(lines) == wanted:
            return
        assert time.monotonic() < deadline, (result.out, result.err)
        await asyncio.sleep(0.5)


async def test_node_wide_credentials(cluster: Cluster, auth_registry: RegistryServer,
                                     tmp_path: Path) -> None:
    """`swarm-agent --registry-auth-file`: the node pulls with its own
    credentials a service that brought none (one without them is REJECTED:
    test_private_registry_end_to_end), and they are in no command line."""
    auth_file = tmp_path / "node-auth.json"
    auth_file.write_text(json.dumps({"auths": {auth_registry.addr: {"auth": TOKEN}}}))
    auth_file.chmod(0o600)
    state_dir = tempfile.mkdtemp(prefix="swe2e-", dir="/run")
    cluster.state_dirs.append(state_dir)
    cluster.agents["node-own"] = start_agent(
        [cluster.controller], state_dir, hostname="node-own", join_token=cluster.join_token,
        extra_args=["--registry-auth-file", str(auth_file)])
    await cluster.wait_ready(1)
    image, _ = push_app(auth_registry, "node", tag="node")
    spec = pb.ServiceSpec(name="own", replicated=pb.ReplicatedService(replicas=1))
    spec.task.container.image = image
    spec.task.container.command.extend(["sleep", "1000"])
    spec.task.container.stop_grace_period.FromMilliseconds(300)
    with CmdlineSampler(FORBIDDEN) as sampler:
        service = (await cluster.control.CreateService(cpb.CreateServiceRequest(spec=spec))
                   ).service
        await cluster.wait(service.id, lambda ts: len(running(ts)) == 1, "running", 60)
    assert sampler.hits == []
    assert PASSWORD not in cluster.agents["node-own"].log()
