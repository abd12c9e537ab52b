"""The watch cache: every controller's in-memory copy of the store.

Snapshot, then watch: list everything at revision R, watch from R + 1, and
list again after a compaction or a lost connection (emitting the difference as
changes). The store also writes through it: a committed transaction is applied
at its revision at once, so a controller reads its own writes without waiting
for the watch. Each key only moves forward in revision, so a late watch event
never undoes a newer write (deleted keys keep a tombstone revision until the
watch has passed it).

Freshness: every response of the watch (events, or the progress
notifications the etcd client asks for when the stream is quiet) and every
list proves the connection to etcd alive at that moment; `staleness()` is the
time since the last such proof. (A connected watch can still lag etcd while
it catches up on a burst; that lag is etcd's delivery, not a lost link.)
Readers that must not serve an old view (the control API) refuse when it
exceeds their bound, instead of answering from a cache behind a half-open
connection.

Objects in the cache are shared with every reader: never mutate one; copy it
(CopyFrom) and write the copy through the store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeAlias, TypeVar

from google.protobuf.message import DecodeError

from swarm.api.loops import cancel_requested
from swarm.api.v1 import objects_pb2 as pb

from .etcd import EtcdClient, KeyValue, StoreError
from .keys import Keys, StoredObject, decode

log = logging.getLogger(__name__)


# One record per kind of object, so listeners `match` on the class and get
# typed old/new (None: created, resp. deleted).


T = TypeVar("T", pb.Node, pb.Service, pb.Task, pb.Network, pb.Cluster, pb.Secret, pb.Config)


@dataclass(frozen=True, slots=True)
class Changed(Generic[T]):
    object_id: str
    old: T | None
    new: T | None


class NodeChange(Changed[pb.Node]):
    __slots__ = ()


class ServiceChange(Changed[pb.Service]):
    __slots__ = ()


class TaskChange(Changed[pb.Task]):
    __slots__ = ()


class NetworkChange(Changed[pb.Network]):
    __slots__ = ()


class ClusterChange(Changed[pb.Cluster]):
    __slots__ = ()


class SecretChange(Changed[pb.Secret]):
    __slots__ = ()


class ConfigChange(Changed[pb.Config]):
    __slots__ = ()


Change: TypeAlias = (NodeChange | ServiceChange | TaskChange | NetworkChange | ClusterChange
                     | SecretChange | ConfigChange)


def _as(kind: type[T], obj: StoredObject | None) -> T | None:
    if obj is None or isinstance(obj, kind):
        return obj
    raise TypeError(f"a {type(obj).__name__} where a {kind.__name__} was expected")


def change_of(object_id: str, old: StoredObject | None, new: StoredObject | None) -> Change:
    """The typed record of a change of one object (old and new of one kind)."""
    match new if new is not None else old:
        case pb.Node():
            return NodeChange(object_id, _as(pb.Node, old), _as(pb.Node, new))
        case pb.Service():
            return ServiceChange(object_id, _as(pb.Service, old), _as(pb.Service, new))
        case pb.Task():
            return TaskChange(object_id, _as(pb.Task, old), _as(pb.Task, new))
        case pb.Network():
            return NetworkChange(object_id, _as(pb.Network, old), _as(pb.Network, new))
        case pb.Cluster():
            return ClusterChange(object_id, _as(pb.Cluster, old), _as(pb.Cluster, new))
        case pb.Secret():
            return SecretChange(object_id, _as(pb.Secret, old), _as(pb.Secret, new))
        case pb.Config():
            return ConfigChange(object_id, _as(pb.Config, old), _as(pb.Config, new))
    raise TypeError(f"no change record for {object_id!r}: {old!r} -> {new!r}")


Listener = Callable[[Change], None]


class WatchCache:
    def __init__(self, etcd: EtcdClient, keys: Keys) -> None:
        self._etcd = etcd
        self._keys = keys
        self.nodes: dict[str, pb.Node] = {}
        self.services: dict[str, pb.Service] = {}
        self.tasks: dict[str, pb.Task] = {}
        self.networks: dict[str, pb.Network] = {}
        self.clusters: dict[str, pb.Cluster] = {}
        self.secrets: dict[str, pb.Secret] = {}  # sealed: the cache never holds plaintext
        self.configs: dict[str, pb.Config] = {}
        self.tasks_by_service: dict[str, dict[str, pb.Task]] = {}
        self.tasks_by_node: dict[str, dict[str, pb.Task]] = {}
        self.leader: KeyValue | None = None
        self.leader_changed = asyncio.Event()  # set on every change of the leader key
        # The running controllers (controller/registry.py), by address, with
        # the revision each was written at; listeners of the set, called
        # after every change of it.
        self.controllers: dict[str, pb.ControllerInfo] = {}
        self._controller_revisions: dict[bytes, int] = {}
        self.controller_listeners: list[Callable[[], None]] = []
        self.revision = 0
        self.synced = asyncio.Event()
        self._last_contact = 0.0  # time.monotonic() of the last list or watch response
        self.lists = 0  # full lists so far: the first, then one per lost or compacted watch
        # Revisions of deleted keys, kept until the watch has passed them; a live
        # key's revision is its object's meta.version.
        self._tombstones: dict[bytes, int] = {}
        self._tombstone_order: deque[tuple[int, bytes]] = deque()
        self._list_revision = 0
        self._progress = asyncio.Event()  # set whenever _list_revision moves
        self._listeners: list[Listener] = []
        self._by_kind: dict[str, dict[str, StoredObject]] = {
            "nodes": self.nodes,  # type: ignore[dict-item]
            "services": self.services,  # type: ignore[dict-item]
            "tasks": self.tasks,  # type: ignore[dict-item]
            "networks": self.networks,  # type: ignore[dict-item]
            "clusters": self.clusters,  # type: ignore[dict-item]
            "secrets": self.secrets,  # type: ignore[dict-item]
            "configs": self.configs,  # type: ignore[dict-item]
        }

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call listener for every change from now on; returns the unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def objects(self, kind: str) -> dict[str, StoredObject]:
        return self._by_kind[kind]

    def staleness(self) -> float:
        """Seconds since etcd last proved this cache current (inf before the first list)."""
        if not self._last_contact:
            return float("inf")
        return time.monotonic() - self._last_contact

    # ------------------------------------------------------------ the loop

    async def run(self, retry_delay: float = 0.5) -> None:
        """List and watch forever; reconnects and re-lists on any loss."""
        while True:
            try:
                await self._list()
                await self._watch()
            except StoreError as error:
                if cancel_requested():  # asked to stop: a cancel may surface as an error
                    raise asyncio.CancelledError from error
                log.warning("watch cache lost etcd, retrying: %s", error)
                await asyncio.sleep(retry_delay)

    async def _list(self) -> None:
        revision, kvs = await self._etcd.range_prefix(self._keys.prefix)
        present = {kv.key for kv in kvs}
        for kv in kvs:
            self._apply(kv.key, kv.value, kv.mod_revision)
        # Whatever the cache holds that etcd no longer has was deleted meanwhile.
        cached = [self._keys.object(kind, object_id)
                  for kind, objects in self._by_kind.items() for object_id in objects]
        if self.leader is not None:
            cached.append(self._keys.leader)
        cached.extend(self._controller_revisions)
        for key in cached:
            if key not in present:
                self._apply(key, None, revision)
        self.revision = max(self.revision, revision)
        self._list_revision = revision
        self._last_contact = time.monotonic()
        self.lists += 1
        self._progress.set()
        self.synced.set()
        log.info("watch cache listed %d keys at revision %d", len(kvs), revision)

    async def _watch(self) -> None:
        async for batch in self._etcd.watch_prefix(self._keys.prefix, self._list_revision + 1):
            if batch.compacted_revision:
                log.warning("watch revision compacted (at %d); re-listing",
                            batch.compacted_revision)
                return
            self._last_contact = time.monotonic()
            if not batch.events:
                # A progress notification: it proves the stream alive, not the
                # cache current. etcd 3.5 answers a progress request at its own
                # revision even while this watch still catches up (etcd issue
                # 15220), so its revision must not prune tombstones.
                continue
            for is_delete, kv in batch.events:
                self._apply(kv.key, None if is_delete else kv.value, kv.mod_revision)
            self._list_revision = max(self._list_revision, batch.revision)
            self._progress.set()
            self.revision = max(self.revision, batch.revision)
            self._prune_tombstones()

    async def caught_up(self, revision: int, timeout: float) -> None:
        """Wait until the watch has delivered everything up to revision (a read
        barrier: a write-through alone does not prove the earlier writes were
        seen). Raises TimeoutError."""
        async with asyncio.timeout(timeout):
            while self._list_revision < revision:
                self._progress.clear()
                await self._progress.wait()

    def _prune_tombstones(self) -> None:
        # A tombstone is only needed until the watch has passed its revision.
        order = self._tombstone_order
        while order and order[0][0] <= self._list_revision:
            revision, key = order.popleft()
            if self._tombstones.get(key) == revision:
                del self._tombstones[key]

    def _revision_of(self, key: bytes, kind: str | None, object_id: str) -> int:
        if kind is None:
            return self.leader.mod_revision if self.leader is not None else \
                self._tombstones.get(key, 0)
        obj = self._by_kind[kind].get(object_id)
        return obj.meta.version if obj is not None else self._tombstones.get(key, 0)

    # ------------------------------------------------------------ applying

    def apply_committed(self, puts: Iterable[tuple[bytes, bytes]], deletes: Iterable[bytes],
                        revision: int) -> None:
        """Write-through of a committed transaction."""
        for key, value in puts:
            self._apply(key, value, revision)
        for key in deletes:
            self._apply(key, None, revision)
        self.revision = max(self.revision, revision)

    def apply_observed(self, key: bytes, kv: KeyValue | None, revision: int) -> None:
        """What a failed transaction read back: the key's current value (or absence)."""
        if kv is None:
            self._apply(key, None, revision)
        else:
            self._apply(key, kv.value, kv.mod_revision)

    def _apply(self, key: bytes, value: bytes | None, revision: int) -> None:
        if key == self._keys.leader:
            if revision <= self._revision_of(key, None, ""):
                return
            if value is None:
                self._bury(key, revision)
            self.leader = None if value is None else KeyValue(key, value, revision, 0)
            self.leader_changed.set()
            return
        if key.startswith(self._keys.controllers):
            self._apply_controller(key, value, revision)
            return
        parsed = self._keys.parse(key)
        if parsed is None:
            return
        kind, object_id = parsed
        if revision <= self._revision_of(key, kind, object_id):
            return
        if value is None:
            self._bury(key, revision)
        else:
            self._tombstones.pop(key, None)
        store = self._by_kind[kind]
        old = store.get(object_id)
        new = None if value is None else decode(kind, value, revision)
        if new is None:
            if old is None:
                return
            del store[object_id]
        else:
            store[object_id] = new
        change = change_of(object_id, old, new)
        if isinstance(change, TaskChange):
            self._index_task(change.old, change.new)
        for listener in list(self._listeners):
            listener(change)

    def _apply_controller(self, key: bytes, value: bytes | None, revision: int) -> None:
        if revision <= max(self._controller_revisions.get(key, 0), self._tombstones.get(key, 0)):
            return
        addr = key[len(self._keys.controllers):].decode()
        if value is None:
            self._bury(key, revision)
            self._controller_revisions.pop(key, None)
            if self.controllers.pop(addr, None) is None:
                return
        else:
            self._tombstones.pop(key, None)
            self._controller_revisions[key] = revision
            try:
                self.controllers[addr] = pb.ControllerInfo.FromString(value)
            except DecodeError:  # a stranger's key must not stop the cache
                log.warning("ignoring an unreadable controller record %r", key)
                return
        for listener in list(self.controller_listeners):
            listener()

    def _index_task(self, old: pb.Task | None, new: pb.Task | None) -> None:
        if old is not None:
            _drop(self.tasks_by_service, old.service_id, old.id)
            _drop(self.tasks_by_node, old.node_id, old.id)
        if new is not None:
            self.tasks_by_service.setdefault(new.service_id, {})[new.id] = new
            if new.node_id:
                self.tasks_by_node.setdefault(new.node_id, {})[new.id] = new


    def _bury(self, key: bytes, revision: int) -> None:
        self._tombstones[key] = revision
        self._tombstone_order.append((revision, key))


def _drop(index: dict[str, dict[str, pb.Task]], bucket: str, task_id: str) -> None:
    tasks = index.get(bucket)
    if tasks is not None:
        tasks.pop(task_id, None)
        if not tasks:
            del index[bucket]
