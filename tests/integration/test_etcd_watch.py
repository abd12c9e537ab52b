"""The watch cache against etcd's history and silent connections (issue 11
item 4): the leader's compaction under a running watch loses nothing the
cache needs; a watch whose stream goes silent (etcd frozen with SIGSTOP, or
a half-open connection through a proxy that stops forwarding) is noticed and
re-established, and a controller cut off from etcd answers reads from its
cache for at most max_read_staleness, then refuses them until it is back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import pytest

from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.compaction import CompactionSettings, Compactor
from swarm.controller.server import Controller
from swarm.controller.store import (
    Create,
    Delete,
    EtcdClient,
    EtcdSettings,
    ReserveName,
    Store,
    StoredObject,
)
from tests.etcd_server import EtcdServer
from tests.integration.conftest import admin_channel, controller_config
from tests.integration.test_store import running_cache, task
from tests.waiting import eventually, eventually_async

# Quick to notice silence in tests: a progress request after 1 s of quiet,
# given up 1 s later; HTTP/2 pings after 6 s of silence (etcd refuses pings more
# often than every 5 s), dead after 1 s.
QUICK = EtcdSettings(timeout=1.0, progress_interval=1.0, keepalive_time=6.0,
                     keepalive_timeout=1.0)


def _state(objects: dict[str, StoredObject]) -> dict[str, bytes]:
    return {object_id: obj.SerializeToString(deterministic=True)
            for object_id, obj in objects.items()}


async def test_compaction_under_a_running_watch_loses_nothing(
        store: Store, etcd_server: EtcdServer, etcd_prefix: str) -> None:
    writer_client = EtcdClient.open(EtcdSettings(endpoints=(etcd_server.endpoint,)))
    writer = Store(writer_client, etcd_prefix)
    compactor = Compactor(writer_client, CompactionSettings(interval=0.02))
    last_change: dict[str, bool] = {}  # task -> whether the last change seen was a delete
    store.cache.subscribe(lambda change: last_change.__setitem__(change.object_id,
                                                                   change.new is None))
    try:
        async with running_cache(store):
            compacting = asyncio.create_task(compactor.run())
            for round_ in range(60):
                ids = [f"t{round_}-{i}" for i in range(5)]
                for task_id in ids:
                    await writer.create(task(task_id))
                for task_id in ids[:3]:
                    updated = pb.Task()
                    updated.CopyFrom(writer.cache.tasks[task_id])
                    updated.status.state = pb.RUNNING
                    await writer.update(updated)
                await writer.commit([Delete("tasks", ids[4],
                                            writer.cache.tasks[ids[4]].meta.version)])
                if round_ == 30:  # and once a lost watch, re-listed between compactions
                    await asyncio.sleep(0.1)
            compacting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await compacting
            assert compactor.compacted > 0, "the compactor compacted under the watch"
            revision, kvs = await writer_client.range_prefix(writer.keys.prefix + b"tasks/")
            await eventually(lambda: store.cache.revision >= revision, timeout=10,
                             message="the cache caught up")
            assert _state(store.cache.objects("tasks")) == _state(writer.cache.objects("tasks"))
            assert len(kvs) == len(store.cache.tasks) == 60 * 4
            # Listeners saw every live task last as alive, and every task they saw
            # that is gone last as deleted. (A task created and deleted while the
            # cache re-listed after a compaction is never seen: it needs nothing.)
            alive = set(writer.cache.tasks)
            assert all(last_change.get(task_id) is False for task_id in alive)
            assert all(deleted for task_id, deleted in last_change.items()
                       if task_id not in alive)
    finally:
        await writer_client.close()


async def test_compacting_a_compacted_revision_is_no_error(store: Store) -> None:
    await store.create(task("one"))
    revision = await store.etcd.revision()
    assert await store.etcd.compact(revision) is True
    assert await store.etcd.compact(revision) is False  # another did it first: fine
    compactor = Compactor(store.etcd)
    noted = await compactor.tick(0)
    assert noted >= revision
    assert compactor.compacted == 0


# ---------------------------------------------------------------- silence


async def test_a_watch_on_a_frozen_etcd_is_reestablished_and_catches_up(
        own_etcd: EtcdServer) -> None:
    client = EtcdClient.open(replace(QUICK, endpoints=(own_etcd.endpoint,)))
    other_client = EtcdClient.open(EtcdSettings(endpoints=(own_etcd.endpoint,), timeout=30))
    store, other = Store(client, "/frozen/"), Store(other_client, "/frozen/")
    try:
        async with running_cache(store):
            await other.create(task("before"))
            await eventually(lambda: "before" in store.cache.tasks)
            lists = store.cache.lists
            own_etcd.pause()  # SIGSTOP: connections stay open, nothing answers
            # A write sent meanwhile by another client is applied when etcd wakes.
            late = asyncio.create_task(other.create(task("during")))
            await asyncio.sleep(QUICK.progress_interval + QUICK.timeout + 2.0)
            assert store.cache.staleness() > QUICK.progress_interval + QUICK.timeout
            own_etcd.resume()
            await asyncio.wait_for(late, 30)
            await eventually(lambda: "during" in store.cache.tasks, timeout=15,
                             message="the cache caught up after SIGCONT")
            assert store.cache.lists > lists, "the silent watch was given up and re-listed"
            await other.create(task("after"))
            await eventually(lambda: "after" in store.cache.tasks, timeout=5,
                             message="the new watch delivers")
            assert store.cache.staleness() < 5
    finally:
        own_etcd.resume()
        await client.close()
        await other_client.close()


class FreezableProxy:
    """A TCP proxy on loopback that can stop forwarding without closing anything:
    what a controller sees of etcd behind a silent partition (half-open)."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self._open = asyncio.Event()
        self._open.set()
        self._pumps: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def freeze(self) -> None:
        self._open.clear()

    def thaw(self) -> None:
        self._open.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pump = asyncio.create_task(self._pump(source, sink))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self._open.wait()  # frozen: read nothing, so nothing moves
                data = await source.read(65536)
                if not data:
                    break
                await self._open.wait()
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.close()


@contextlib.asynccontextmanager
async def proxied(etcd: EtcdServer) -> AsyncIterator[tuple[FreezableProxy, int]]:
    proxy = FreezableProxy(etcd.client_port)
    port = await proxy.start()
    try:
        yield proxy, port
    finally:
        await proxy.close()


async def test_a_controller_cut_off_from_etcd_stops_serving_stale_reads(
        etcd_server: EtcdServer, etcd_prefix: str) -> None:
    bound = 3.0
    async with proxied(etcd_server) as (proxy, port):
        base = controller_config(f"127.0.0.1:{port}", etcd_prefix)
        config = replace(base, etcd=replace(QUICK, endpoints=(f"127.0.0.1:{port}",)),
                         max_read_staleness=bound)
        controller = Controller(config)
        await controller.start()
        direct = EtcdClient.open(EtcdSettings(endpoints=(etcd_server.endpoint,)))
        try:
            async with admin_channel(controller) as channel:
                control = cgrpc.ControlStub(channel)

                async def names() -> list[str]:
                    listed = await control.ListServices(cpb.ListServicesRequest(), timeout=5)
                    return sorted(s.spec.name for s in listed.services)

                spec = pb.ServiceSpec(name="before")
                spec.task.container.image = "busybox"
                await control.CreateService(cpb.CreateServiceRequest(spec=spec))
                lists = controller.store.cache.lists

                proxy.freeze()
                frozen_at = time.monotonic()
                # Meanwhile the cluster moves on without this controller.
                meanwhile = pb.Service(id="meanwhile000000000000000", spec=pb.ServiceSpec(
                    name="meanwhile"), spec_version=1)
                meanwhile.spec.task.container.image = "busybox"
                await Store(direct, etcd_prefix).commit(
                    [Create(meanwhile), ReserveName("services", "meanwhile", meanwhile.id)])

                refused: grpc.aio.AioRpcError | None = None
                while refused is None:
                    try:
                        # Served from the cache while recent: stale, but bounded.
                        assert await names() == ["before"]
                    except grpc.aio.AioRpcError as error:
                        refused = error
                    assert time.monotonic() - frozen_at < bound + 5, "never refused"
                    await asyncio.sleep(0.2)
                assert refused.code() == grpc.StatusCode.UNAVAILABLE, refused
                refusal = refused.details() or ""
                assert "has not heard from etcd" in refusal, refusal
                assert "try another controller" in refusal, refusal
                # The limit is the bound plus at most one progress period.
                assert time.monotonic() - frozen_at >= bound - QUICK.progress_interval

                proxy.thaw()

                async def caught_up() -> bool:
                    try:
                        return await names() == ["before", "meanwhile"]
                    except grpc.aio.AioRpcError:
                        return False

                await eventually_async(caught_up, timeout=20, message="reads again, current")
                assert controller.store.cache.lists > lists
        finally:
            await controller.stop()
            await direct.close()


async def test_keepalive_pings_notice_a_frozen_etcd_without_progress_requests(
        own_etcd: EtcdServer, caplog: pytest.LogCaptureFixture) -> None:
    # Progress requests effectively off: only the HTTP/2 keepalive can notice.
    settings = replace(QUICK, endpoints=(own_etcd.endpoint,), progress_interval=600.0,
                       timeout=600.0)
    client = EtcdClient.open(settings)
    store = Store(client, "/keepalive/")
    try:
        async with running_cache(store):
            own_etcd.pause()
            paused_at = time.monotonic()
            await eventually(lambda: any("watch cache lost etcd" in r.getMessage()
                                         for r in caplog.records), timeout=20,
                             message="the keepalive noticing the silent connection")
            noticed = time.monotonic() - paused_at
            own_etcd.resume()
            # A ping after keepalive_time of silence, dead keepalive_timeout later.
            assert noticed < settings.keepalive_time + settings.keepalive_timeout + 3, noticed
            await Store(client, "/keepalive/").create(task("after"))
            await eventually(lambda: "after" in store.cache.tasks, timeout=15,
                             message="the watch re-established")
    finally:
        own_etcd.resume()
        await client.close()
