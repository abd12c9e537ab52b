"""controller.store: etcd-backed objects with optimistic concurrency and a watch cache."""

from .cache import Change, WatchCache
from .etcd import EtcdClient, EtcdSettings, StoreUnavailable
from .keys import Keys, StoredObject, kind_of
from .store import (
    Claim,
    Conflict,
    Create,
    Delete,
    Guard,
    Op,
    Release,
    ReleaseName,
    RequireAbsent,
    ReserveName,
    Store,
    Update,
    delete_op,
)

__all__ = [
    "Change", "Claim", "Conflict", "Create", "Delete", "EtcdClient", "EtcdSettings", "Guard", "Keys",
    "Op", "Release", "ReleaseName", "RequireAbsent", "ReserveName", "Store", "StoreUnavailable",
    "StoredObject", "Update", "WatchCache", "delete_op", "kind_of",
]
