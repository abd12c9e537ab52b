"""The control API's secrets, and what secrets and configs share.

A secret is created once and never changed (as in Swarm: a new content is a
new secret; `apply` names versions by content digest, cli/stack_payloads.py).
Its payload is sealed at once with the cluster data key
(swarm.api.pki.DataKey, under the controllers' KEK) bound to "secret/<id>",
so neither etcd nor the watch cache ever holds the plaintext; responses never
carry it. A create validates everything first, then writes the object and its
unique name in one transaction: a refused request writes nothing.

An --insecure controller has no KEK, hence no data key: it refuses to create
secrets and configs (FAILED_PRECONDITION, one line saying why). Storing them
in the clear there would make "nothing in etcd holds the plaintext" depend
on a flag that tests and development clusters use, and would leave
plaintext behind in etcd if such a cluster were later given a KEK.

A removal is refused while any service's spec references the payload,
naming the services (docker's rule); nothing is removed then.

`resolve_payload_references` is what CreateService and UpdateService call to
check a service's references against the stored secrets and configs.

The handlers are a mixin of the ControlServicer (controller/api/control.py):
they need only the store (`_store`) and the data-key source (`payload_key`,
set by controller/server.py on a secure controller).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Mapping
from typing import NoReturn, TypeVar

import grpc

from swarm.api import payloads, pki
from swarm.api.payloads import Kind
from swarm.api.refs import resolve_ref
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.api.validation import ValidationError

from ..ids import new_id
from ..store import (
    Conflict,
    Create,
    Delete,
    ReleaseName,
    ReserveName,
    Store,
    StoreError,
    WatchCache,
    store_status,
)

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[object, object]
Payload = TypeVar("Payload", pb.Secret, pb.Config)
DataKeySource = Callable[[], pki.DataKey]

NO_KEY_MESSAGE = ("this controller runs --insecure: it has no key-encryption key (KEK) to seal "
                  "{kind}s with; start the controllers with --kek-file to use {kind}s")


async def abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable")


def seal_context(kind: Kind, object_id: str) -> str:
    """What a payload's seal is bound to: a blob moved to another record does not open."""
    return f"{kind}/{object_id}"


def payload_digest(key: pki.DataKey, data: bytes) -> str:
    """A keyed digest (HMAC-SHA256 under a key derived from the data key): it
    tells contents apart, but unlike a plain hash it is no oracle for
    guessing a short password from a raw read of etcd."""
    digest_key = hmac.new(key.key, b"swarm payload digest v1", hashlib.sha256).digest()
    return "hmac-sha256:" + hmac.new(digest_key, data, hashlib.sha256).hexdigest()


def without_data(obj: Payload) -> Payload:
    """A copy fit for a client: the sealed payload left out."""
    out = type(obj)()
    out.CopyFrom(obj)
    out.ClearField("sealed_data")
    return out


def users_of(kind: Kind, object_id: str, services: Mapping[str, pb.Service]) -> list[str]:
    """Names of the services whose spec references the payload, sorted."""
    users = []
    for service in services.values():
        secrets, configs = payloads.referenced_ids(service.spec.task.container)
        if object_id in (secrets if kind == "secret" else configs):
            users.append(service.spec.name)
    return sorted(users)


def resolve_payload_references(spec: pb.ServiceSpec, cache: WatchCache) -> pb.ServiceSpec:
    """A copy of the (normalized) service spec with its secret and config
    references resolved to IDs and their file targets checked; raises
    ValidationError naming the first bad one. Called by CreateService and
    UpdateService."""
    container = spec.task.container
    if not container.secrets and not container.configs:
        return spec
    out = pb.ServiceSpec()
    out.CopyFrom(spec)
    payloads.resolve_references(
        out.task.container,
        {i: s.spec.name for i, s in cache.secrets.items()},
        {i: c.spec.name for i, c in cache.configs.items()})
    return out


def filtered(objects: Mapping[str, Payload], names: list[str], prefixes: list[str],
             labels: Mapping[str, str]) -> list[Payload]:
    found = [obj for obj in objects.values()
             if (not names or obj.spec.name in names)
             and (not prefixes or any(obj.id.startswith(p) for p in prefixes))
             and all(k in obj.spec.labels and (not v or obj.spec.labels[k] == v)
                     for k, v in labels.items())]
    found.sort(key=lambda obj: obj.spec.name)
    return [without_data(obj) for obj in found]


class PayloadHandlers:
    """What the secret and config handlers share. Needs `_store` from the servicer."""

    _store: Store
    # Set by the controller when it has a KEK (controller/server.py); None: --insecure.
    payload_key: DataKeySource | None = None

    async def _data_key(self, kind: Kind, context: Context) -> pki.DataKey:
        if self.payload_key is None:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                        NO_KEY_MESSAGE.format(kind=kind))
        return self.payload_key()

    async def _create_payload(self, kind: Kind, spec: pb.SecretSpec | pb.ConfigSpec, data: bytes,
                              existing: Mapping[str, pb.Secret] | Mapping[str, pb.Config],
                              context: Context) -> pb.Secret | pb.Config:
        try:
            payloads.check_name(kind, spec.name)
            payloads.check_labels(spec.labels)
            payloads.check_data(kind, data)
        except ValidationError as error:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(error))
        key = await self._data_key(kind, context)
        if any(obj.spec.name == spec.name for obj in existing.values()):
            await abort(context, grpc.StatusCode.ALREADY_EXISTS,
                        f"spec.name: {kind} {spec.name!r} already exists")
        object_id = new_id()
        common = {"id": object_id, "sealed_data": key.seal(data, context=seal_context(kind,
                                                                                  object_id)),
                  "digest": payload_digest(key, data), "size": len(data)}
        obj: pb.Secret | pb.Config
        if kind == "secret":
            assert isinstance(spec, pb.SecretSpec)
            obj = pb.Secret(spec=spec, **common)  # type: ignore[arg-type]
        else:
            assert isinstance(spec, pb.ConfigSpec)
            obj = pb.Config(spec=spec, **common)  # type: ignore[arg-type]
        try:
            await self._store.commit([Create(obj), ReserveName(f"{kind}s", spec.name, object_id)])
        except Conflict:
            await abort(context, grpc.StatusCode.ALREADY_EXISTS,
                        f"spec.name: {kind} {spec.name!r} already exists")
        except StoreError as error:
            code, message = store_status(error, f"create {kind}")
            await abort(context, code, message)
        log.info("created %s %s (%s, %d bytes)", kind, spec.name, object_id, len(data))
        return obj

    async def _resolve_payload(self, kind: Kind, ref: str, objects: Mapping[str, Payload],
                               context: Context) -> Payload:
        try:
            return resolve_ref(ref, objects, lambda o: o.spec.name, kind)
        except LookupError as error:
            await abort(context, grpc.StatusCode.NOT_FOUND, str(error.args[0]))

    async def _remove_payload(self, kind: Kind, ref: str, objects: Mapping[str, Payload],
                              context: Context) -> cpb.RemoveResponse:
        obj = await self._resolve_payload(kind, ref, objects, context)
        users = users_of(kind, obj.id, self._store.cache.services)
        if users:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                        f"{kind} {obj.spec.name!r} is in use by service(s) {', '.join(users)}; "
                        f"remove it from them first (service update --{kind}-rm "
                        f"{obj.spec.name})")
        try:
            await self._store.commit([Delete(f"{kind}s", obj.id, obj.meta.version),
                                      ReleaseName(f"{kind}s", obj.spec.name)])
        except Conflict:
            await abort(context, grpc.StatusCode.ABORTED,
                        f"{kind} {obj.spec.name!r} changed concurrently; try again")
        except StoreError as error:
            code, message = store_status(error, f"remove {kind} {obj.spec.name!r}")
            await abort(context, code, message)
        log.info("removed %s %s (%s)", kind, obj.spec.name, obj.id)
        return cpb.RemoveResponse(id=obj.id)


class SecretHandlers(PayloadHandlers):
    """CreateSecret, GetSecret, ListSecrets, RemoveSecret."""

    async def CreateSecret(self, request: cpb.CreateSecretRequest,
                           context: Context) -> cpb.SecretResponse:
        secret = await self._create_payload("secret", request.spec, request.data,
                                            self._store.cache.secrets, context)
        assert isinstance(secret, pb.Secret)
        return cpb.SecretResponse(secret=without_data(secret))

    async def GetSecret(self, request: cpb.GetRequest, context: Context) -> cpb.SecretResponse:
        secret = await self._resolve_payload("secret", request.ref, self._store.cache.secrets,
                                             context)
        return cpb.SecretResponse(secret=without_data(secret))

    async def ListSecrets(self, request: cpb.ListSecretsRequest,
                          context: Context) -> cpb.ListSecretsResponse:
        filters = request.filters
        return cpb.ListSecretsResponse(secrets=filtered(
            self._store.cache.secrets, list(filters.names), list(filters.id_prefixes),
            filters.labels))

    async def RemoveSecret(self, request: cpb.RemoveRequest,
                           context: Context) -> cpb.RemoveResponse:
        return await self._remove_payload("secret", request.ref, self._store.cache.secrets,
                                          context)
