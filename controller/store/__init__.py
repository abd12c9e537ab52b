"""controller.store: etcd-backed objects with optimistic concurrency and a watch cache."""

from .cache import Change, WatchCache
from .etcd import EtcdClient, EtcdSettings, StoreUnavailable
from .keys import Keys, StoredObject, kind_of
from .store import (
    Conflict,
    Create,
    Delete,
    Guard,
    Op,
    ReleaseName,
    ReserveName,
    Store,
    Update,
    delete_op,
)

__all__ = [
    "Change", "Conflict", "Create", "Delete", "EtcdClient", "EtcdSettings", "Guard", "Keys",
    "Op", "ReleaseName", "ReserveName", "Store", "StoreUnavailable", "StoredObject", "Update",
    "WatchCache", "delete_op", "kind_of",
]
