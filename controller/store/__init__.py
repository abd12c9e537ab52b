"""controller.store: etcd-backed objects with optimistic concurrency and a watch cache."""

from .cache import Change, WatchCache
from .etcd import (
    NOSPACE_HINT,
    EtcdClient,
    EtcdSettings,
    StoreError,
    StoreFull,
    StoreRejected,
    StoreUnavailable,
    store_status,
)
from .keys import Keys, StoredObject, kind_of
from .store import (
    Claim,
    Conflict,
    Create,
    Delete,
    Guard,
    Op,
    Planned,
    Release,
    ReleaseName,
    RequireAbsent,
    ReserveName,
    Store,
    Update,
    delete_op,
)

__all__ = [
    "NOSPACE_HINT", "Change", "Claim", "Conflict", "Create", "Delete", "EtcdClient", "EtcdSettings",
    "Guard", "Keys", "Op", "Planned", "Release", "ReleaseName", "RequireAbsent", "ReserveName", "Store",
    "StoreError", "StoreFull", "StoreRejected", "StoreUnavailable", "StoredObject", "Update",
    "WatchCache", "delete_op", "kind_of", "store_status",
]
