"""The cluster CA on the controllers: the root CA kept in etcd, join tokens,
node certificates, the controllers' own server certificates, revocation.

Where things are kept (the Cluster object's `ca` field, see objects.proto):

- the root CA certificate and its key, encrypted with the controllers' KEK
  (`--kek-file`): every controller that has the KEK can sign, none keeps the
  CA key on disk;
- the cluster data key, sealed under the same KEK, which seals secrets and
  other payloads at rest (`ClusterPKI.data_key`);
- the worker and controller join-token secrets (the token is
  SWMTKN-1-<CA digest>-<secret>, built from the CA certificate and a secret);
- the revoked nodes (`swarmctl node rm` adds one in the same transaction as
  the node's removal), kept until every certificate the node could hold has
  expired.

The gRPC side is three small servicers:

- `JoinServicer` (CAJoin) on the join port, server-only TLS: token + CSR in,
  node certificate out, rate-limited per peer address. Nothing is written to
  etcd: the node object is made when the new node registers with its
  certificate (the dispatcher binds the node ID to the certificate's CN).
- `NodeCAServicer` (NodeCA) on the mutual-TLS port: renewal for the caller's
  own identity.
- `CAAdminServicer` (CAAdmin) on the mutual-TLS port, admins and
  controllers only: CA information and join tokens (shown or rotated).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from swarm.api import pki
from swarm.api.channels import CONTROL_PLANE_POLICY
from swarm.api.pki import CertificateAuthority, JoinToken, NodeIdentity, Revocations, Role
from swarm.api.v1 import ca_pb2 as capb
from swarm.api.v1 import ca_pb2_grpc as cagrpc
from swarm.api.v1 import objects_pb2 as pb

from .api.errors import (
    ApiError,
    ChangedConcurrently,
    Context,
    Exhausted,
    InvalidArgument,
    PermissionDenied,
    StoreFailed,
    Unauthenticated,
)
from .ids import new_id
from .store import Conflict, Op, Store, StoreError, Update
from .store.cache import Change, ClusterChange

log = logging.getLogger(__name__)


# Who may call what on the mutual-TLS port: the control plane's policy plus
# the CA's services. Any cluster certificate may renew itself.
POLICY: Mapping[str, frozenset[Role]] = {
    **CONTROL_PLANE_POLICY,
    "swarm.v1.NodeCA": frozenset({Role.WORKER, Role.MANAGER, Role.ADMIN}),
    "swarm.v1.CAAdmin": frozenset({Role.ADMIN, Role.MANAGER}),
    # grpc.health.v1 (also on the join port, for probes without a certificate).
    "grpc.health.v1.Health": frozenset({Role.WORKER, Role.MANAGER, Role.ADMIN}),
}

_ROLE_OF_JOIN_ROLE = {capb.JOIN_ROLE_WORKER: Role.WORKER, capb.JOIN_ROLE_CONTROLLER: Role.MANAGER}
_CAS_ATTEMPTS = 10


class CASetupError(Exception):
    """The controller cannot create or load the cluster CA; the message says why."""


@dataclass(frozen=True)
class CASettings:
    # The key-encryption key of the CA key in etcd (the contents of --kek-file).
    kek: bytes = b""
    # An external CA (--external-ca-cert/--external-ca-key), used when the
    # cluster gets its CA; PEM.
    external_ca_cert: bytes = b""
    external_ca_key: bytes = b""
    node_cert_validity: dt.timedelta = pki.DEFAULT_NODE_VALIDITY
    # Joins per second per peer address, and the burst allowed.
    join_rate: float = 2.0
    join_burst: int = 20


def _duration(value: dt.timedelta) -> Any:
    from google.protobuf.duration_pb2 import Duration

    result = Duration()
    result.FromTimedelta(value)
    return result


def build_cluster_ca(settings: CASettings, *, now: dt.datetime | None = None
                     ) -> tuple[pb.ClusterCA, CertificateAuthority]:
    """A new ClusterCA for the Cluster object: the external CA if one is set,
    else a new root, with its key sealed under the KEK and fresh join tokens."""
    if not settings.kek:
        raise CASetupError("no key-encryption key for the CA key: give --kek-file "
                           "(or run with --insecure for development)")
    uid = new_id()
    if settings.external_ca_cert or settings.external_ca_key:
        try:
            ca = CertificateAuthority.from_pem(settings.external_ca_cert, settings.external_ca_key)
        except (pki.PKIError, ValueError) as error:
            raise CASetupError(f"external CA: {error}") from None
    else:
        ca = pki.create_root_ca(uid, now=now)
    state = pb.ClusterCA(
        ca_cert_pem=ca.cert_pem,
        encrypted_ca_key=pki.encrypt_ca_key(ca.key, settings.kek, cluster_id=uid),
        worker_token_secret=pki.new_token_secret(),
        controller_token_secret=pki.new_token_secret(),
        node_cert_validity=_duration(settings.node_cert_validity),
        external=bool(settings.external_ca_cert),
        cluster_uid=uid,
        sealed_data_key=pki.seal_data_key(pki.DataKey.generate(), settings.kek, cluster_id=uid),
    )
    return state, ca


def load_cluster_ca(state: pb.ClusterCA, kek: bytes) -> CertificateAuthority:
    if not kek:
        raise CASetupError("the cluster has a CA but this controller has no key-encryption key: "
                           "give the same --kek-file as the other controllers")
    try:
        key = pki.decrypt_ca_key(state.encrypted_ca_key, kek, cluster_id=state.cluster_uid)
        return CertificateAuthority(cert=pki.cert_from_pem(state.ca_cert_pem), key=key)
    except pki.PKIError as error:
        raise CASetupError(str(error)) from None


def load_data_key(state: pb.ClusterCA, kek: bytes) -> pki.DataKey:
    try:
        return pki.open_data_key(state.sealed_data_key, kek, cluster_id=state.cluster_uid)
    except pki.PKIError as error:
        raise CASetupError(str(error)) from None


def revocations_of(state: pb.ClusterCA | None) -> Revocations:
    if state is None:
        return Revocations()
    return Revocations(node_ids=frozenset(r.node_id for r in state.revoked_nodes))


def revoke_node_ops(store: Store, node_id: str, *, now: dt.datetime | None = None) -> list[Op]:
    """The cluster update that revokes a removed node's certificates, to commit
    with the node's removal (nothing on an --insecure cluster). Entries older
    than a certificate's life are pruned on the way."""
    current = next((c for c in store.cache.clusters.values() if c.HasField("ca")), None)
    if current is None:
        return []
    now = now or dt.datetime.now(dt.UTC)
    cluster = pb.Cluster()
    cluster.CopyFrom(current)
    validity = cluster.ca.node_cert_validity.ToTimedelta() + pki.CLOCK_SKEW_ALLOWANCE
    kept = [r for r in cluster.ca.revoked_nodes
            if r.node_id != node_id and r.revoked_at.ToDatetime(dt.UTC) + validity > now]
    entry = pb.RevokedNode(node_id=node_id)
    entry.revoked_at.FromDatetime(now)
    del cluster.ca.revoked_nodes[:]
    cluster.ca.revoked_nodes.extend([*kept, entry])
    return [Update(cluster)]


class ClusterPKI:
    """The controller's view of the cluster CA: loaded (or created) once at
    start, then read from the watch cache (tokens, revocations)."""

    def __init__(self, store: Store, cluster_id: str, settings: CASettings) -> None:
        self._store = store
        self._cluster_id = cluster_id
        self.settings = settings
        self._ca: CertificateAuthority | None = None
        self._data_key: pki.DataKey | None = None
        self._revocations = Revocations()
        store.cache.subscribe(self._on_change)

    # ------------------------------------------------------------ state

    @property
    def ca(self) -> CertificateAuthority:
        if self._ca is None:
            raise CASetupError("the cluster CA is not loaded yet")
        return self._ca

    @property
    def data_key(self) -> pki.DataKey:
        """Seals and opens payloads kept in etcd (secrets, credentials)."""
        if self._data_key is None:
            raise CASetupError("the cluster data key is not loaded yet")
        return self._data_key

    def state(self) -> pb.ClusterCA:
        cluster = self._store.cache.clusters.get(self._cluster_id)
        if cluster is None or not cluster.HasField("ca"):
            raise CASetupError("the cluster has no CA")
        return cluster.ca

    @property
    def cluster_uid(self) -> str:
        return self.state().cluster_uid

    def revocations(self) -> Revocations:
        """Called on every authorized call: an object rebuilt on change."""
        return self._revocations

    def _on_change(self, change: Change) -> None:
        match change:
            case ClusterChange(object_id=cluster_id, new=new) if cluster_id == self._cluster_id:
                self._revocations = revocations_of(
                    new.ca if new is not None and new.HasField("ca") else None)

    async def ensure(self) -> None:
        """Load the cluster's CA, creating it first if the cluster has none
        (the first controller of a cluster). Raises CASetupError."""
        for _ in range(_CAS_ATTEMPTS):
            current = self._store.cache.clusters.get(self._cluster_id)
            if current is None:
                raise CASetupError(f"cluster {self._cluster_id} does not exist")
            if current.HasField("ca") and current.ca.sealed_data_key:
                self._ca = load_cluster_ca(current.ca, self.settings.kek)
                self._check_external(current.ca)
                self._data_key = load_data_key(current.ca, self.settings.kek)
                self._revocations = revocations_of(current.ca)
                return
            if current.HasField("ca"):
                # A cluster made before data keys existed: add one, once.
                load_cluster_ca(current.ca, self.settings.kek)  # the KEK is the cluster's
                await self._commit_data_key(current)
                continue
            state, ca = build_cluster_ca(self.settings)
            cluster = pb.Cluster()
            cluster.CopyFrom(current)
            cluster.ca.CopyFrom(state)
            try:
                await self._store.commit([Update(cluster)])
            except Conflict:
                continue  # another controller was first: load its CA
            self._ca = ca
            self._data_key = load_data_key(state, self.settings.kek)
            log.info("created the cluster CA (%s, fingerprint %s)",
                     "external" if state.external else "self-signed", pki.fingerprint(ca.cert))
            return
        raise CASetupError("the cluster object kept changing while the CA was being created")

    async def _commit_data_key(self, current: pb.Cluster) -> None:
        cluster = pb.Cluster()
        cluster.CopyFrom(current)
        cluster.ca.sealed_data_key = pki.seal_data_key(
            pki.DataKey.generate(), self.settings.kek, cluster_id=current.ca.cluster_uid)
        try:
            await self._store.commit([Update(cluster)])
        except Conflict:
            pass  # another controller was first: the caller reloads
        else:
            log.info("created the cluster data key")

    def _check_external(self, state: pb.ClusterCA) -> None:
        given = self.settings.external_ca_cert
        if given and pki.cert_from_pem(given) != pki.cert_from_pem(state.ca_cert_pem):
            raise CASetupError("--external-ca-cert is not the CA the cluster already has")

    # ------------------------------------------------------------ tokens

    def token(self, role: Role) -> JoinToken:
        state = self.state()
        secret = state.controller_token_secret if role is Role.MANAGER else state.worker_token_secret
        return JoinToken(ca_digest=pki.ca_digest(self.ca.cert), secret=secret)

    async def rotate_token(self, role: Role) -> JoinToken:
        for _ in range(_CAS_ATTEMPTS):
            current = self._store.cache.clusters[self._cluster_id]
            cluster = pb.Cluster()
            cluster.CopyFrom(current)
            if role is Role.MANAGER:
                cluster.ca.controller_token_secret = pki.new_token_secret()
            else:
                cluster.ca.worker_token_secret = pki.new_token_secret()
            try:
                await self._store.commit([Update(cluster)])
            except Conflict:
                continue
            log.info("rotated the %s join token", "controller" if role is Role.MANAGER else "worker")
            return self.token(role)
        raise Conflict("the cluster object kept changing")

    def role_for(self, token: JoinToken) -> Role:
        """Raises pki.InvalidJoinToken (or CAMismatch)."""
        return pki.role_for_token(token, self.ca.cert, worker=self.token(Role.WORKER),
                                  controller=self.token(Role.MANAGER))

    # ------------------------------------------------------------ certificates

    def validity(self) -> dt.timedelta:
        state = self.state()
        if state.node_cert_validity.seconds or state.node_cert_validity.nanos:
            return state.node_cert_validity.ToTimedelta()
        return self.settings.node_cert_validity

    def sign(self, csr_pem: bytes, *, node_id: str, role: Role,
             addresses: tuple[str, ...] = ()) -> bytes:
        cert = pki.sign_node_certificate(self.ca, csr_pem, node_id=node_id, role=role,
                                         cluster_id=self.cluster_uid, validity=self.validity(),
                                         addresses=addresses)
        return pki.cert_to_pem(cert)

    def issue_identity(self, *, node_id: str, role: Role,
                       addresses: tuple[str, ...] = ()) -> NodeIdentity:
        return pki.issue_identity(self.ca, node_id=node_id, role=role, cluster_id=self.cluster_uid,
                                  validity=self.validity(), addresses=addresses)

    def admin_identity(self, name: str = "admin") -> NodeIdentity:
        """An operator's client identity (for --admin-out and tests)."""
        return pki.issue_admin_identity(self.ca, cluster_id=self.cluster_uid, name=name,
                                        validity=self.validity())


CONTROLLER_ID_PREFIX = "controller-"  # joining nodes get plain IDs (new_id): never this


def is_controller(peer: pki.PeerIdentity) -> bool:
    """Whether a verified peer is a controller (its own certificate, issued
    by ControllerIdentity), not a node, even a manager node."""
    return peer.role == Role.MANAGER and peer.node_id.startswith(CONTROLLER_ID_PREFIX)


class ControllerIdentity:
    """A controller's own server certificate: issued at start (it holds the
    CA), renewed at a random 50-80 % of its life. `current` is what the
    server's dynamic credentials ask for on every handshake."""

    def __init__(self, cluster_pki: ClusterPKI, addresses: tuple[str, ...],
                 rng: random.Random | None = None) -> None:
        self._pki = cluster_pki
        self._addresses = addresses
        self._rng = rng or random.Random()
        self.node_id = CONTROLLER_ID_PREFIX + new_id()[:12]
        self._identity = self._issue()

    def _issue(self) -> NodeIdentity:
        return self._pki.issue_identity(node_id=self.node_id, role=Role.MANAGER,
                                        addresses=self._addresses)

    def current(self) -> NodeIdentity:
        return self._identity

    async def renew_forever(self) -> None:
        while True:
            delay = pki.renewal_delay(self._identity.cert, dt.datetime.now(dt.UTC), self._rng)
            await asyncio.sleep(max(delay, 1.0))
            self._identity = self._issue()
            log.info("renewed the controller certificate of %s (expires %s)", self.node_id,
                     self._identity.cert.not_valid_after_utc)


# ---------------------------------------------------------------- servicers


def _refused(context: Context, error: ApiError) -> ApiError:
    """A refusal to raise (api/errors.py answers it), logged with the peer first."""
    log.warning("CA refused %s: %s: %s", context.peer(), error.code.name, error)
    return error


def _peer_host(peer: str) -> str:
    """'ipv4:127.0.0.1:5000' -> '127.0.0.1'; '[::1]' forms too."""
    _, _, rest = peer.partition(":")
    host, _, _ = rest.rpartition(":")
    return host or peer


@dataclass
class RateLimiter:
    """A token bucket per key (the peer's address)."""

    rate: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def allow(self, key: str) -> bool:
        now = self.clock()
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if len(self._buckets) > 10_000:  # bounded memory: forget idle peers
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 600}
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True


class JoinServicer(cagrpc.CAJoinServicer):
    def __init__(self, cluster_pki: ClusterPKI) -> None:
        self._pki = cluster_pki
        self._limiter = RateLimiter(cluster_pki.settings.join_rate, cluster_pki.settings.join_burst)

    async def IssueNodeCertificate(self, request: capb.IssueNodeCertificateRequest,
                                   context: Context) -> capb.NodeCertificateResponse:
        if not self._limiter.allow(_peer_host(context.peer())):
            raise _refused(context, Exhausted(
                "too many join requests from this address; retry later"))
        try:
            token = pki.parse_join_token(request.token)
        except pki.InvalidJoinToken as error:
            raise _refused(context, InvalidArgument(str(error))) from None
        try:
            role = self._pki.role_for(token)
        except pki.InvalidJoinToken as error:
            raise _refused(context, Unauthenticated(str(error))) from None
        wanted = _ROLE_OF_JOIN_ROLE.get(request.role)
        if wanted is not None and wanted is not role:
            raise _refused(context, PermissionDenied(
                f"the join token is for role {role.value}, not {wanted.value}"))
        node_id = new_id()
        try:
            cert_pem = self._pki.sign(request.csr_pem, node_id=node_id, role=role)
        except pki.PKIError as error:
            raise _refused(context, InvalidArgument(str(error))) from None
        log.info("issued a %s certificate to new node %s (%s)", role.value, node_id, context.peer())
        return capb.NodeCertificateResponse(node_id=node_id, certificate_pem=cert_pem,
                                            ca_pem=self._pki.ca.cert_pem)


class NodeCAServicer(cagrpc.NodeCAServicer):
    def __init__(self, cluster_pki: ClusterPKI) -> None:
        self._pki = cluster_pki

    async def RenewNodeCertificate(self, request: capb.RenewNodeCertificateRequest,
                                   context: Context) -> capb.NodeCertificateResponse:
        try:
            peer = pki.peer_identity(context)
        except pki.PKIError as error:
            raise _refused(context, Unauthenticated(str(error))) from None
        if peer is None:
            raise _refused(context, Unauthenticated("renewal needs the certificate being renewed"))
        try:
            cert_pem = self._pki.sign(request.csr_pem, node_id=peer.node_id, role=peer.role)
        except pki.PKIError as error:
            raise _refused(context, InvalidArgument(str(error))) from None
        log.info("renewed the certificate of %s %s", peer.role.value, peer.node_id)
        return capb.NodeCertificateResponse(node_id=peer.node_id, certificate_pem=cert_pem,
                                            ca_pem=self._pki.ca.cert_pem)


class CAAdminServicer(cagrpc.CAAdminServicer):
    def __init__(self, cluster_pki: ClusterPKI) -> None:
        self._pki = cluster_pki

    async def GetCAInfo(self, request: capb.GetCAInfoRequest, context: Context) -> capb.CAInfo:
        state = self._pki.state()
        cert = self._pki.ca.cert
        info = capb.CAInfo(ca_cert_pem=state.ca_cert_pem, fingerprint=pki.fingerprint(cert),
                           node_cert_validity=_duration(self._pki.validity()),
                           external=state.external, cluster_uid=state.cluster_uid,
                           revoked_nodes=len(state.revoked_nodes))
        info.ca_expires_at.FromDatetime(cert.not_valid_after_utc.replace(tzinfo=None))
        return info

    async def GetJoinToken(self, request: capb.GetJoinTokenRequest,
                           context: Context) -> capb.JoinTokenResponse:
        role = _ROLE_OF_JOIN_ROLE.get(request.role)
        if role is None:
            raise _refused(context, InvalidArgument("role must be worker or controller"))
        if request.rotate:
            try:
                token = await self._pki.rotate_token(role)
            except Conflict as error:
                raise _refused(context, ChangedConcurrently(
                    f"cannot rotate the token: {error}")) from None
            except StoreError as error:
                raise _refused(context, StoreFailed(error, "rotate the token")) from None
        else:
            token = self._pki.token(role)
        return capb.JoinTokenResponse(token=str(token), role=request.role)
