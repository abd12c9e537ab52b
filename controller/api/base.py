"""What every resource's handlers share: the store, fresh reads, one write path.

The control API is one servicer composed of a module per resource
(services.py, nodes.py, networks.py, tasks.py, cluster.py, controllers.py,
logs.py, as SwarmKit's controlapi/), each a mixin of `Handlers`. Handlers
only validate and write: planning lives in pure planners (the allocator's
endpoint and network planners, the orchestrator's rebalance), refusals are
exceptions (errors.py; one interceptor answers them).

Reads are answered from the watch cache, so a controller that lost etcd keeps
answering them; they are refused (UNAVAILABLE) once the cache has not heard
from etcd for max_staleness seconds: a controller behind a half-open
connection serves a view at most that old, then sends clients to another
controller. An idle healthy cache hears from etcd every few seconds (the
watch's progress requests), so the bound only bites when etcd is really out
of reach.

Writes go through `write`: the store's read_modify_write (read the cache,
plan, compare-and-swap, retry a lost race after a backoff, bounded), with a
store failure answered as store_status says and a race lost for good ABORTED.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol, TypeVar

from swarm.api import pki
from swarm.api.v1 import objects_pb2 as pb

from ..allocator.index import AddressIndex
from ..leadership import Leadership
from ..logbroker import LogBroker
from ..store import Conflict, Store, StoreError, kind_of
from ..store.store import RMW_ATTEMPTS, Step
from .errors import ChangedConcurrently, StoreFailed, Unavailable

T = TypeVar("T")
R = TypeVar("R")
# Where the cluster data key comes from (the controller's PKI); None: --insecure.
DataKeySource = Callable[[], pki.DataKey]

MAX_STALENESS = 15.0  # seconds; see the module docstring


def copy(obj: T) -> T:
    clone = type(obj)()
    clone.CopyFrom(obj)  # type: ignore[attr-defined]
    return clone


def with_prefix(objects: Iterable[T], id_of: Callable[[T], str], prefixes: Iterable[str]) -> list[T]:
    wanted = list(prefixes)
    if not wanted:
        return list(objects)
    return [obj for obj in objects if any(id_of(obj).startswith(p) for p in wanted)]


def labels_match(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(key in labels and (not value or labels[key] == value)
               for key, value in wanted.items())


class Filters(Protocol):
    """What every List request's filters have."""

    @property
    def id_prefixes(self) -> Sequence[str]: ...

    @property
    def names(self) -> Sequence[str]: ...


def select(objects: Iterable[T], filters: Filters, id_of: Callable[[T], str],
           name_of: Callable[[T], str], labels_of: Callable[[T], Mapping[str, str]] | None = None,
           labels: Mapping[str, str] | None = None) -> list[T]:
    """The objects a List request's filters keep: an ID prefix, a name, labels."""
    found = with_prefix(objects, id_of, filters.id_prefixes)
    if filters.names:
        names = set(filters.names)
        found = [obj for obj in found if name_of(obj) in names]
    if labels and labels_of is not None:
        found = [obj for obj in found if labels_match(labels_of(obj), labels)]
    return found


def same_spec(a: pb.Service | pb.Node, b: pb.Service | pb.Node) -> bool:
    return a.spec.SerializeToString(deterministic=True) == \
        b.spec.SerializeToString(deterministic=True)


def service_name(service: pb.Service) -> str:
    return service.spec.name


def hostname(node: pb.Node) -> str:
    return node.description.hostname


def network_name(network: pb.Network) -> str:
    return network.spec.name


class Handlers:
    """The state the resource mixins share; ControlServicer (control.py) builds it."""

    def __init__(self, store: Store, leadership: Leadership,
                 addresses: AddressIndex | None = None, logs: LogBroker | None = None,
                 payload_key: DataKeySource | None = None) -> None:
        self._store = store
        self._leadership = leadership
        self._addresses = addresses or AddressIndex(store.cache)
        self._logs = logs
        # Seals secrets and configs (secrets.py); None on an --insecure controller.
        self._payload_key = payload_key
        # Network creations on this controller take turns (networks.py).
        self._network_lock = asyncio.Lock()
        self.max_staleness = MAX_STALENESS

    def _fresh(self) -> None:
        """Refuse to read from a cache that has not heard from etcd for too long."""
        staleness = self._store.cache.staleness()
        if staleness > self.max_staleness:
            raise Unavailable(f"this controller has not heard from etcd for {staleness:.0f}s "
                              f"(limit {self.max_staleness:.0f}s), so its view may be stale; "
                              "try another controller")

    async def _write(self, what: str, step: Step[R], *, attempts: int = RMW_ATTEMPTS,
                     gave_up: str = "") -> R:
        """store.read_modify_write(step): `what` names the write in a store
        failure ("cannot {what}: ..."); a race still lost after `attempts` is
        ABORTED with `gave_up` (default: read it again and retry)."""
        try:
            return await self._store.read_modify_write(step, attempts=attempts)
        except StoreError as error:
            raise StoreFailed(error, what) from error
        except Conflict:
            raise ChangedConcurrently(gave_up or f"cannot {what}: it was changed concurrently; "
                                      "read it again and retry") from None

    async def _spec_unchanged_since(self, current: pb.Service | pb.Node, version: int) -> bool:
        """Whether `current`'s spec is the one the caller read at `version`
        (its meta.version then; 0: the caller does not say). Status writes
        since (the orchestrator's, the dispatcher's) do not count: only a
        concurrent spec change is a conflict. etcd's history tells; once
        compacted, any change counts."""
        if not version or version == current.meta.version:
            return True
        try:
            seen = await self._store.read_at(kind_of(current), current.id, version)
        except StoreError as error:
            if "compacted" not in str(error):
                raise
            return False
        if not isinstance(seen, pb.Service | pb.Node) or seen.meta.version != version:
            return False
        return same_spec(seen, current)
