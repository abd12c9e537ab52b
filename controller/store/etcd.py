"""A thin, typed connection to etcd's v3 gRPC API.

Errors: every RPC error becomes one of three store errors, so no caller
sees a raw grpc error. StoreUnavailable: etcd cannot be reached or did not
answer in time (retry later). StoreFull, a kind of StoreUnavailable: etcd
raised its NOSPACE alarm and refuses writes until an operator compacts,
defragments and disarms it (reads still work; retry later, keep what is
pending). StoreRejected: etcd refused this one request (too large, too many
operations): sending it again will not help, the caller must isolate it.

Liveness: the channel sends HTTP/2 keepalive pings (keepalive_time, at least
etcd's --grpc-keepalive-min-time of 5 s or etcd closes the connection with
"too_many_pings"), so a half-open connection (etcd frozen or a silent
partition) fails every call within keepalive_time + keepalive_timeout
(measured: 6.0 s with 5 + 1). A watch asks etcd for a progress notification
whenever its stream has been quiet for progress_interval, and gives the
stream up when nothing at all came back within timeout after that: a silent
watch is noticed and re-established (the cache re-lists), and an idle but
healthy one still proves, every progress_interval, that the link is alive
(WatchCache.staleness).

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

from swarm.api.loops import cancel_all, cancel_requested
from swarm.api.telemetry import Telemetry

from .instrumented import TimedStub

log = logging.getLogger(__name__)

# etcd's default --max-txn-ops: the most compares, and the most operations in a
# branch, one transaction may carry.
MAX_TXN_OPS = 128
# etcd's default --max-request-bytes is 1.5 MiB per request. Transactions are
# packed up to 1 MiB of payload (keys and values): the rest is headroom for
# the per-operation framing, the compares and the failure branch's reads.
MAX_TXN_BYTES = 1024 * 1024
_RANGE_PAGE = 1000


class StoreError(Exception):
    """etcd did not do what was asked (see the module docstring for the kinds)."""


class StoreUnavailable(StoreError):
    """etcd cannot be reached (or did not answer in time): retry later."""


class StoreFull(StoreUnavailable):
    """etcd's NOSPACE alarm is raised: it refuses writes until compacted,
    defragmented and disarmed. A kind of StoreUnavailable: retry later."""


class StoreRejected(StoreError):
    """etcd refused this request as such (too large, too many operations)."""


NOSPACE_HINT = ("etcd is out of space (NOSPACE alarm) and refuses writes: compact, defragment "
                "and disarm the alarm: etcdctl compact REV; etcdctl defrag; "
                "etcdctl alarm disarm (see deploy/PRODUCTION.md)")


@dataclass(frozen=True)
class EtcdSettings:
    endpoints: Sequence[str] = ("127.0.0.1:2379",)
    timeout: float = 5.0
    # Payload bytes packed into one transaction (see MAX_TXN_BYTES).
    max_txn_bytes: int = MAX_TXN_BYTES
    # HTTP/2 keepalive: a ping after this much silence on the connection,
    # dead if not answered within keepalive_timeout.
    keepalive_time: float = 10.0
    keepalive_timeout: float = 5.0
    # A watch stream quiet for this long asks etcd for a progress notification.
    progress_interval: float = 5.0
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


def store_status(error: StoreError, what: str) -> tuple[grpc.StatusCode, str]:
    """The gRPC status a client of the controller gets when the store failed
    to do `what`: NOSPACE is RESOURCE_EXHAUSTED with what to do about it, a
    request etcd refuses INVALID_ARGUMENT, anything else UNAVAILABLE."""
    if isinstance(error, StoreFull):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, f"cannot {what}: {error}"
    if isinstance(error, StoreRejected):
        return grpc.StatusCode.INVALID_ARGUMENT, f"cannot {what}: {error}"
    return grpc.StatusCode.UNAVAILABLE, \
        f"cannot {what}: the store is unavailable ({error}); reads still work"


def _failure(error: grpc.aio.AioRpcError) -> BaseException:
    """What to raise for a failed call. grpc.aio can report a call cancelled
    under a cancelled task as CANCELLED rather than CancelledError: that is the
    task's own cancel, and must not become a store error a loop retries."""
    if error.code() == grpc.StatusCode.CANCELLED and cancel_requested():
        return asyncio.CancelledError()
    return store_error(error)


def store_error(error: grpc.aio.AioRpcError) -> StoreError:
    """What an etcd RPC error means to the store (pure: unit-tested)."""
    code, details = error.code(), error.details() or ""
    if "database space exceeded" in details or "NOSPACE" in details:
        return StoreFull(f"{NOSPACE_HINT} (etcd said: {details})")
    if code == grpc.StatusCode.INVALID_ARGUMENT or (
            code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details):
        # "request is too large", "too many operations in txn request", or the
        # gRPC frame over etcd's limit (--max-request-bytes + 512 KiB).
        return StoreRejected(f"etcd refused the request: {details}")
    return StoreUnavailable(f"etcd unavailable: {code.name}: {details}")




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
        target, options, credentials = _channel_args(settings)
        if credentials is not None:
            channel = grpc.aio.secure_channel(target, credentials, options=options)
        else:
            channel = grpc.aio.insecure_channel(target, options=options)
        return cls(settings, channel)

    def instrument(self, telemetry: Telemetry) -> None:
        """Measure requests from now on (metrics on; see instrumented.py)."""
        self._kv = TimedStub(self._kv, telemetry)
        self._lease = TimedStub(self._lease, telemetry)

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
                raise _failure(error) from error
            if revision == 0:
                revision = response.header.revision
            found.extend(_kv(raw) for raw in response.kvs)
            if not response.more:
                return revision, found
            start = response.kvs[-1].key + b"\0"

    async def get(self, key: bytes, revision: int = 0) -> tuple[int, KeyValue | None]:
        """The key now, or as it was at `revision` (StoreUnavailable, saying
        "compacted", once that history is gone)."""
        try:
            response = await self._kv.Range(rpc.RangeRequest(key=key, revision=revision),
                                            timeout=self.settings.timeout)
        except grpc.aio.AioRpcError as error:
            raise _failure(error) from error
        return response.header.revision, (_kv(response.kvs[0]) if response.kvs else None)

    async def txn(self, compare: Sequence[Any], success: Sequence[Any],
                  failure: Sequence[Any] = ()) -> Any:
        """Run one transaction; returns etcd's TxnResponse."""
        request = rpc.TxnRequest(compare=compare, success=success, failure=failure)
        try:
            return await self._kv.Txn(request, timeout=self.settings.timeout)
        except grpc.aio.AioRpcError as error:
            raise _failure(error) from error

    async def watch_prefix(self, prefix: bytes, start_revision: int) -> AsyncIterator[WatchBatch]:
        """Events under prefix from start_revision on, until the stream fails.

        Raises StoreUnavailable when the connection is lost or the stream stays
        silent (no event, no progress notification) for progress_interval plus
        timeout; yields a batch with compacted_revision set (and stops) when
        start_revision was compacted. A batch without events is a progress
        notification: everything up to its revision has been delivered.
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
        # Responses are read by a task of their own, so a silent stream can be
        # timed without cancelling a read in the middle of the call.
        responses: asyncio.Queue[Any] = asyncio.Queue()

        async def read() -> None:
            try:
                async for response in call:
                    responses.put_nowait(response)
                responses.put_nowait(StoreUnavailable("etcd ended the watch stream"))
            except grpc.aio.AioRpcError as error:
                responses.put_nowait(store_error(error))

        reader = asyncio.create_task(read(), name="etcd-watch-reader")
        settings = self.settings
        try:
            while True:
                response = await _next_or_none(responses, settings.progress_interval)
                if response is None:
                    # Quiet: ask for progress; a live etcd answers at once.
                    requests.put_nowait(rpc.WatchRequest(progress_request=rpc.WatchProgressRequest()))
                    response = await _next_or_none(responses, settings.timeout)
                    if response is None:
                        raise StoreUnavailable(
                            f"the watch stream stayed silent for "
                            f"{settings.progress_interval + settings.timeout:.0f}s")
                if isinstance(response, Exception):
                    raise response
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
        finally:
            call.cancel()
            await cancel_all([reader])

    async def compact(self, revision: int, physical: bool = True) -> bool:
        """Drop history before revision (what etcd's auto-compaction does).
        physical: return only once the backend has dropped it. Returns False
        when the revision was compacted already (by another controller or by
        etcd's own auto-compaction): nothing to do."""
        try:
            await self._kv.Compact(rpc.CompactionRequest(revision=revision, physical=physical),
                                   timeout=self.settings.timeout)
        except grpc.aio.AioRpcError as error:
            if "required revision has been compacted" in (error.details() or ""):
                return False
            raise _failure(error) from error
        return True

    async def revision(self) -> int:
        """etcd's current revision (a linearizable read of one key's header)."""
        revision, _ = await self.get(b"\0")
        return revision

    async def lease_grant(self, ttl: int) -> int:
        try:
            response = await self._lease.LeaseGrant(rpc.LeaseGrantRequest(TTL=ttl),
                                                    timeout=self.settings.timeout)
        except grpc.aio.AioRpcError as error:
            raise _failure(error) from error
        return int(response.ID)

    async def lease_time_to_live(self, lease_id: int) -> tuple[int, int]:
        """(remaining, granted) TTL of a lease in seconds; remaining -1: gone."""
        try:
            response = await self._lease.LeaseTimeToLive(
                rpc.LeaseTimeToLiveRequest(ID=lease_id), timeout=self.settings.timeout)
        except grpc.aio.AioRpcError as error:
            raise _failure(error) from error
        return int(response.TTL), int(response.grantedTTL)

    async def lease_revoke(self, lease_id: int) -> None:
        try:
            await self._lease.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease_id),
                                          timeout=self.settings.timeout)
        except grpc.aio.AioRpcError as error:
            raise _failure(error) from error


async def _next_or_none(queue: asyncio.Queue[Any], timeout: float) -> Any:
    """The next item of queue, or None when none came within timeout.
    (asyncio.timeout, not wait_for: Python 3.11's wait_for can lose a cancel
    that races with the result, and this runs in every watch.)"""
    try:
        async with asyncio.timeout(timeout):
            return await queue.get()
    except TimeoutError:
        return None


def _channel_args(settings: EtcdSettings) -> tuple[
        str, list[tuple[str, Any]], grpc.ChannelCredentials | None]:
    """Target, options and credentials of a channel to etcd (asyncio or not)."""
    hosts = ",".join(settings.endpoints)
    target = f"ipv4:{hosts}" if "," in hosts else hosts
    options: list[tuple[str, Any]] = [
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.keepalive_time_ms", int(settings.keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout * 1000)),
        # grpcio 1.85 does not act on keepalive_timeout by itself: an
        # unanswered ping closes the transport after the ping timeout
        # (default a minute; grpc/grpc#39239). Make them one.
        ("grpc.http2.ping_timeout_ms", int(settings.keepalive_timeout * 1000)),
        # Ping only while calls are open (etcd's default enforcement
        # policy refuses pings without streams), however long no data flowed.
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0)]
    if not settings.ca_file:
        return target, options, None
    return target, options, grpc.ssl_channel_credentials(
        root_certificates=_read(settings.ca_file),
        private_key=_read(settings.key_file) if settings.key_file else None,
        certificate_chain=_read(settings.cert_file) if settings.cert_file else None,
    )


class BlockingLeaseClient:
    """Lease calls over a synchronous channel of their own, for a thread that
    must refresh a lease whatever the event loop is doing (leadership.py's
    LeaseKeeper). Not for use on the event loop: every call blocks."""

    def __init__(self, settings: EtcdSettings) -> None:
        target, options, credentials = _channel_args(settings)
        # No HTTP/2 keepalive pings: every call here has a deadline shorter than
        # a ping's timeout anyway, and on a saturated machine (5,000 agents
        # joining on two cores) an unanswered ping tore the connection down in
        # the middle of a refresh ("Stream removed (ping timeout)").
        options = [(name, value) for name, value in options
                   if not name.startswith(("grpc.keepalive", "grpc.http2."))]
        self._channel = grpc.secure_channel(target, credentials, options=options) \
            if credentials is not None else grpc.insecure_channel(target, options=options)
        self._lease: Any = rpc.LeaseStub(self._channel)

    def wait_ready(self, timeout: float) -> bool:
        """Connect now (True), rather than in the first call; False if not within timeout."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            return False
        return True

    def keepalive_once(self, lease_id: int, timeout: float) -> int:
        """Refresh a lease; returns its remaining TTL (<= 0: the lease is gone)."""
        call = self._lease.LeaseKeepAlive(iter([rpc.LeaseKeepAliveRequest(ID=lease_id)]),
                                          timeout=timeout)
        try:
            for reply in call:
                return int(reply.TTL)
        except grpc.RpcError as error:
            raise StoreUnavailable(f"etcd unavailable: {error}") from error
        finally:
            call.cancel()  # one reply is all we wait for: end the stream
        return 0

    def revoke(self, lease_id: int, timeout: float) -> None:
        try:
            self._lease.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease_id), timeout=timeout)
        except grpc.RpcError as error:
            raise StoreUnavailable(f"etcd unavailable: {error}") from error

    def close(self) -> None:
        self._channel.close()


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


def compare_mod_revision_at_most(key: bytes, revision: int, range_end: bytes = b"") -> Any:
    """The key (with range_end: every key in [key, range_end)) was last
    written at or before revision; a missing key (or an empty range) passes."""
    return rpc.Compare(key=key, range_end=range_end, result=rpc.Compare.LESS,
                       target=rpc.Compare.MOD, mod_revision=revision + 1)


def op_put(key: bytes, value: bytes, lease: int = 0) -> Any:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))


def op_delete(key: bytes, range_end: bytes = b"") -> Any:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key, range_end=range_end))


def op_get(key: bytes) -> Any:
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=key))
