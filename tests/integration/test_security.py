"""Mutual TLS, join tokens and authorization against a real controller: the
good paths (join, renewal, rotation) and the bad input of issue 6, each
refused with the right gRPC status and nothing changed in etcd."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from swarm.agent.identity import (
    IdentityKeeper,
    JoinError,
    RenewError,
    join,
    join_in_child,
    renew,
    renew_in_child,
)
from swarm.agent.simulated import SimulatedCluster
from swarm.api import channels, pki
from swarm.api.certfiles import NodeCertificate
from swarm.api.v1 import ca_pb2 as capb
from swarm.api.v1 import ca_pb2_grpc as cagrpc
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import dispatcher_pb2_grpc as dgrpc
from swarm.api.v1 import logs_pb2 as lpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.ca import CASettings, RateLimiter
from swarm.controller.server import CLUSTER_ID, Controller
from swarm.controller.store import Update
from tests.etcd_server import EtcdServer, free_port
from tests.integration.conftest import (
    FAST_SESSION,
    TEST_KEK,
    admin_channel,
    controller_config,
    sim_cluster,
    worker_token,
)
from tests.waiting import eventually

pytestmark = pytest.mark.integration


async def snapshot(controller: Controller) -> dict[bytes, object]:
    """Every key with its mod_revision, node status (heartbeats) and the
    leader key left out: equal snapshots mean nothing was written."""
    prefix = controller.config.prefix
    _, kvs = await controller.etcd.range_prefix(prefix.encode())
    nodes, leader = (prefix + "nodes/").encode(), (prefix + "leader").encode()
    found: dict[bytes, object] = {}
    for kv in kvs:
        if kv.key.startswith(nodes):
            found[kv.key] = pb.Node.FromString(kv.value).spec.SerializeToString(deterministic=True)
        elif kv.key != leader:
            found[kv.key] = kv.mod_revision
    return found


def web_spec(name: str = "web", replicas: int = 3) -> pb.ServiceSpec:
    spec = pb.ServiceSpec(name=name, replicated=pb.ReplicatedService(replicas=replicas))
    spec.task.container.image = "busybox:latest"
    return spec


async def join_request(controller: Controller, token: str,
                       ca_pem: bytes | None = None) -> capb.NodeCertificateResponse:
    key = pki.generate_key()
    async with channels.client_channel(controller.join_addr, None,
                                       ca_pem=ca_pem or controller.pki.ca.cert_pem) as channel:
        return await cagrpc.CAJoinStub(channel).IssueNodeCertificate(
            capb.IssueNodeCertificateRequest(token=token, csr_pem=pki.make_csr(key)), timeout=5)


def status_of(error: pytest.ExceptionInfo[grpc.aio.AioRpcError]) -> grpc.StatusCode:
    return error.value.code()


# ------------------------------------------------------------ joining


async def test_join_gives_a_worker_identity_and_the_node_registers_as_its_cn(
        controller: Controller, control: cgrpc.ControlAsyncStub) -> None:
    identity = await join([controller.join_addr], worker_token(controller))
    assert identity.role is pki.Role.WORKER
    assert identity.ca_pem == controller.pki.ca.cert_pem
    async with channels.client_channel(f"127.0.0.1:{controller.port}", identity) as channel:
        dispatcher = dgrpc.DispatcherStub(channel)
        response = await dispatcher.Register(dpb.RegisterRequest(), timeout=5)
        assert response.node_id == identity.node_id
        again = await dispatcher.Register(dpb.RegisterRequest(), timeout=5)
        assert again.node_id == identity.node_id  # one certificate, one node
    nodes = (await control.ListNodes(cpb.ListNodesRequest())).nodes
    assert [n.id for n in nodes] == [identity.node_id]


async def test_controller_token_gives_a_controller_certificate(controller: Controller) -> None:
    token = str(controller.pki.token(pki.Role.MANAGER))
    identity = await join([controller.join_addr], token)
    assert identity.role is pki.Role.MANAGER


async def test_wrong_token_is_refused_and_nothing_changes(controller: Controller) -> None:
    before = await snapshot(controller)
    good = controller.pki.token(pki.Role.WORKER)
    wrong_secret = str(pki.JoinToken(good.ca_digest, pki.new_token_secret()))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await join_request(controller, wrong_secret)
    assert status_of(caught) == grpc.StatusCode.UNAUTHENTICATED
    assert "neither the worker nor the controller token" in (caught.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await join_request(controller, "SWMTKN-1-not-a-token")
    assert status_of(caught) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(JoinError, match="refused"):
        await join([controller.join_addr], wrong_secret)
    assert await snapshot(controller) == before


async def test_right_secret_with_another_cas_digest(controller: Controller) -> None:
    before = await snapshot(controller)
    other_ca = pki.create_root_ca("other")
    good = controller.pki.token(pki.Role.WORKER)
    foreign = str(pki.JoinToken(pki.ca_digest(other_ca.cert), good.secret))
    # The joining node refuses the controller before it sends the secret...
    with pytest.raises(JoinError, match=r"does not match|matches the join token"):
        await join([controller.join_addr], foreign)
    # ...and the controller refuses the token if it is sent anyway.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await join_request(controller, foreign)
    assert status_of(caught) == grpc.StatusCode.UNAUTHENTICATED
    assert "CA digest" in (caught.value.details() or "")
    assert await snapshot(controller) == before


async def test_rotated_token_stops_working_joined_nodes_keep_working(
        controller: Controller, control: cgrpc.ControlAsyncStub,
        sim_nodes: SimulatedCluster) -> None:
    old = worker_token(controller)
    async with admin_channel(controller) as channel:
        rotated = await cagrpc.CAAdminStub(channel).GetJoinToken(
            capb.GetJoinTokenRequest(role=capb.JOIN_ROLE_WORKER, rotate=True))
    assert rotated.token != old
    await eventually(lambda: worker_token(controller) == rotated.token)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await join_request(controller, old)
    assert status_of(caught) == grpc.StatusCode.UNAUTHENTICATED
    await join_request(controller, rotated.token)
    # Joined nodes still run new work.
    service = (await control.CreateService(cpb.CreateServiceRequest(spec=web_spec()))).service
    await eventually(lambda: sum(
        t.status.state == pb.RUNNING
        for t in controller.store.cache.tasks_by_service.get(service.id, {}).values()) == 3)


async def test_joins_are_rate_limited_per_peer(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    config = controller_config(etcd_server.endpoint, etcd_prefix)
    limited = Controller(config.__class__(**{
        **config.__dict__, "ca": CASettings(kek=TEST_KEK, join_rate=0.001, join_burst=2)}))
    await limited.start()
    try:
        token = worker_token(limited)
        for _ in range(2):
            await join_request(limited, token)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await join_request(limited, token)
        assert status_of(caught) == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await limited.stop()


def test_rate_limiter_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=1.0, burst=2, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(3)] == [True, True, False]
    assert limiter.allow("b")  # per peer
    now[0] = 1.0
    assert limiter.allow("a")
    assert not limiter.allow("a")


# ------------------------------------------------------------ certificates


async def test_renewal_keeps_the_node_id(controller: Controller) -> None:
    identity = await join([controller.join_addr], worker_token(controller))
    renewed = await renew(f"127.0.0.1:{controller.port}", identity)
    assert renewed.node_id == identity.node_id
    assert renewed.role is pki.Role.WORKER
    assert renewed.cert.serial_number != identity.cert.serial_number
    assert renewed.key_pem != identity.key_pem


async def test_an_agent_joins_and_renews_in_a_child_process(controller: Controller,
                                                            tmp_path: Path) -> None:
    """The real agent's way (it keeps a certs dir): join and renewal run in a
    child process that writes the dir, so the agent never loads
    cryptography; refusals come back as one line."""
    certs = tmp_path / "certs"
    wrong = str(pki.JoinToken(controller.pki.token(pki.Role.WORKER).ca_digest,
                              pki.new_token_secret()))
    with pytest.raises(JoinError, match="refused to join this node"):
        await join_in_child([controller.join_addr], wrong, certs)
    assert not (certs / "node.crt").exists()
    joined = await join_in_child([controller.join_addr], worker_token(controller), certs)
    assert joined.role is pki.Role.WORKER
    assert joined.node_id == pki.NodeIdentity.load(certs).node_id
    address = f"127.0.0.1:{controller.port}"
    renewed = await renew_in_child(address, certs)
    assert renewed.node_id == joined.node_id
    assert renewed.cert_pem != joined.cert_pem
    assert renewed.cert_pem == (certs / "node.crt").read_bytes()
    with pytest.raises(RenewError, match="UNAVAILABLE"):
        await renew_in_child(f"127.0.0.1:{free_port()}", certs)
    # The keeper swaps the channels to the renewed identity.
    keeper = IdentityKeeper(renewed, [address], directory=certs)
    keeper.min_delay = 0.0
    keeper.identity = NodeCertificate.of(pki.issue_identity(
        controller.pki.ca, node_id=renewed.node_id, role=pki.Role.WORKER,
        cluster_id=controller.pki.cluster_uid, validity=dt.timedelta(seconds=2)))
    renewing = asyncio.create_task(keeper.renew_forever())
    try:
        await eventually(lambda: keeper.renewals >= 1, timeout=30)
    finally:
        renewing.cancel()
        await asyncio.gather(renewing, return_exceptions=True)
        await keeper.close()
    assert keeper.identity.not_after - keeper.identity.not_before > dt.timedelta(days=1)


async def test_expired_certificate_is_refused(controller: Controller) -> None:
    before = await snapshot(controller)
    expired = pki.issue_identity(
        controller.pki.ca, node_id="late", role=pki.Role.ADMIN,
        cluster_id=controller.pki.cluster_uid, validity=dt.timedelta(days=1),
        now=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    async with channels.client_channel(f"127.0.0.1:{controller.port}", expired) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await cgrpc.ControlStub(channel).CreateService(
                cpb.CreateServiceRequest(spec=web_spec()), timeout=5)
    # The TLS handshake fails: gRPC reports the link as unavailable.
    assert status_of(caught) == grpc.StatusCode.UNAVAILABLE
    assert await snapshot(controller) == before


async def test_certificate_of_another_cluster_is_refused(controller: Controller) -> None:
    other = pki.create_root_ca("other")
    stranger = pki.issue_admin_identity(other, cluster_id="other")
    async with channels.client_channel(f"127.0.0.1:{controller.port}", stranger,
                                       ca_pem=controller.pki.ca.cert_pem) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await cgrpc.ControlStub(channel).ListNodes(cpb.ListNodesRequest(), timeout=5)
    assert status_of(caught) == grpc.StatusCode.UNAVAILABLE


async def test_removed_nodes_certificate_is_refused(
        controller: Controller, control: cgrpc.ControlAsyncStub,
        sim_nodes: SimulatedCluster) -> None:
    victim = sim_nodes.nodes[0]
    assert victim.keeper is not None
    identity = victim.keeper.identity
    await victim.stop()
    await control.RemoveNode(cpb.RemoveNodeRequest(ref=identity.node_id, force=True))
    await eventually(lambda: identity.node_id in controller.pki.revocations().node_ids)
    assert identity.node_id not in controller.store.cache.nodes
    before = await snapshot(controller)
    async with channels.client_channel(f"127.0.0.1:{controller.port}", identity) as channel:
        dispatcher = dgrpc.DispatcherStub(channel)
        for call in (dispatcher.Register(dpb.RegisterRequest(), timeout=5),
                     dispatcher.Heartbeat(dpb.HeartbeatRequest(node_id=identity.node_id),
                                          timeout=5)):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert status_of(caught) == grpc.StatusCode.UNAUTHENTICATED
            assert "removed" in (caught.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await cagrpc.NodeCAStub(channel).RenewNodeCertificate(
                capb.RenewNodeCertificateRequest(csr_pem=pki.make_csr(pki.generate_key())))
        assert status_of(caught) == grpc.StatusCode.UNAUTHENTICATED
    assert await snapshot(controller) == before
    assert identity.node_id not in controller.store.cache.nodes


# ------------------------------------------------------------ authorization


async def test_worker_certificate_cannot_call_the_control_api(
        controller: Controller, sim_nodes: SimulatedCluster) -> None:
    before = await snapshot(controller)
    keeper = sim_nodes.nodes[0].keeper
    assert keeper is not None
    async with channels.client_channel(f"127.0.0.1:{controller.port}",
                                       keeper.identity) as channel:
        for call in (cgrpc.ControlStub(channel).CreateService(
                         cpb.CreateServiceRequest(spec=web_spec()), timeout=5),
                     cgrpc.ControlStub(channel).ListNodes(cpb.ListNodesRequest(), timeout=5),
                     cagrpc.CAAdminStub(channel).GetJoinToken(
                         capb.GetJoinTokenRequest(role=capb.JOIN_ROLE_CONTROLLER), timeout=5)):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert status_of(caught) == grpc.StatusCode.PERMISSION_DENIED
    assert await snapshot(controller) == before


async def test_admin_certificate_cannot_pose_as_an_agent(controller: Controller) -> None:
    async with admin_channel(controller) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await dgrpc.DispatcherStub(channel).Register(dpb.RegisterRequest(), timeout=5)
    assert status_of(caught) == grpc.StatusCode.PERMISSION_DENIED


async def test_agent_may_open_only_its_own_session(
        controller: Controller, sim_nodes: SimulatedCluster) -> None:
    mine, other = sim_nodes.nodes[0], sim_nodes.nodes[1]
    assert mine.keeper is not None
    async with channels.client_channel(f"127.0.0.1:{controller.port}",
                                       mine.keeper.identity) as channel:
        dispatcher = dgrpc.DispatcherStub(channel)
        stream = dispatcher.Session(dpb.SessionRequest(node_id=other.session.node_id))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stream.read()
        assert status_of(caught) == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await dispatcher.Heartbeat(dpb.HeartbeatRequest(
                node_id=other.session.node_id, session_id=other.session.session_id), timeout=5)
        assert status_of(caught) == grpc.StatusCode.PERMISSION_DENIED


async def test_agent_cannot_report_status_of_another_nodes_task(
        controller: Controller, control: cgrpc.ControlAsyncStub,
        sim_nodes: SimulatedCluster) -> None:
    service = (await control.CreateService(cpb.CreateServiceRequest(spec=web_spec()))).service

    def tasks() -> list[pb.Task]:
        return list(controller.store.cache.tasks_by_service.get(service.id, {}).values())

    await eventually(lambda: sum(t.status.state == pb.RUNNING for t in tasks()) == 3)
    mine = sim_nodes.nodes[0]
    assert mine.keeper is not None
    own = [t for t in tasks() if t.node_id == mine.session.node_id]
    foreign = [t for t in tasks() if t.node_id != mine.session.node_id]
    assert own
    assert foreign
    before = await snapshot(controller)
    failed = pb.TaskStatus(state=pb.FAILED, message="forged")
    async with channels.client_channel(f"127.0.0.1:{controller.port}",
                                       mine.keeper.identity) as channel:
        dispatcher = dgrpc.DispatcherStub(channel)
        for node_id in (mine.session.node_id, foreign[0].node_id):
            request = dpb.UpdateTaskStatusRequest(
                node_id=node_id, session_id=mine.session.session_id,
                # Its own task first: a refused batch must not apply any of it.
                updates=[dpb.TaskStatusUpdate(task_id=own[0].id, status=failed),
                         dpb.TaskStatusUpdate(task_id=foreign[0].id, status=failed)])
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await dispatcher.UpdateTaskStatus(request, timeout=5)
            assert status_of(caught) == grpc.StatusCode.PERMISSION_DENIED
    await asyncio.sleep(0.2)  # past the dispatcher's status flush
    assert await snapshot(controller) == before
    assert all(t.status.state == pb.RUNNING for t in tasks())


# ------------------------------------------------------------ the wire


async def test_plaintext_and_garbage_on_the_ports_are_refused(
        controller: Controller, control: cgrpc.ControlAsyncStub) -> None:
    before = await snapshot(controller)
    for port in (controller.port, controller.join_port):
        for payload in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(4096),
                        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(64)):
            answer = await asyncio.to_thread(_send_raw, port, payload)
            assert not answer.startswith(b"HTTP/"), answer[:80]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{controller.port}") as plain:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await cgrpc.ControlStub(plain).ListNodes(cpb.ListNodesRequest(), timeout=5)
    assert status_of(caught) == grpc.StatusCode.UNAVAILABLE
    # No client certificate at all on the mutual-TLS port.
    async with channels.client_channel(f"127.0.0.1:{controller.port}", None,
                                       ca_pem=controller.pki.ca.cert_pem) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await cgrpc.ControlStub(anonymous).ListNodes(cpb.ListNodesRequest(), timeout=5)
    assert status_of(caught) == grpc.StatusCode.UNAVAILABLE
    # The join port serves nothing but CAJoin.
    async with channels.client_channel(controller.join_addr, None,
                                       ca_pem=controller.pki.ca.cert_pem) as joining:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await cgrpc.ControlStub(joining).ListNodes(cpb.ListNodesRequest(), timeout=5)
    assert status_of(caught) == grpc.StatusCode.UNIMPLEMENTED
    # Still serving, nothing written.
    await control.ListNodes(cpb.ListNodesRequest(), timeout=5)
    assert await snapshot(controller) == before


def _send_raw(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        chunks = []
        try:
            while chunk := sock.recv(4096):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


async def test_oversized_and_malformed_messages(controller: Controller,
                                                control: cgrpc.ControlAsyncStub) -> None:
    before = await snapshot(controller)
    spec = web_spec()
    spec.labels["big"] = "x" * (17 * 1024 * 1024)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await control.CreateService(cpb.CreateServiceRequest(spec=spec), timeout=20)
    assert status_of(caught) == grpc.StatusCode.RESOURCE_EXHAUSTED
    async with admin_channel(controller) as channel:
        raw = channel.unary_unary("/swarm.v1.Control/CreateService",  # raw bytes out and in
                                  request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw(b"\xff\xff\xff\xff garbage", timeout=5)
    # grpc.aio fails a request it cannot parse with UNKNOWN ("Wire format was
    # corrupt") before any handler runs.
    assert status_of(caught) == grpc.StatusCode.UNKNOWN
    assert "corrupt" in (caught.value.details() or "")
    assert await snapshot(controller) == before


@pytest.fixture
async def insecure_controller(etcd_server: EtcdServer,
                              etcd_prefix: str) -> AsyncIterator[Controller]:
    instance = Controller(controller_config(etcd_server.endpoint, etcd_prefix, insecure=True))
    await instance.start()
    try:
        yield instance
    finally:
        await instance.stop()


async def test_insecure_mode_still_works_for_development(
        insecure_controller: Controller, caplog: pytest.LogCaptureFixture) -> None:
    addr = f"127.0.0.1:{insecure_controller.port}"
    nodes = SimulatedCluster([addr], 2, settings=FAST_SESSION)
    nodes.start()
    try:
        await nodes.wait_connected(timeout=15)
        async with grpc.aio.insecure_channel(addr) as channel:
            listed = await cgrpc.ControlStub(channel).ListNodes(cpb.ListNodesRequest())
        assert len(listed.nodes) == 2
        assert insecure_controller.join_port == 0
    finally:
        await nodes.stop()


async def test_node_rm_revocation_survives_a_controller_restart(
        etcd_server: EtcdServer, etcd_prefix: str, controller: Controller,
        control: cgrpc.ControlAsyncStub) -> None:
    cluster = sim_cluster(controller, 1, settings=FAST_SESSION)
    cluster.start()
    try:
        await cluster.wait_connected(timeout=15)
        node = cluster.nodes[0]
        assert node.keeper is not None
        identity = node.keeper.identity
    finally:
        await cluster.stop()
    await control.RemoveNode(cpb.RemoveNodeRequest(ref=identity.node_id, force=True))
    second = Controller(controller_config(etcd_server.endpoint, etcd_prefix))
    await second.start()
    try:
        assert second.pki.ca.cert == controller.pki.ca.cert  # loaded, not created anew
        assert identity.node_id in second.pki.revocations().node_ids
        async with channels.client_channel(f"127.0.0.1:{second.port}", identity) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await dgrpc.DispatcherStub(channel).Register(dpb.RegisterRequest(), timeout=5)
        assert status_of(caught) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await second.stop()


async def test_agents_renew_their_certificates_without_dropping_work(
        etcd_server: EtcdServer, etcd_prefix: str) -> None:
    config = controller_config(etcd_server.endpoint, etcd_prefix)
    # Certificates of a few seconds: renewal is due at once (min delay 1 s here).
    short = Controller(config.__class__(**{**config.__dict__, "ca": CASettings(
        kek=TEST_KEK, join_rate=1000.0, join_burst=1000,
        node_cert_validity=dt.timedelta(seconds=30))}))
    await short.start()
    nodes = sim_cluster(short, 2, settings=FAST_SESSION)
    try:
        nodes.start()
        await nodes.wait_connected(timeout=15)
        keepers = [node.keeper for node in nodes.nodes]
        assert all(keepers)
        first = {k.node_id: k.identity.cert.serial_number for k in keepers if k}
        renewals = [asyncio.create_task(k.renew_forever()) for k in keepers if k]
        try:
            await eventually(lambda: all(k is not None and k.renewals >= 1 for k in keepers),
                             timeout=15, message="renewals")
        finally:
            for task in renewals:
                task.cancel()
            await asyncio.gather(*renewals, return_exceptions=True)
        for keeper in keepers:
            assert keeper is not None
            assert keeper.identity.cert.serial_number != first[keeper.node_id]
            assert keeper.identity.role is pki.Role.WORKER
        async with admin_channel(short) as channel:
            control = cgrpc.ControlStub(channel)
            service = (await control.CreateService(
                cpb.CreateServiceRequest(spec=web_spec(replicas=2)))).service
        await eventually(lambda: sum(
            t.status.state == pb.RUNNING
            for t in short.store.cache.tasks_by_service.get(service.id, {}).values()) == 2)
        assert sorted(short.store.cache.nodes) == sorted(first)  # same nodes, no re-registration
    finally:
        await nodes.stop()
        await short.stop()


async def test_every_controller_shares_one_data_key_and_an_old_cluster_gets_one(
        etcd_server: EtcdServer, etcd_prefix: str, controller: Controller) -> None:
    """The data key that seals secrets is made once, with the CA, and kept
    in etcd only sealed under the KEK; a cluster made before data keys
    existed gets one from the first controller that starts."""
    state = controller.pki.state()
    assert state.sealed_data_key
    assert controller.pki.data_key.key not in state.sealed_data_key
    sealed = controller.pki.data_key.seal(b"payload", context="test/1")
    # A cluster without a data key, as one made by an older version.
    cluster = pb.Cluster()
    cluster.CopyFrom(controller.store.cache.clusters[CLUSTER_ID])
    cluster.ca.ClearField("sealed_data_key")
    await controller.store.commit([Update(cluster)])
    second = Controller(controller_config(etcd_server.endpoint, etcd_prefix))
    await second.start()
    try:
        assert second.pki.data_key.open(second.pki.data_key.seal(b"x", context="c"),
                                        context="c") == b"x"
        assert second.pki.state().sealed_data_key  # written back for every controller
        # A new key: what the old one sealed does not open with it.
        with pytest.raises(pki.SealedDataError):
            second.pki.data_key.open(sealed, context="test/1")
    finally:
        await second.stop()
    third = Controller(controller_config(etcd_server.endpoint, etcd_prefix))
    await third.start()
    try:
        assert third.pki.data_key == second.pki.data_key  # loaded, not made again
    finally:
        await third.stop()


async def test_a_follower_relays_logs_as_itself_after_checking_the_caller(
        controller: Controller, etcd_server: EtcdServer, etcd_prefix: str,
        sim_nodes: SimulatedCluster) -> None:
    """ServiceLogs is the leader's; a follower checks the caller as for any
    call, then relays over the controllers' own mutual TLS."""
    follower = Controller(controller_config(etcd_server.endpoint, etcd_prefix))
    await follower.start()
    try:
        assert not follower.logs.leading
        async with admin_channel(controller) as channel:
            await cgrpc.ControlStub(channel).CreateService(
                cpb.CreateServiceRequest(spec=web_spec(replicas=0)), timeout=5)
        await eventually(lambda: any(s.spec.name == "web"
                                     for s in follower.store.cache.services.values()))
        async with admin_channel(follower) as channel:
            relayed = [message async for message in cgrpc.ControlStub(channel).ServiceLogs(
                lpb.ServiceLogsRequest(service="web"), timeout=10)]
        assert [list(m.node_errors) for m in relayed if m.node_errors] == []
        keeper = sim_nodes.nodes[0].keeper
        assert keeper is not None
        async with channels.client_channel(f"127.0.0.1:{follower.port}",
                                           keeper.identity) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in cgrpc.ControlStub(channel).ServiceLogs(
                        lpb.ServiceLogsRequest(service="web"), timeout=10):
                    pass
            assert status_of(caught) == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await follower.stop()
