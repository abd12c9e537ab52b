"""The typed store: optimistic, transactional writes of API objects to etcd.

Every write is a compare-and-swap: creates require the key to be absent,
updates and deletes require the mod_revision the caller read (its
meta.version). A conflict is reported, never overwritten; the caller reads
again (from the cache, which the failed transaction has already refreshed)
and retries. Many operations are split into transactions of at most etcd's
128 operations and about 1 MiB (etcd refuses requests over 1.5 MiB); one
transaction that etcd refuses as such is found by sending its groups alone,
so one oversized object fails alone (commit_groups' rejected).

Objects handed to the store become the cached copies: do not mutate them
after a commit.

`read_modify_write` is the one retried compare-and-swap: read (the cache),
plan with a pure function, commit; on a conflict the cache already holds what
won, so the next attempt plans from it, after a short randomised backoff,
a bounded number of times.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeAlias, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from . import etcd as E
from .cache import WatchCache
from .etcd import EtcdClient, StoreRejected
from .keys import Keys, StoredObject, decode, kind_of

R = TypeVar("R")
RMW_ATTEMPTS = 10
RMW_BACKOFF = 0.02  # seconds before the second attempt; doubles, up to RMW_BACKOFF_MAX
RMW_BACKOFF_MAX = 0.5


class Conflict(Exception):
    """A compare of the transaction failed: someone else wrote first."""


@dataclass(frozen=True, slots=True)
class Create:
    obj: StoredObject


@dataclass(frozen=True, slots=True)
class Update:
    obj: StoredObject  # its meta.version must be the revision it was read at


@dataclass(frozen=True, slots=True)
class Delete:
    kind: str
    object_id: str
    version: int


@dataclass(frozen=True, slots=True)
class ReserveName:
    """Claim a unique name (fails when taken)."""

    kind: str
    name: str
    object_id: str


@dataclass(frozen=True, slots=True)
class ReleaseName:
    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class Claim:
    """Create a raw key (a full key from Keys) that must not exist yet: the
    create-only records of IPAM, which make two racing allocators fail
    instead of handing out the same address, VNI or subnet."""

    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class Release:
    """Delete a raw key, or with prefix=True every key under it (no compare:
    releasing what is already gone is fine)."""

    key: bytes
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class RequireAbsent:
    """A compare only: the key (or, with prefix=True, every key under it) does
    not exist. Claims of overlapping subnets use it (see allocator.claims)."""

    key: bytes
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class RequireVersion:
    """A compare only: the object exists, at this version (its mod_revision).
    A write that refers to another object it does not change (a service to
    the secrets it uses) fails if that object was removed meanwhile; the
    failed transaction reads the object back into the cache, so a re-plan
    sees it gone."""

    kind: str
    object_id: str
    version: int


@dataclass(frozen=True, slots=True)
class RequireUnchangedSince:
    """A compare only: no key under `prefix` (a full key from Keys, e.g.
    Keys.objects("services")) was written after `revision`; deleted keys
    do not count. A decision over every object of a kind (a secret is used
    by no service) made from a read at `revision` (Store.read_all) still
    holds at commit. (Not from the watch cache: etcd does not tell exactly
    up to which revision a catching-up watch has delivered everything.)"""

    prefix: bytes
    revision: int


Op: TypeAlias = (Create | Update | Delete | ReserveName | ReleaseName | Claim | Release
                 | RequireAbsent | RequireVersion | RequireUnchangedSince)


@dataclass(frozen=True, slots=True)
class Guard:
    """An extra condition on a transaction: the key's create_revision is as given.

    The leader fences its writes with its leadership key: a deposed leader's
    late writes fail instead of racing its successor."""

    key: bytes
    create_revision: int


def _always() -> bool:
    return True


@dataclass(frozen=True)
class Planned(Generic[R]):
    """One attempt of a read-modify-write: what to write (nothing: just
    return) and what the write returns."""

    ops: Sequence[Op]
    result: R
    # Called after a conflict: whether another attempt may succeed. It may
    # also raise, to give up with a reason of its own.
    retry: Callable[[], bool] = field(default=_always)


Step = Callable[[], "Planned[R] | Awaitable[Planned[R]]"]


def backoff_delay(attempt: int, base: float = RMW_BACKOFF, cap: float = RMW_BACKOFF_MAX) -> float:
    """The pause after failed attempt `attempt` (0, 1, ...): exponential,
    capped, times a random factor in [0.5, 1.5) against lock-step retries."""
    return min(cap, base * 2.0 ** attempt) * random.uniform(0.5, 1.5)


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(time.time_ns())
    return stamp


class Store:
    def __init__(self, etcd: EtcdClient, prefix: str = "/swarm/") -> None:
        self.etcd = etcd
        self.keys = Keys(prefix)
        self.cache = WatchCache(etcd, self.keys)

    # ------------------------------------------------------------ single

    async def create(self, obj: StoredObject, *ops: Op) -> None:
        await self.commit([Create(obj), *ops])

    async def update(self, obj: StoredObject, *ops: Op) -> None:
        await self.commit([Update(obj), *ops])

    async def read_at(self, kind: str, object_id: str, revision: int) -> StoredObject | None:
        """The object as it was at `revision` (from etcd's history; raises
        StoreUnavailable once compaction removed it)."""
        _, kv = await self.etcd.get(self.keys.object(kind, object_id), revision)
        return decode(kind, kv.value, kv.mod_revision) if kv is not None else None

    async def read_all(self, kind: str) -> tuple[int, dict[str, StoredObject]]:
        """Every object of a kind as etcd holds it now, by ID, and the revision
        read at (for RequireUnchangedSince): an authoritative read, for the
        rare decision the watch cache's possible lag must not decide."""
        revision, kvs = await self.etcd.range_prefix(self.keys.objects(kind))
        objects = {}
        for kv in kvs:
            parsed = self.keys.parse(kv.key)
            if parsed is not None:
                objects[parsed[1]] = decode(kind, kv.value, kv.mod_revision)
        return revision, objects

    async def read_modify_write(self, step: Step[R], *, attempts: int = RMW_ATTEMPTS,
                                backoff: float = RMW_BACKOFF, guard: Guard | None = None) -> R:
        """Run `step` (read the cache, plan purely: Planned) and commit its ops
        in one transaction (fenced by `guard`); on a Conflict run it again after
        backoff_delay, at most `attempts` times, then raise the Conflict.
        Whatever `step` raises (a refusal) propagates at once, as do store
        errors."""
        for attempt in range(attempts):
            planned = step()
            if inspect.isawaitable(planned):
                planned = await planned
            if not planned.ops:
                return planned.result
            try:
                await self.commit(planned.ops, guard)
            except Conflict:
                if attempt + 1 >= attempts or not planned.retry():
                    raise
                await asyncio.sleep(backoff_delay(attempt, backoff))
                continue
            return planned.result
        raise ValueError(f"read_modify_write needs at least one attempt, got {attempts}")

    # ------------------------------------------------------------ batches

    async def commit(self, ops: Sequence[Op], guard: Guard | None = None) -> int:
        """All ops in one transaction, all or nothing; raises Conflict. Returns the revision."""
        limit = E.MAX_TXN_OPS - (1 if guard else 0)
        if len(ops) > limit:
            raise ValueError(f"{len(ops)} operations exceed one transaction ({limit})")
        return await self._commit_chunk(ops, guard)

    async def commit_chunked(self, ops: Sequence[Op], guard: Guard | None = None,
                             rejected: list[Op] | None = None) -> list[Op]:
        """Ops in transactions of at most 128 operations and max_txn_bytes; returns
        the ops of chunks that conflicted (the cache already holds what etcd had
        instead, so a re-plan sees it). rejected: see commit_groups."""
        refused: dict[int, StoreRejected] = {}
        failed = await self.commit_groups([[op] for op in ops], guard,
                                          refused if rejected is not None else None)
        if rejected is not None:
            rejected.extend(ops[i] for i in sorted(refused))
        return [ops[i] for i in failed]

    async def commit_groups(self, groups: Sequence[Sequence[Op]], guard: Guard | None = None,
                            rejected: dict[int, StoreRejected] | None = None) -> list[int]:
        """Like commit_chunked, but each group is all-or-nothing: groups are packed
        whole into transactions of at most 128 operations and max_txn_bytes of
        payload (a task's delete and the release of its addresses must not be
        split). Returns the indexes of the groups whose transaction conflicted.

        rejected: when etcd refuses a transaction as such (StoreRejected: too
        large, ...), each of its groups is sent alone, and the groups etcd still
        refuses are put here with the error instead of failing the rest (one bad
        object must not stop the writes of every other). Without it the error
        is raised. StoreUnavailable (and StoreFull) is always raised."""
        ops_limit = E.MAX_TXN_OPS - (1 if guard else 0)
        sizes = []
        for group in groups:
            if len(group) > ops_limit:
                raise ValueError(
                    f"a group of {len(group)} operations exceeds one transaction ({ops_limit})")
            sizes.append((len(group), sum(self._payload_bytes(op) for op in group)))
        failed: list[int] = []
        for members in pack_groups(sizes, ops_limit, self.etcd.settings.max_txn_bytes):
            chunk = [op for index in members for op in groups[index]]
            try:
                await self._commit_chunk(chunk, guard)
            except Conflict:
                failed.extend(members)
            except StoreRejected as error:
                if rejected is None:
                    raise
                if len(members) == 1:
                    rejected[members[0]] = error
                    continue
                for index in members:  # find the culprits: each group alone
                    try:
                        await self._commit_chunk(groups[index], guard)
                    except Conflict:
                        failed.append(index)
                    except StoreRejected as alone:
                        rejected[index] = alone
        return failed

    def _payload_bytes(self, op: Op) -> int:
        """The key and value bytes an operation puts into a transaction."""
        if isinstance(op, Create | Update):
            return len(self.keys.of(op.obj)) + op.obj.ByteSize()
        if isinstance(op, Claim):
            return len(op.key) + len(op.value)
        if isinstance(op, Delete):
            return len(self.keys.object(op.kind, op.object_id))
        if isinstance(op, ReserveName):
            return len(self.keys.name(op.kind, op.name)) + len(op.object_id)
        if isinstance(op, ReleaseName):
            return len(self.keys.name(op.kind, op.name))
        if isinstance(op, RequireVersion):
            return len(self.keys.object(op.kind, op.object_id))
        if isinstance(op, RequireUnchangedSince):
            return 2 * len(op.prefix)
        return len(op.key)


    async def _commit_chunk(self, ops: Sequence[Op], guard: Guard | None) -> int:
        compares: list[Any] = []
        success: list[Any] = []
        puts: list[tuple[bytes, bytes]] = []
        deletes: list[bytes] = []
        watched: list[bytes] = []  # object keys re-read when the transaction fails
        required: list[bytes] = []  # objects only compared (RequireVersion): re-read too
        stamp = _now()
        for op in ops:
            if isinstance(op, Create | Update):
                obj = op.obj
                key = self.keys.of(obj)
                if isinstance(op, Create):
                    compares.append(E.compare_create_revision(key, 0))
                    obj.meta.created_at.CopyFrom(stamp)
                else:
                    compares.append(E.compare_mod_revision(key, obj.meta.version))
                obj.meta.updated_at.CopyFrom(stamp)
                value = obj.SerializeToString()
                success.append(E.op_put(key, value))
                puts.append((key, value))
                watched.append(key)
            elif isinstance(op, Delete):
                key = self.keys.object(op.kind, op.object_id)
                compares.append(E.compare_mod_revision(key, op.version))
                success.append(E.op_delete(key))
                deletes.append(key)
                watched.append(key)
            elif isinstance(op, ReserveName):
                key = self.keys.name(op.kind, op.name)
                compares.append(E.compare_create_revision(key, 0))
                success.append(E.op_put(key, op.object_id.encode()))
            elif isinstance(op, ReleaseName):
                success.append(E.op_delete(self.keys.name(op.kind, op.name)))
            elif isinstance(op, Claim):
                compares.append(E.compare_create_revision(op.key, 0))
                success.append(E.op_put(op.key, op.value))
            elif isinstance(op, Release):
                success.append(E.op_delete(op.key, E.prefix_end(op.key) if op.prefix else b""))
            elif isinstance(op, RequireVersion):
                key = self.keys.object(op.kind, op.object_id)
                compares.append(E.compare_mod_revision(key, op.version))
                if key not in required:
                    required.append(key)
            elif isinstance(op, RequireUnchangedSince):
                compares.append(E.compare_mod_revision_at_most(
                    op.prefix, op.revision, E.prefix_end(op.prefix)))
            else:
                compares.append(E.compare_create_revision(
                    op.key, 0, E.prefix_end(op.key) if op.prefix else b""))
        if len(set(watched)) != len(watched):
            raise ValueError("a transaction names the same object twice")
        if guard is not None:
            compares.append(E.compare_create_revision(guard.key, guard.create_revision))
        reread = watched + [key for key in required if key not in watched]
        response = await self.etcd.txn(compares, success, [E.op_get(k) for k in reread])
        revision = int(response.header.revision)
        if response.succeeded:
            self.cache.apply_committed(puts, deletes, revision)
            # The caller's objects now carry the version a later update must compare.
            for op in ops:
                if isinstance(op, Create | Update):
                    op.obj.meta.version = revision
            return revision
        for key, reply in zip(reread, response.responses, strict=True):
            kvs = reply.response_range.kvs
            kv = E.KeyValue(kvs[0].key, kvs[0].value, kvs[0].mod_revision,
                            kvs[0].create_revision) if kvs else None
            self.cache.apply_observed(key, kv, revision)
        raise Conflict(f"transaction of {len(ops)} operations conflicted at revision {revision}")


def pack_groups(sizes: Sequence[tuple[int, int]], max_ops: int,
                max_bytes: int) -> list[list[int]]:
    """Pack groups, given as (operations, bytes), in order into transactions of at
    most max_ops operations and max_bytes bytes; a group over max_bytes on its
    own goes alone (etcd decides). Returns the group indexes per transaction."""
    chunks: list[list[int]] = []
    current: list[int] = []
    ops = size = 0
    for index, (group_ops, group_bytes) in enumerate(sizes):
        if current and (ops + group_ops > max_ops or size + group_bytes > max_bytes):
            chunks.append(current)
            current, ops, size = [], 0, 0
        current.append(index)
        ops += group_ops
        size += group_bytes
    if current:
        chunks.append(current)
    return chunks


def delete_op(obj: StoredObject) -> Delete:
    return Delete(kind_of(obj), obj.id, obj.meta.version)
