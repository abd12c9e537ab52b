"""The one place gRPC links get their transport security and limits.

Every server port and every client channel in the project is made here, so
mutual TLS, message size limits and keepalives are the same on every link:

- `new_server` + `listen`: a grpc.aio server whose port requires and verifies
  a client certificate issued by the cluster CA (or, with `insecure=True`,
  plaintext and a loud warning).
- `client_channel` / `blocking_client_channel`: grpc.aio and blocking
  channels presenting the node's certificate and verifying the controller's.
- `join_listen` + `fetch_offered_chain`: what a node without a certificate
  needs to join (see "Joining" below).
- `authorize`: reads the verified peer of a call, refuses revoked
  certificates and roles not allowed, with the right gRPC status;
  `AuthInterceptor` does it for every call of a server from one policy
  (service or method -> roles), denying what the policy does not name.

Joining. gRPC's Python TLS cannot "request a client certificate but not
require it": with require_client_auth=False the server does not ask for one
at all, so the mutual-TLS port cannot also serve nodes that have no
certificate yet. The CA's join service therefore gets a port of its own with
server-only TLS (`join_listen`). A joining node first reads the certificates
the controller presents in its handshake (`fetch_offered_chain`, unverified
on purpose), keeps the one whose digest the join token pins
(`pki.find_ca_for_token`), and only then opens a channel that verifies the
controller against that CA and sends its token and CSR
(`client_channel(target, None, ca_pem=...)`). The token's secret thus never
leaves the node before the CA has been checked.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import inspect
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import grpc

from .certfiles import CONTROLLER_SERVER_NAME, PemFiles, Role

if TYPE_CHECKING:  # pki (cryptography) is loaded by servers only: a running agent never is one
    from .pki import NodeIdentity, PeerIdentity, Revocations

log = logging.getLogger(__name__)

ChannelOptions = list[tuple[str, Any]]
IdentitySource = Callable[[], "NodeIdentity"]
"""Returns the node's current identity; called on every new TLS connection a
server accepts (in a gRPC core thread), so it must be cheap and must not
block: hand back an object held in memory and replaced by the renewal loop."""


@dataclass(frozen=True)
class LinkSettings:
    # Bounded messages: a malformed or hostile peer cannot make us allocate
    # more than this per message. Assignment sets for large nodes fit easily.
    max_message_bytes: int = 16 * 1024 * 1024
    # Each side pings after this much idle time and drops the link if no
    # answer comes within keepalive_timeout. This finds dead peers on quiet
    # long-lived streams (an agent's session between assignments, a server's
    # stream to a vanished client) and keeps NAT/conntrack entries alive;
    # agent liveness itself is the dispatcher's heartbeat, which is faster.
    keepalive_time_s: float = 30.0
    keepalive_timeout_s: float = 10.0
    # Calls a server lets wait for its event loop (see server_options).
    max_pending_calls: int = 100_000
    # How long such a call may wait before gRPC core cancels it (seconds).
    max_waiting_s: int = 600


def _common_options(settings: LinkSettings) -> ChannelOptions:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", int(settings.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def server_options(settings: LinkSettings) -> ChannelOptions:
    return [
        *_common_options(settings),
        # Accept the clients' keepalive pings: by default a server answers
        # pings more often than every 5 min with GOAWAY "too_many_pings".
        # Half the client's period leaves room for timer jitter while the
        # default strike limit still stops a peer that floods pings.
        ("grpc.http2.min_ping_interval_without_data_ms", int(settings.keepalive_time_s * 500)),
        # Calls wait in gRPC core until the asyncio server takes them, one at
        # a time, from its event loop. Past 1,000 waiting (the default) core
        # cancels the newest (CANCELLED, no detail): at 2,000 nodes a busy
        # controller cancelled thousands of heartbeats, status reports and
        # session opens, every one an agent dropping its session and opening
        # a new one. A waiting call costs little and still ends at its own
        # deadline, so the bound is a guard against floods, not a queue limit.
        ("grpc.server.max_pending_requests", settings.max_pending_calls),
        ("grpc.server.max_pending_requests_hard_limit", settings.max_pending_calls),
        # And past 30 s of waiting (core's default), core cancels a call
        # whatever its own deadline (CANCELLED, no detail): at 5,000 nodes,
        # whose heartbeats wait up to 60 s for an answer, 8,733 sessions of
        # live agents ended so in one run, each opened again at once. Let
        # a waiting call end at its own deadline instead.
        ("grpc.server_max_unrequested_time_in_server", settings.max_waiting_s),
    ]


def client_options(settings: LinkSettings, *, server_name: str | None) -> ChannelOptions:
    options = [*_common_options(settings), ("grpc.http2.max_pings_without_data", 0)]
    if server_name:
        # Controllers are dialled by whatever address the operator or the
        # leader hint gave (an IP, a DNS name, 127.0.0.1 in tests), which the
        # certificate cannot list in advance. Every controller certificate
        # instead carries the fixed SAN `swarm-controller`, and only
        # controller certificates do, so verifying that name against the
        # cluster CA (the only trusted root) proves "a controller of this
        # cluster", which is exactly what a client needs to know.
        options.append(("grpc.ssl_target_name_override", server_name))
    return options


# ---------------------------------------------------------------- servers


def new_server(settings: LinkSettings | None = None, *,
               interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = ()) -> grpc.aio.Server:
    """A grpc.aio server with the project's limits; add ports with `listen`."""
    return grpc.aio.server(options=server_options(settings or LinkSettings()),
                           interceptors=list(interceptors))


def _certificate_configuration(identity: NodeIdentity) -> grpc.ServerCertificateConfiguration:
    # The CA certificate goes into the presented chain as well as into the
    # trusted roots: joining nodes read it from the handshake
    # (fetch_offered_chain) and check it against their token.
    return grpc.ssl_server_certificate_configuration(
        [(identity.key_pem, identity.cert_pem + identity.ca_pem)],
        root_certificates=identity.ca_pem)


def server_credentials(current: IdentitySource, *,
                       require_client_auth: bool = True) -> grpc.ServerCredentials:
    """TLS credentials that follow the node's identity: gRPC asks `current`
    before each handshake, so a renewed certificate (or a new CA bundle) is
    used for new connections without restarting the server, and established
    connections carry on."""
    from .pki import PKIError

    initial = current()
    if initial.role is not Role.MANAGER:
        raise PKIError(f"a {initial.role} certificate cannot serve: only controller "
                       "(swarm-manager) certificates carry the server name and serverAuth usage")
    served = [initial]

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        # Runs in a gRPC core thread: an exception here would fail the
        # handshake, so keep serving the previous certificate instead.
        try:
            latest = current()
            if latest is served[0]:
                return None
            served[0] = latest
            log.info("serving renewed certificate for %s (expires %s)", latest.node_id,
                     latest.cert.not_valid_after_utc)
            return _certificate_configuration(latest)
        except Exception:
            log.exception("cannot load the renewed server certificate; keeping the current one")
            return None

    return grpc.dynamic_ssl_server_credentials(
        # grpc-stubs types the fetcher without its documented None ("no change").
        _certificate_configuration(initial), fetch,  # type: ignore[arg-type]
        require_client_authentication=require_client_auth)


def _warn_insecure(what: str) -> None:
    log.warning("INSECURE: %s uses plaintext gRPC without authentication (--insecure). Anyone who "
                "can reach it can control the cluster; use only on a trusted development host.",
                what)


def listen(server: grpc.aio.Server, address: str, identity: IdentitySource | None, *,
           insecure: bool = False) -> int:
    """Add a mutual-TLS port (or, with insecure=True, a plaintext one) and
    return the bound port number. Raises OSError if it cannot bind."""
    if insecure:
        _warn_insecure(f"the server on {address}")
        port = server.add_insecure_port(address)
    else:
        if identity is None:
            raise ValueError(f"cannot listen on {address} with TLS without a node identity "
                             "(pass insecure=True for a plaintext development server)")
        port = server.add_secure_port(address, server_credentials(identity))
    if not port:
        raise OSError(f"cannot listen on {address}")
    return port


def join_listen(server: grpc.aio.Server, address: str, identity: IdentitySource) -> int:
    """Add the join port: server-only TLS, for nodes that have no certificate
    yet. Serve only the CA's join service on a server with this port: every
    call arriving here is unauthenticated by construction."""
    port = server.add_secure_port(address, server_credentials(identity, require_client_auth=False))
    if not port:
        raise OSError(f"cannot listen on {address}")
    return port


# ---------------------------------------------------------------- clients


def channel_credentials(identity: PemFiles | None, *,
                        ca_pem: bytes | None = None) -> grpc.ChannelCredentials:
    """Verify the server against the cluster CA; present the node's
    certificate if it has one (a joining node does not)."""
    roots = ca_pem if ca_pem is not None else (identity.ca_pem if identity else None)
    if roots is None:
        raise ValueError("a TLS channel needs the cluster CA: pass a node identity or ca_pem")
    if identity is None:
        return grpc.ssl_channel_credentials(root_certificates=roots)
    return grpc.ssl_channel_credentials(root_certificates=roots, private_key=identity.key_pem,
                                        certificate_chain=identity.cert_pem)


def client_channel(target: str, identity: PemFiles | None, *, insecure: bool = False,
                   ca_pem: bytes | None = None, settings: LinkSettings | None = None,
                   server_name: str = CONTROLLER_SERVER_NAME) -> grpc.aio.Channel:
    """A grpc.aio channel to a controller. With an identity: mutual TLS. With
    identity None and ca_pem: server-only TLS (joining). insecure=True:
    plaintext, with a warning. Channels keep the credentials they were made
    with: after a renewal, make new channels."""
    settings = settings or LinkSettings()
    if insecure:
        _warn_insecure(f"the channel to {target}")
        return grpc.aio.insecure_channel(target, options=client_options(settings, server_name=None))
    return grpc.aio.secure_channel(target, channel_credentials(identity, ca_pem=ca_pem),
                                   options=client_options(settings, server_name=server_name))


def blocking_client_channel(target: str, identity: PemFiles | None, *, insecure: bool = False,
                            ca_pem: bytes | None = None, settings: LinkSettings | None = None,
                            server_name: str = CONTROLLER_SERVER_NAME) -> grpc.Channel:
    """As client_channel, for blocking code (swarmctl)."""
    settings = settings or LinkSettings()
    if insecure:
        _warn_insecure(f"the channel to {target}")
        return grpc.insecure_channel(target, options=client_options(settings, server_name=None))
    return grpc.secure_channel(target, channel_credentials(identity, ca_pem=ca_pem),
                               options=client_options(settings, server_name=server_name))


def fetch_offered_chain(target: str, *, timeout: float = 10.0) -> list[bytes]:
    """The certificates (PEM) a controller presents in its TLS handshake,
    NOT verified: the caller must pick the CA with pki.find_ca_for_token
    before trusting anything. Blocking; run it in a thread from async code.

    Works against the mutual-TLS port as well as the join port: with TLS 1.3
    the client has the server's certificates and finishes its side of the
    handshake before the server judges the (missing) client certificate."""
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {target!r}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Deliberately unverified: authenticity comes from the token's digest.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols(["h2"])  # gRPC servers refuse TLS without ALPN h2
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as raw, \
            context.wrap_socket(raw, server_hostname=CONTROLLER_SERVER_NAME) as tls:
        return [_to_pem(entry) for entry in _unverified_chain(tls)]


def _unverified_chain(tls: ssl.SSLSocket) -> list[Any]:
    public = getattr(tls, "get_unverified_chain", None)  # Python >= 3.13
    if public is not None:
        return list(public())
    # Python 3.11/3.12 have the same call on the C-level object only.
    return list(getattr(tls, "_sslobj").get_unverified_chain() or [])  # noqa: B009


def _to_pem(entry: Any) -> bytes:
    if isinstance(entry, bytes):  # 3.13's public API gives DER
        return ssl.DER_cert_to_PEM_cert(entry).encode()
    pem: str = entry.public_bytes(ssl._ssl.ENCODING_PEM)  # type: ignore[attr-defined]
    return pem.encode()


# ---------------------------------------------------------- authorization


class CallerRefused(Exception):
    """A caller check_caller refuses: the status and details to abort with."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def check_caller(context: Any, roles: Collection[Role], revocations: Revocations, *,
                 cluster_id: str | None = None) -> PeerIdentity:
    """The verified caller of this RPC (a grpc.aio or a sync server's
    context), if it holds one of `roles` and is not revoked; otherwise
    CallerRefused: UNAUTHENTICATED without a valid, unrevoked certificate of
    this cluster, PERMISSION_DENIED for a role not allowed.

    Pass cluster_id when the CA may sign for several clusters (an external
    CA): the TLS handshake then proves only "signed by that CA"."""
    from .pki import PKIError, check_not_revoked, peer_identity

    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    try:
        peer = peer_identity(context)
    except PKIError as error:
        raise CallerRefused(unauthenticated, f"invalid client certificate: {error}") from error
    if peer is None:
        raise CallerRefused(unauthenticated,
                            "a client certificate issued by the cluster CA is required")
    if cluster_id is not None and peer.cluster_id != cluster_id:
        raise CallerRefused(unauthenticated, f"certificate of {peer.node_id} is for cluster "
                                             f"{peer.cluster_id!r}, not {cluster_id!r}")
    try:
        check_not_revoked(peer, revocations)
    except PKIError as error:
        raise CallerRefused(unauthenticated, str(error)) from error
    if peer.role not in roles:
        allowed = ", ".join(sorted(role.value for role in roles)) or "a role no certificate has"
        raise CallerRefused(grpc.StatusCode.PERMISSION_DENIED,
                            f"{peer.role.value} {peer.node_id} may not call this (needs {allowed})")
    return peer


async def authorize(context: grpc.aio.ServicerContext[Any, Any], roles: Collection[Role],
                    revocations: Revocations, *, cluster_id: str | None = None) -> PeerIdentity:
    """check_caller for a grpc.aio handler: a refused call is aborted and
    the refusal logged. Call it first thing in a handler; do not call it on
    an --insecure server, where no caller has an identity."""
    try:
        return check_caller(context, roles, revocations, cluster_id=cluster_id)
    except CallerRefused as refused:
        await _refuse(context, refused.code, refused.details)


async def _refuse(context: grpc.aio.ServicerContext[Any, Any], code: grpc.StatusCode,
                  details: str) -> NoReturn:
    log.warning("refused call from %s: %s: %s", context.peer(), code.name, details)
    await context.abort(code, details)


# Who may call what on the controllers' mutual-TLS port. Controllers are also
# nodes (they may run tasks), hence MANAGER on the dispatcher; the control API
# is for operators (ADMIN) and other controllers. Per-object rules (an agent
# opens only its own session, reports only its own tasks) belong to the
# servicers, which read the caller with pki.peer_identity(context).
CONTROL_PLANE_POLICY: Mapping[str, frozenset[Role]] = {
    "swarm.v1.Control": frozenset({Role.ADMIN, Role.MANAGER}),
    "swarm.v1.Dispatcher": frozenset({Role.WORKER, Role.MANAGER}),
    # Controller to controller (controller/dispatcher/liveness.py).
    "/swarm.v1.Dispatcher/ReportAlive": frozenset({Role.MANAGER}),
    # Controller to controller (controller/drain.py).
    "/swarm.v1.Dispatcher/ReportDrained": frozenset({Role.MANAGER}),
}


def roles_for_method(policy: Mapping[str, Collection[Role]], method: str) -> frozenset[Role]:
    """The roles allowed to call `method` ('/pkg.Service/Method'): an entry for
    the method itself wins over one for its service ('pkg.Service'); a method
    the policy does not name is allowed to nobody."""
    if method in policy:
        return frozenset(policy[method])
    service = method.lstrip("/").partition("/")[0]
    return frozenset(policy.get(service, ()))


Check = Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[object]]


if TYPE_CHECKING:  # generic in grpc-stubs only
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


Adapter = Callable[[Callable[..., Any]], Callable[..., Any]]


class HandlerInterceptor(_ServerInterceptor):
    """A server interceptor that wraps the behaviour of every known method;
    subclasses say how (`adapter`)."""

    @abc.abstractmethod
    def adapter(self, method: str) -> Adapter:
        """How to wrap the behaviour of `method` (a gRPC full method name)."""

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         Awaitable[grpc.RpcMethodHandler[Any, Any]]],
            handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED
            return handler
        return rewrap(handler, self.adapter(handler_call_details.method))


class AuthInterceptor(HandlerInterceptor):
    """Authorizes every call before its handler runs (so a refused call
    changes nothing): a verified, unrevoked cluster certificate whose role
    the policy allows for the method. `revocations` is asked on each call;
    give it the controller's in-memory view, kept current from etcd.

    Install it only on mutual-TLS servers: on an --insecure server no caller
    has a certificate and every call would be refused."""

    def __init__(self, policy: Mapping[str, Collection[Role]],
                 revocations: Callable[[], Revocations], *, cluster_id: str | None = None) -> None:
        self._policy = dict(policy)
        self._revocations = revocations
        self._cluster_id = cluster_id

    def adapter(self, method: str) -> Adapter:
        roles = roles_for_method(self._policy, method)

        async def check(context: grpc.aio.ServicerContext[Any, Any]) -> object:
            return await authorize(context, roles, self._revocations(), cluster_id=self._cluster_id)

        return lambda behaviour: _guard(behaviour, check)


def rewrap(handler: grpc.RpcMethodHandler[Any, Any], adapt: Adapter) -> grpc.RpcMethodHandler[Any, Any]:
    """The same handler with its behaviour replaced by `adapt(behaviour)`: how
    a grpc.aio server interceptor wraps a call (authorization here, the
    controller's error mapping). grpc.aio accepts both coroutine behaviours
    and async generators for streaming responses; adapters keep whichever the
    servicer used."""
    codecs: dict[str, Any] = {"request_deserializer": handler.request_deserializer,
                              "response_serializer": handler.response_serializer}
    kinds: list[tuple[Any, Callable[..., grpc.RpcMethodHandler[Any, Any]]]] = [
        (handler.unary_unary, grpc.unary_unary_rpc_method_handler),
        (handler.unary_stream, grpc.unary_stream_rpc_method_handler),
        (handler.stream_unary, grpc.stream_unary_rpc_method_handler),
        (handler.stream_stream, grpc.stream_stream_rpc_method_handler),
    ]
    for behaviour, make in kinds:
        if behaviour is not None:
            return make(adapt(behaviour), **codecs)
    raise TypeError(f"RPC method handler without a behaviour: {handler!r}")


def _guard(behaviour: Callable[..., Any], check: Check) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behaviour):
        async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            await check(context)
            async for response in behaviour(request, context):
                yield response
        return streaming

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await check(context)
        result = behaviour(request, context)
        return await result if inspect.isawaitable(result) else result
    return unary


async def refuses_connections(addr: str, timeout: float = 0.5) -> bool:
    """Whether nothing listens at addr (HOST:PORT): a refused TCP connection,
    as from a controller whose process is gone. A timeout or any other error
    says nothing (a paused process, the network)."""
    host, _, port = addr.rpartition(":")
    try:
        async with asyncio.timeout(timeout):
            _reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    except ConnectionRefusedError:
        return True
    except (OSError, TimeoutError, ValueError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return False
