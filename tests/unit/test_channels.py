"""Mutual TLS over loopback with real certificates: a tiny grpc.aio server
whose one method answers with the caller's verified identity, and clients
that present good, missing, expired, foreign and revoked certificates."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from swarm.api import channels, pki
from swarm.api.pki import Role

CLUSTER = "cluster-a"
WHO = "/test.Whoami/Who"
JOIN = "/test.Join/Join"
TIMEOUT = 5.0

Handler = Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]]


@dataclass
class Cluster:
    ca: pki.CertificateAuthority
    controller: pki.NodeIdentity
    worker: pki.NodeIdentity
    admin: pki.NodeIdentity
    worker_token: pki.JoinToken
    controller_token: pki.JoinToken

    def identity(self, node_id: str, role: Role, **kwargs: Any) -> pki.NodeIdentity:
        return pki.issue_identity(self.ca, node_id=node_id, role=role, cluster_id=CLUSTER, **kwargs)


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    ca = pki.create_root_ca(CLUSTER)
    # No SAN for 127.0.0.1: clients verify the fixed name swarm-controller.
    controller = pki.issue_identity(ca, node_id="ctl1", role=Role.MANAGER, cluster_id=CLUSTER)
    return Cluster(ca=ca, controller=controller,
                   worker=pki.issue_identity(ca, node_id="node1", role=Role.WORKER, cluster_id=CLUSTER),
                   admin=pki.issue_admin_identity(ca, cluster_id=CLUSTER),
                   worker_token=pki.new_join_token(ca.cert),
                   controller_token=pki.new_join_token(ca.cert))


@dataclass
class Server:
    """A controller stand-in: Who on the mutual-TLS port, Join on the join port."""

    cluster: Cluster
    identity: pki.NodeIdentity
    allowed: frozenset[Role] = frozenset(Role)
    revocations: pki.Revocations = field(default_factory=pki.Revocations)
    port: int = 0
    join_port: int = 0

    async def who(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        peer = await channels.authorize(context, self.allowed, self.revocations)
        return f"{peer.node_id}/{peer.role.value}/{peer.cluster_id}/{len(request)}".encode()

    async def join(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        # The shape of the CA's join call: token line, then the CSR.
        token_text, _, csr = request.partition(b"\n")
        try:
            token = pki.parse_join_token(token_text.decode())
            role = pki.role_for_token(token, self.cluster.ca.cert, worker=self.cluster.worker_token,
                                      controller=self.cluster.controller_token)
        except pki.InvalidJoinToken as error:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(error))
        cert = pki.sign_node_certificate(self.cluster.ca, csr, node_id="joined1", role=role,
                                         cluster_id=CLUSTER)
        return pki.cert_to_pem(cert)


def _handlers(service: str, method: str, handler: Handler) -> grpc.GenericRpcHandler[Any, Any]:
    return grpc.method_handlers_generic_handler(
        service, {method: grpc.unary_unary_rpc_method_handler(handler)})


async def _start(server_state: Server, settings: channels.LinkSettings | None = None,
                 *, insecure: bool = False) -> AsyncIterator[Server]:
    server = channels.new_server(settings)
    server.add_generic_rpc_handlers([_handlers("test.Whoami", "Who", server_state.who)])
    server_state.port = channels.listen(server, "127.0.0.1:0", lambda: server_state.identity,
                                        insecure=insecure)
    join_server = channels.new_server(settings)
    join_server.add_generic_rpc_handlers([_handlers("test.Join", "Join", server_state.join)])
    server_state.join_port = channels.join_listen(join_server, "127.0.0.1:0",
                                                  lambda: server_state.identity)
    await server.start()
    await join_server.start()
    try:
        yield server_state
    finally:
        await server.stop(None)
        await join_server.stop(None)


@pytest.fixture
async def server(cluster: Cluster) -> AsyncIterator[Server]:
    async for running in _start(Server(cluster, cluster.controller)):
        yield running


async def _who(port: int, identity: pki.NodeIdentity | None, *, ca_pem: bytes | None = None,
               insecure: bool = False, payload: bytes = b"",
               settings: channels.LinkSettings | None = None) -> str:
    async with channels.client_channel(f"127.0.0.1:{port}", identity, ca_pem=ca_pem,
                                       insecure=insecure, settings=settings) as channel:
        reply: bytes = await channel.unary_unary(WHO, None, None)(payload, timeout=TIMEOUT)
        return reply.decode()


async def _refused(call: Awaitable[str]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


# -------------------------------------------------------------- accepted


async def test_node_certificate_connects_and_server_reads_its_identity(
        server: Server, cluster: Cluster) -> None:
    assert await _who(server.port, cluster.worker) == f"node1/swarm-worker/{CLUSTER}/0"
    assert await _who(server.port, cluster.admin) == f"admin/swarm-admin/{CLUSTER}/0"
    # Controller to controller: the same certificate is client and server.
    assert await _who(server.port, cluster.controller) == f"ctl1/swarm-manager/{CLUSTER}/0"


async def test_blocking_channel_for_swarmctl(server: Server, cluster: Cluster) -> None:
    def call() -> bytes:
        with channels.blocking_client_channel(f"127.0.0.1:{server.port}", cluster.admin) as channel:
            reply: bytes = channel.unary_unary(WHO, None, None)(b"", timeout=TIMEOUT)
            return reply

    assert await asyncio.to_thread(call) == f"admin/swarm-admin/{CLUSTER}/0".encode()


# --------------------------------------------------- refused at handshake


async def test_client_without_certificate_is_refused(server: Server, cluster: Cluster) -> None:
    error = await _refused(_who(server.port, None, ca_pem=cluster.ca.cert_pem))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_expired_certificate_is_refused(server: Server, cluster: Cluster) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    expired = cluster.identity("node1", Role.WORKER, now=past, validity=dt.timedelta(days=1))
    error = await _refused(_who(server.port, expired))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_certificate_from_another_ca_is_refused(server: Server) -> None:
    other = pki.create_root_ca(CLUSTER)  # same cluster name, different key
    foreign = pki.issue_identity(other, node_id="node1", role=Role.WORKER, cluster_id=CLUSTER)
    error = await _refused(_who(server.port, foreign))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_client_refuses_a_server_of_another_cluster(cluster: Cluster) -> None:
    other = pki.create_root_ca("cluster-b")
    impostor = pki.issue_identity(other, node_id="ctl1", role=Role.MANAGER, cluster_id="cluster-b")
    async for running in _start(Server(cluster, impostor)):
        error = await _refused(_who(running.port, cluster.worker))
        assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_worker_certificate_cannot_serve(cluster: Cluster) -> None:
    with pytest.raises(pki.PKIError, match="cannot serve"):
        channels.server_credentials(lambda: cluster.worker)


async def test_plaintext_client_on_the_tls_port_is_refused(server: Server) -> None:
    error = await _refused(_who(server.port, None, insecure=True))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_random_bytes_and_http_do_not_hurt_the_server(server: Server, cluster: Cluster) -> None:
    def poke(data: bytes) -> None:
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
            sock.sendall(data)
            sock.settimeout(TIMEOUT)
            try:
                while sock.recv(4096):
                    pass
            except OSError:
                pass  # reset by the server: fine

    for data in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 4):
        await asyncio.to_thread(poke, data)
    assert await _who(server.port, cluster.worker) == f"node1/swarm-worker/{CLUSTER}/0"


# -------------------------------------------- refused by authorization


async def test_revoked_serial_and_removed_node_are_refused(server: Server, cluster: Cluster) -> None:
    server.revocations = pki.Revocations(serials=frozenset({cluster.worker.cert.serial_number}))
    error = await _refused(_who(server.port, cluster.worker))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "has been revoked" in (error.details() or "")
    # A fresh certificate for the same node passes until the node is removed.
    fresh = cluster.identity("node1", Role.WORKER)
    assert await _who(server.port, fresh) == f"node1/swarm-worker/{CLUSTER}/0"
    server.revocations = pki.Revocations(node_ids=frozenset({"node1"}))
    error = await _refused(_who(server.port, fresh))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "removed from the cluster" in (error.details() or "")


async def test_role_not_allowed_is_permission_denied(server: Server, cluster: Cluster,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    server.allowed = frozenset({Role.ADMIN, Role.MANAGER})  # e.g. the control API
    with caplog.at_level(logging.WARNING, logger="swarm.api.channels"):
        error = await _refused(_who(server.port, cluster.worker))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "swarm-worker node1 may not call this (needs swarm-admin, swarm-manager)"
    assert "refused call from" in caplog.text
    assert await _who(server.port, cluster.admin) == f"admin/swarm-admin/{CLUSTER}/0"


async def test_insecure_call_has_no_identity(cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="swarm.api.channels"):
        async for running in _start(Server(cluster, cluster.controller), insecure=True):
            error = await _refused(_who(running.port, None, insecure=True))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert caplog.text.count("INSECURE") == 2  # the server and the channel both warn


# ------------------------------------------------------------ limits


async def test_oversized_message_is_refused(cluster: Cluster) -> None:
    settings = channels.LinkSettings(max_message_bytes=4096)
    async for running in _start(Server(cluster, cluster.controller), settings):
        assert (await _who(running.port, cluster.worker, payload=b"x" * 1000)).endswith("/1000")
        # Refused by the server's receive limit (the default client allows it).
        error = await _refused(_who(running.port, cluster.worker, payload=b"x" * 10_000))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # And by the client's own send limit.
        error = await _refused(_who(running.port, cluster.worker, payload=b"x" * 10_000,
                                    settings=settings))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# --------------------------------------------------- joining and renewal


async def _join(server: Server, token_text: str) -> pki.NodeIdentity:
    """What a joining agent does, in order; nothing secret is sent before the
    CA has been checked against the token."""
    token = pki.parse_join_token(token_text)
    offered = await asyncio.to_thread(channels.fetch_offered_chain, f"127.0.0.1:{server.port}")
    ca_cert = pki.find_ca_for_token(offered, token)
    key = pki.generate_key()
    ca_pem = pki.cert_to_pem(ca_cert)
    async with channels.client_channel(f"127.0.0.1:{server.join_port}", None,
                                       ca_pem=ca_pem) as channel:
        cert_pem: bytes = await channel.unary_unary(JOIN, None, None)(
            f"{token}\n".encode() + pki.make_csr(key), timeout=TIMEOUT)
    pki.verify_issued_by(pki.cert_from_pem(cert_pem), ca_cert)
    return pki.NodeIdentity(key_pem=pki.key_to_pem(key), cert_pem=cert_pem, ca_pem=ca_pem)


async def test_join_with_token_then_mutual_tls(server: Server, cluster: Cluster) -> None:
    identity = await _join(server, str(cluster.worker_token))
    assert (identity.node_id, identity.role) == ("joined1", Role.WORKER)
    assert await _who(server.port, identity) == f"joined1/swarm-worker/{CLUSTER}/0"
    manager = await _join(server, str(cluster.controller_token))
    assert manager.role is Role.MANAGER


async def test_join_refused_for_wrong_secret_or_foreign_ca(server: Server, cluster: Cluster) -> None:
    wrong_secret = pki.JoinToken(cluster.worker_token.ca_digest, pki.new_token_secret())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _join(server, str(wrong_secret))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "matches neither" in (caught.value.details() or "")
    # A token for another cluster: the node stops before sending its secret.
    other = pki.create_root_ca(CLUSTER)
    foreign = pki.JoinToken(pki.ca_digest(other.cert), cluster.worker_token.secret)
    with pytest.raises(pki.CAMismatch):
        await _join(server, str(foreign))


async def test_renewed_server_certificate_is_used_for_new_connections(
        server: Server, cluster: Cluster) -> None:
    async def served_serial() -> int:
        chain = await asyncio.to_thread(channels.fetch_offered_chain, f"127.0.0.1:{server.port}")
        return pki.cert_from_pem(chain[0]).serial_number

    assert await served_serial() == cluster.controller.cert.serial_number
    renewed = cluster.identity("ctl1", Role.MANAGER)
    server.identity = renewed
    assert await served_serial() == renewed.cert.serial_number
    assert await _who(server.port, cluster.worker) == f"node1/swarm-worker/{CLUSTER}/0"


# ------------------------------------------------ one policy per server


def test_roles_for_method_prefers_the_method_and_denies_by_default() -> None:
    policy = {"pkg.Svc": {Role.WORKER}, "/pkg.Svc/Admin": {Role.ADMIN}}
    assert channels.roles_for_method(policy, "/pkg.Svc/Get") == {Role.WORKER}
    assert channels.roles_for_method(policy, "/pkg.Svc/Admin") == {Role.ADMIN}
    assert channels.roles_for_method(policy, "/pkg.Other/Get") == frozenset()


def test_control_plane_policy_names_real_services() -> None:
    from swarm.api.v1 import control_pb2, dispatcher_pb2
    found = [service for module in (control_pb2, dispatcher_pb2)
             for service in module.DESCRIPTOR.services_by_name.values()]
    services = {service.full_name for service in found}
    methods = {f"/{service.full_name}/{method.name}" for service in found
               for method in service.methods}
    entries = set(channels.CONTROL_PLANE_POLICY)
    assert {e for e in entries if not e.startswith("/")} == services
    assert {e for e in entries if e.startswith("/")} <= methods
    # Controller to controller only: a worker's certificate cannot report nodes alive.
    assert channels.roles_for_method(channels.CONTROL_PLANE_POLICY,
                                     "/swarm.v1.Dispatcher/ReportAlive") == {Role.MANAGER}
    # ...nor report drains (controller/drain.py).
    assert channels.roles_for_method(channels.CONTROL_PLANE_POLICY,
                                     "/swarm.v1.Dispatcher/ReportDrained") == {Role.MANAGER}


@dataclass
class Guarded:
    port: int
    revocations: pki.Revocations = field(default_factory=pki.Revocations)


@pytest.fixture
async def guarded(cluster: Cluster) -> AsyncIterator[Guarded]:
    async def who(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        peer = pki.peer_identity(context)  # the interceptor already vouched for it
        assert peer is not None
        return peer.node_id.encode()

    async def count(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        for number in range(3):
            yield str(number).encode()

    state = Guarded(port=0)
    policy = {"test.Whoami": {Role.WORKER, Role.MANAGER}, "/test.Whoami/Admin": {Role.ADMIN}}
    server = channels.new_server(interceptors=[
        channels.AuthInterceptor(policy, lambda: state.revocations, cluster_id=CLUSTER)])
    server.add_generic_rpc_handlers([
        grpc.method_handlers_generic_handler("test.Whoami", {
            "Who": grpc.unary_unary_rpc_method_handler(who),
            "Admin": grpc.unary_unary_rpc_method_handler(who),
            "Count": grpc.unary_stream_rpc_method_handler(count),
        }),
        _handlers("test.Other", "Ping", who),
    ])
    state.port = channels.listen(server, "127.0.0.1:0", lambda: cluster.controller)
    await server.start()
    try:
        yield state
    finally:
        await server.stop(None)


async def _call(port: int, identity: pki.NodeIdentity, method: str) -> list[bytes]:
    async with channels.client_channel(f"127.0.0.1:{port}", identity) as channel:
        if method.endswith("/Count"):
            return [reply async for reply in channel.unary_stream(method, None, None)(b"", timeout=TIMEOUT)]
        return [await channel.unary_unary(method, None, None)(b"", timeout=TIMEOUT)]


async def _status(call: Awaitable[list[bytes]]) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code()


async def test_interceptor_applies_the_policy_to_every_call(guarded: Guarded, cluster: Cluster) -> None:
    worker, admin = cluster.worker, cluster.admin
    assert await _call(guarded.port, worker, "/test.Whoami/Who") == [b"node1"]
    assert await _call(guarded.port, worker, "/test.Whoami/Count") == [b"0", b"1", b"2"]
    assert await _call(guarded.port, admin, "/test.Whoami/Admin") == [b"admin"]
    denied = grpc.StatusCode.PERMISSION_DENIED
    assert await _status(_call(guarded.port, worker, "/test.Whoami/Admin")) == denied
    assert await _status(_call(guarded.port, admin, "/test.Whoami/Who")) == denied
    assert await _status(_call(guarded.port, admin, "/test.Whoami/Count")) == denied
    # A service the policy does not name is closed to everyone.
    assert await _status(_call(guarded.port, worker, "/test.Other/Ping")) == denied


async def test_interceptor_refuses_revoked_nodes(guarded: Guarded, cluster: Cluster) -> None:
    guarded.revocations = pki.Revocations(node_ids=frozenset({"node1"}))
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    assert await _status(_call(guarded.port, cluster.worker, "/test.Whoami/Who")) == unauthenticated
    assert await _status(_call(guarded.port, cluster.worker, "/test.Whoami/Count")) == unauthenticated


async def test_interceptor_refuses_another_clusters_certificate_from_a_shared_ca(
        guarded: Guarded, cluster: Cluster) -> None:
    # An external CA may sign for several clusters: the handshake passes, the O field does not.
    stranger = pki.issue_identity(cluster.ca, node_id="node9", role=Role.WORKER, cluster_id="cluster-b")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(guarded.port, stranger, "/test.Whoami/Who")
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "for cluster 'cluster-b'" in (caught.value.details() or "")
