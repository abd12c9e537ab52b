"""A thin, typed connection to etcd's v3 gRPC API.

The etcd API bindings come from aetcd (`aetcd.rpc`: etcd's own protos,
generated for current protobuf). We call the KV, Watch and Lease RPCs through
them directly rather than through aetcd's high-level client because the store
needs what those wrappers drop: the revision in every response header, the
compaction signal of a watch, and a failure branch of a transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from aetcd import rpc

log = logging.getLogger(__name__)

# etcd's default --max-txn-ops: the most compares, and the most operations in a
# branch, one transaction may carry.
MAX_TXN_OPS = 128
_RANGE_PAGE = 1000


class StoreUnavailable(Exception):
    """etcd cannot be reached (or did not answer in time)."""


@dataclass(frozen=True)
class EtcdSettings:
    endpoints: Sequence[str] = ("127.0.0.1:2379",)
    timeout: float = 5.0
    # TLS to etcd (PEM paths); all three or none.
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


@dataclass
class KeyValue:
    key: bytes
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int = 0  # the lease the key is attached to (0: none)


@dataclass
class WatchBatch:
    """One watch response: events in revision order, or a compaction signal."""

    revision: int
    events: list[tuple[bool, KeyValue]] = field(default_factory=list)  # (is_delete, kv)
    compacted_revision: int = 0


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with prefix."""
    as_list = bytearray(prefix)
    for index in range(len(as_list) - 1, -1, -1):
        if as_list[index] < 0xFF:
            as_list[index] += 1
            return bytes(as_list[: index + 1])
    return b"\0"


def _kv(raw: Any) -> KeyValue:
    return KeyValue(
        key=raw.key, value=raw.value, mod_revision=raw.mod_revision,
        create_revision=raw.create_revision, lease=raw.lease,
    )


def _unavailable(error: grpc.aio.AioRpcError) -> StoreUnavailable:
    return StoreUnavailable(f"etcd unavailable: {error.code().name}: {error.details()}")


_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class EtcdClient:
    """One gRPC channel to an etcd cluster. Create with `await EtcdClient.connect(...)`."""

    def __init__(self, settings: EtcdSettings, channel: grpc.aio.Channel) -> None:
        self.settings = settings
        self._channel = channel
        self._kv: Any = rpc.KVStub(channel)
        self._watch: Any = rpc.WatchStub(channel)
        self._lease: Any = rpc.LeaseStub(channel)

    @classmethod
    def open(cls, settings: EtcdSettings) -> EtcdClient:
        hosts = ",".join(settings.endpoints)
        target = f"ipv4:{hosts}" if "," in hosts else hosts
        options = [("grpc.lb_policy_name", "round_robin"),
                   ("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        if settings.ca_file:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(settings.ca_file),
                private_key=_read(settings.key_file) if settings.key_file else None,
                certificate_chain=_read(settings.cert_file) if settings.cert_file else None,
            )
            channel = grpc.aio.secure_channel(target, credentials, options=options)
        else:
            channel = grpc.aio.insecure_channel(target, options=options)
        return cls(settings, channel)

    async def close(self) -> None:
        await self._channel.close(None)

    async def range_prefix(self, prefix: bytes) -> tuple[int, list[KeyValue]]:
        """All keys under prefix at one revision: (revision, kvs), paginated."""
        end = prefix_end(prefix)
        start = prefix
        revision = 0
        found: list[KeyValue] = []
        while True:
            request = rpc.RangeRequest(key=start, range_end=end, limit=_RANGE_PAGE,
                                       revision=revision)
            try:
                response = await self._kv.Range(request, timeout=self.settings.timeout)
            except grpc.aio.AioRpcError as error:
                if error.code() in _RETRYABLE:
                    raise _unavailable(error) from error
                raise
            if revision == 0:
                revision = response.header.revision
            found.extend(_kv(raw) for raw in response.kvs)
            if not response.more:
                return revision, found
            start = response.kvs[-1].key + b"\0"

    async def get(self, key: bytes) -> tuple[int, KeyValue | None]:
        try:
            response = await self._kv.Range(rpc.RangeRequest(key=key),
                                            timeout=self.settings.timeout)
        except grpc.aio.AioRpcError as error:
            if error.code() in _RETRYABLE:
                raise _unavailable(error) from error
            raise
        return response.header.revision, (_kv(response.kvs[0]) if response.kvs else None)

    async def txn(self, compare: Sequence[Any], success: Sequence[Any],
                  failure: Sequence[Any] = ()) -> Any:
        """Run one transaction; returns etcd's TxnResponse."""
        request = rpc.TxnRequest(compare=compare, success=success, failure=failure)
        try:
            return await self._kv.Txn(request, timeout=self.settings.timeout)
        except grpc.aio.AioRpcError as error:
            if error.code() in _RETRYABLE:
                raise _unavailable(error) from error
            raise

    async def watch_prefix(self, prefix: bytes, start_revision: int) -> AsyncIterator[WatchBatch]:
        """Events under prefix from start_revision on, until the stream fails.

        Raises StoreUnavailable when the connection is lost; yields a batch with
        compacted_revision set (and stops) when start_revision was compacted.
        """
        create = rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
            key=prefix, range_end=prefix_end(prefix), start_revision=start_revision,
            progress_notify=True,
        ))
        requests: asyncio.Queue[Any] = asyncio.Queue()
        requests.put_nowait(create)

        async def request_stream() -> AsyncIterator[Any]:
            while True:
                yield await requests.get()

        call = self._watch.Watch(request_stream())
        try:
            async for response in call:
                if response.compact_revision:
                    yield WatchBatch(revision=response.header.revision,
                                     compacted_revision=response.compact_revision)
                    return
                if response.canceled:
                    raise StoreUnavailable(f"etcd cancelled the watch: {response.cancel_reason}")
                batch = WatchBatch(revision=response.header.revision)
                for event in response.events:
                    batch.events.append((event.type == rpc.Event.DELETE, _kv(event.kv)))
                yield batch
        except grpc.aio.AioRpcError as error:
            raise _unavailable(error) from error
        finally:
            call.cancel()

    async def compact(self, revision: int) -> None:
        """Drop history before revision (what etcd's auto-compaction does)."""
        try:
            await self._kv.Compact(rpc.CompactionRequest(revision=revision, physical=True),
                                   timeout=self.settings.timeout)
        except grpc.aio.AioRpcError as error:
            raise _unavailable(error) from error

    async def lease_grant(self, ttl: int) -> int:
        try:
            response = await self._lease.LeaseGrant(rpc.LeaseGrantRequest(TTL=ttl),
                                                    timeout=self.settings.timeout)
        except grpc.aio.AioRpcError as error:
            raise _unavailable(error) from error
        return int(response.ID)

    async def lease_keepalive_once(self, lease_id: int) -> int:
        """Refresh a lease; returns its remaining TTL (<= 0: the lease is gone)."""
        try:
            call = self._lease.LeaseKeepAlive(iter([rpc.LeaseKeepAliveRequest(ID=lease_id)]),
                                              timeout=self.settings.timeout)
            async for reply in call:
                return int(reply.TTL)
        except grpc.aio.AioRpcError as error:
            raise _unavailable(error) from error
        return 0

    async def lease_time_to_live(self, lease_id: int) -> tuple[int, int]:
        """(remaining, granted) TTL of a lease in seconds; remaining -1: gone."""
        try:
            response = await self._lease.LeaseTimeToLive(
                rpc.LeaseTimeToLiveRequest(ID=lease_id), timeout=self.settings.timeout)
        except grpc.aio.AioRpcError as error:
            raise _unavailable(error) from error
        return int(response.TTL), int(response.grantedTTL)

    async def lease_revoke(self, lease_id: int) -> None:
        try:
            await self._lease.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease_id),
                                          timeout=self.settings.timeout)
        except grpc.aio.AioRpcError as error:
            raise _unavailable(error) from error


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


# Builders for transaction parts, so callers never touch etcd's raw messages.

def compare_mod_revision(key: bytes, revision: int) -> Any:
    return rpc.Compare(key=key, result=rpc.Compare.EQUAL, target=rpc.Compare.MOD,
                       mod_revision=revision)


def compare_create_revision(key: bytes, revision: int, range_end: bytes = b"") -> Any:
    """revision 0 means: the key does not exist. With range_end, the compare
    holds for every key in [key, range_end) (an empty range: none exists)."""
    return rpc.Compare(key=key, range_end=range_end, result=rpc.Compare.EQUAL,
                       target=rpc.Compare.CREATE, create_revision=revision)


def op_put(key: bytes, value: bytes, lease: int = 0) -> Any:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))


def op_delete(key: bytes, range_end: bytes = b"") -> Any:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key, range_end=range_end))


def op_get(key: bytes) -> Any:
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=key))
