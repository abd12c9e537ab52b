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
naming the services (docker's rule); nothing is removed then. The two sides
of that rule race (a service created or updated to use the payload while it
is being removed), so each write compares what the other changes:
- a removal decides from the services as etcd holds them (Store.read_all,
  not the watch cache, which may lag) and commits only if no service was
  written since that read (RequireUnchangedSince on the services' prefix);
- a service write (services.py) commits only if every secret and config it
  references still exists at the version it was resolved against
  (`reference_guards`: RequireVersion), and is planned again otherwise
  (the reference then no longer resolves: INVALID_ARGUMENT).
Whichever commits second fails its compare; nothing ends up referencing a
removed payload.

`resolve_payload_references` is what CreateService and UpdateService call to
check a service's references against the stored secrets and configs.

The handlers are mixins on base.Handlers (the store, the data-key source
`_payload_key`, the one write path); refusals are errors.py's exceptions.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable, Mapping
from typing import TypeVar

from swarm.api import payloads, pki
from swarm.api.payloads import Kind
from swarm.api.refs import resolve_ref
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb

from ..ids import new_id
from ..store import (
    Create,
    Delete,
    Planned,
    ReleaseName,
    RequireUnchangedSince,
    RequireVersion,
    ReserveName,
    WatchCache,
)
from .base import Handlers, select
from .errors import AlreadyExists, Context, FailedPrecondition, NotFound

log = logging.getLogger(__name__)

Payload = TypeVar("Payload", pb.Secret, pb.Config)

NO_KEY_MESSAGE = ("this controller runs --insecure: it has no key-encryption key (KEK) to seal "
                  "{kind}s with; start the controllers with --kek-file to use {kind}s")


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


def payload_name(obj: pb.Secret | pb.Config) -> str:
    return obj.spec.name


def users_of(kind: Kind, object_id: str, services: Iterable[pb.Service]) -> list[str]:
    """Names of the services whose spec references the payload, sorted."""
    users = []
    for service in services:
        secrets, configs = payloads.referenced_ids(service.spec.task.container)
        if object_id in (secrets if kind == "secret" else configs):
            users.append(service.spec.name)
    return sorted(users)


def in_use_message(kind: Kind, name: str, users: list[str]) -> str:
    return (f"{kind} {name!r} is in use by service(s) {', '.join(users)}; remove it from "
            f"them first (service update --{kind}-rm {name})")


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


def reference_guards(spec: pb.ServiceSpec, cache: WatchCache) -> list[RequireVersion]:
    """For a service write: compares that each secret and config the spec
    (resolved against `cache`) references is still stored at the version
    resolved against, so a removal committed meanwhile fails the write."""
    secrets, configs = payloads.referenced_ids(spec.task.container)
    guards = [RequireVersion("secrets", i, cache.secrets[i].meta.version) for i in sorted(secrets)]
    guards += [RequireVersion("configs", i, cache.configs[i].meta.version)
               for i in sorted(configs)]
    return guards


def references_moved(guards: Iterable[RequireVersion], cache: WatchCache) -> bool:
    """Whether a guarded payload is gone or changed in the cache (which a
    failed transaction has refreshed): then a re-plan tells the caller."""
    for guard in guards:
        current = cache.objects(guard.kind).get(guard.object_id)
        if current is None or current.meta.version != guard.version:
            return True
    return False


class Payloads(Handlers):
    """What the secret and config handlers share."""

    def _data_key(self, kind: Kind) -> pki.DataKey:
        if self._payload_key is None:
            raise FailedPrecondition(NO_KEY_MESSAGE.format(kind=kind))
        return self._payload_key()

    def _payloads(self, kind: Kind) -> Mapping[str, pb.Secret | pb.Config]:
        cache = self._store.cache
        return cache.secrets if kind == "secret" else cache.configs

    async def _create_payload(self, kind: Kind, spec: pb.SecretSpec | pb.ConfigSpec,
                              data: bytes) -> pb.Secret | pb.Config:
        payloads.check_name(kind, spec.name)
        payloads.check_labels(spec.labels)
        payloads.check_data(kind, data)
        key = self._data_key(kind)
        existing = self._payloads(kind)
        exists = f"spec.name: {kind} {spec.name!r} already exists"
        object_id = new_id()
        common = {"id": object_id, "sealed_data": key.seal(data, context=seal_context(kind,
                                                                                  object_id)),
                  "digest": payload_digest(key, data), "size": len(data)}

        def step() -> Planned[pb.Secret | pb.Config]:
            if any(obj.spec.name == spec.name for obj in existing.values()):
                raise AlreadyExists(exists)
            obj: pb.Secret | pb.Config
            if kind == "secret":
                assert isinstance(spec, pb.SecretSpec)
                obj = pb.Secret(spec=spec, **common)  # type: ignore[arg-type]
            else:
                assert isinstance(spec, pb.ConfigSpec)
                obj = pb.Config(spec=spec, **common)  # type: ignore[arg-type]

            def taken() -> bool:
                # The name's key is not cached: a conflict means another
                # controller took the name first.
                raise AlreadyExists(exists)

            return Planned([Create(obj), ReserveName(f"{kind}s", spec.name, object_id)], obj,
                           taken)

        obj = await self._write(f"create {kind}", step)
        log.info("created %s %s (%s, %d bytes)", kind, spec.name, object_id, len(data))
        return obj

    async def _remove_payload(self, kind: Kind, ref: str) -> cpb.RemoveResponse:
        objects = self._payloads(kind)
        found = resolve_ref(ref, objects, payload_name, kind)
        store = self._store

        async def step() -> Planned[pb.Secret | pb.Config]:
            obj = objects.get(found.id)
            if obj is None:
                raise NotFound(f"{kind} {ref!r} not found")
            revision, stored = await store.read_all("services")
            users = users_of(kind, obj.id, (s for s in stored.values()
                                            if isinstance(s, pb.Service)))
            if users:
                raise FailedPrecondition(in_use_message(kind, obj.spec.name, users))
            return Planned([Delete(f"{kind}s", obj.id, obj.meta.version),
                            ReleaseName(f"{kind}s", obj.spec.name),
                            # A service written since the read may use it now.
                            RequireUnchangedSince(store.keys.objects("services"), revision)],
                           obj)

        obj = await self._write(f"remove {kind} {found.spec.name!r}", step,
                                gave_up=f"{kind} {found.spec.name!r} changed concurrently; "
                                        "try again")
        log.info("removed %s %s (%s)", kind, obj.spec.name, obj.id)
        return cpb.RemoveResponse(id=obj.id)


class Secrets(Payloads):
    """CreateSecret, GetSecret, ListSecrets, RemoveSecret."""

    async def CreateSecret(self, request: cpb.CreateSecretRequest,
                           context: Context) -> cpb.SecretResponse:
        secret = await self._create_payload("secret", request.spec, request.data)
        assert isinstance(secret, pb.Secret)
        return cpb.SecretResponse(secret=without_data(secret))

    async def GetSecret(self, request: cpb.GetRequest, context: Context) -> cpb.SecretResponse:
        self._fresh()
        secret = resolve_ref(request.ref, self._store.cache.secrets, payload_name, "secret")
        return cpb.SecretResponse(secret=without_data(secret))

    async def ListSecrets(self, request: cpb.ListSecretsRequest,
                          context: Context) -> cpb.ListSecretsResponse:
        self._fresh()
        filters = request.filters
        secrets = select(self._store.cache.secrets.values(), filters, lambda s: s.id,
                         payload_name, lambda s: s.spec.labels, filters.labels)
        secrets.sort(key=payload_name)
        return cpb.ListSecretsResponse(secrets=[without_data(s) for s in secrets])

    async def RemoveSecret(self, request: cpb.RemoveRequest,
                           context: Context) -> cpb.RemoveResponse:
        return await self._remove_payload("secret", request.ref)
