"""The store against a real etcd: compare-and-swap, chunked transactions,
the watch cache, write-through, and re-listing after compaction."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.store import (
    Change,
    Conflict,
    Create,
    Delete,
    EtcdClient,
    EtcdSettings,
    Guard,
    Planned,
    RequireUnchangedSince,
    RequireVersion,
    ReserveName,
    Store,
    Update,
)
from swarm.controller.store import etcd as E
from tests.etcd_server import EtcdServer
from tests.waiting import eventually


def task(task_id: str, service_id: str = "svc", node_id: str = "") -> pb.Task:
    return pb.Task(id=task_id, service_id=service_id, node_id=node_id,
                   desired_state=pb.RUNNING, status=pb.TaskStatus(state=pb.PENDING))


@contextlib.asynccontextmanager
async def running_cache(store: Store) -> AsyncIterator[asyncio.Task[None]]:
    runner = asyncio.create_task(store.cache.run(retry_delay=0.05), name="watch-cache")
    try:
        await asyncio.wait_for(store.cache.synced.wait(), 5)
        yield runner
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def test_create_then_update_with_stale_version_conflicts(store: Store) -> None:
    await store.create(task("t1"))
    cached = store.cache.tasks["t1"]
    assert cached.meta.version > 0, "write-through fills in the revision"

    first, second = pb.Task(), pb.Task()
    first.CopyFrom(cached)
    second.CopyFrom(cached)
    first.desired_state = pb.SHUTDOWN
    await store.update(first)
    second.node_id = "n1"
    with pytest.raises(Conflict):
        await store.update(second)
    # The failed transaction refreshed the cache with the winner's write.
    assert store.cache.tasks["t1"].desired_state == pb.SHUTDOWN
    assert store.cache.tasks["t1"].node_id == ""


async def test_duplicate_create_and_name_conflict(store: Store) -> None:
    await store.create(pb.Service(id="s1", spec=pb.ServiceSpec(name="web")),
                       ReserveName("services", "web", "s1"))
    with pytest.raises(Conflict):
        await store.create(pb.Service(id="s2", spec=pb.ServiceSpec(name="web")),
                           ReserveName("services", "web", "s2"))
    assert "s2" not in store.cache.services, "nothing half-written"
    _rev, raw = await store.etcd.get(store.keys.object("services", "s2"))
    assert raw is None
    await store.create(task("dup"))
    with pytest.raises(Conflict):
        await store.create(task("dup"))
    with pytest.raises(ValueError, match="twice"):
        await store.commit([Create(task("x")), Create(task("x"))])


async def test_delete_requires_current_version(store: Store) -> None:
    await store.create(task("t1"))
    version = store.cache.tasks["t1"].meta.version
    with pytest.raises(Conflict):
        await store.commit([Delete("tasks", "t1", version - 1)])
    await store.commit([Delete("tasks", "t1", version)])
    assert "t1" not in store.cache.tasks


async def test_chunked_commit_spans_transactions_and_reports_conflicts(store: Store) -> None:
    await store.create(task("t0005"))
    ops = [Create(task(f"t{i:04d}")) for i in range(300)]
    failed = await store.commit_chunked(ops)
    # t0005 exists, so only its chunk (the first 128) fails.
    assert len(failed) == 128
    assert {op.obj.id for op in failed if isinstance(op, Create)} == {
        f"t{i:04d}" for i in range(128)}
    _rev, kvs = await store.etcd.range_prefix(store.keys.prefix + b"tasks/")
    assert len(kvs) == 1 + 300 - 128


async def test_guard_fences_writes(store: Store) -> None:
    with pytest.raises(Conflict):
        await store.commit([Create(task("t1"))], guard=Guard(store.keys.leader, 12345))
    assert "t1" not in store.cache.tasks


async def test_watch_cache_sees_other_writers_and_indexes_tasks(
        store: Store, etcd_server: EtcdServer, etcd_prefix: str) -> None:
    other_client = EtcdClient.open(EtcdSettings(endpoints=(etcd_server.endpoint,)))
    other = Store(other_client, etcd_prefix)
    changes: list[Change] = []
    try:
        await other.create(task("before", node_id="n1"))
        async with running_cache(store):
            store.cache.subscribe(changes.append)
            assert "before" in store.cache.tasks_by_node["n1"]
            await other.create(task("after", service_id="svc2", node_id="n2"))
            await eventually(lambda: "after" in store.cache.tasks)
            assert set(store.cache.tasks_by_service["svc2"]) == {"after"}
            moved = pb.Task()
            moved.CopyFrom(other.cache.tasks["after"])
            moved.node_id = "n3"
            await other.update(moved)
            await eventually(lambda: "after" in store.cache.tasks_by_node.get("n3", {}))
            assert "n2" not in store.cache.tasks_by_node
            await other.commit([Delete("tasks", "before", other.cache.tasks["before"].meta.version)])
            await eventually(lambda: "before" not in store.cache.tasks)
        assert [(c.object_id, c.new is None) for c in changes] == [
            ("after", False), ("after", False), ("before", True)]
    finally:
        await other_client.close()


async def test_late_watch_event_never_undoes_a_newer_write(store: Store) -> None:
    async with running_cache(store):
        await store.create(task("t1"))
        for state in (pb.ASSIGNED, pb.ACCEPTED, pb.RUNNING):
            updated = pb.Task()
            updated.CopyFrom(store.cache.tasks["t1"])
            updated.status.state = state
            await store.update(updated)
            # The write-through is visible at once, before the watch echoes it.
            assert store.cache.tasks["t1"].status.state == state
        await store.commit([Delete("tasks", "t1", store.cache.tasks["t1"].meta.version)])
        await asyncio.sleep(0.2)  # let the watch deliver every echo
        assert "t1" not in store.cache.tasks


async def test_relist_after_compaction(
        store: Store, etcd_server: EtcdServer, etcd_prefix: str) -> None:
    other_client = EtcdClient.open(EtcdSettings(endpoints=(etcd_server.endpoint,)))
    other = Store(other_client, etcd_prefix)
    changes: list[Change] = []
    try:
        await other.create(task("keep"))
        await other.create(task("gone"))
        async with running_cache(store):
            assert set(store.cache.tasks) == {"keep", "gone"}
        # While this cache is not watching, history moves on and is compacted away.
        await other.create(task("new"))
        await other.commit([Delete("tasks", "gone", other.cache.tasks["gone"].meta.version)])
        revision, _ = await other.etcd.range_prefix(b"/")
        await other.etcd.compact(revision)
        # Resuming the watch from the old revision gets the compaction signal ...
        await asyncio.wait_for(store.cache._watch(), 5)
        assert set(store.cache.tasks) == {"keep", "gone"}, "no events from a compacted watch"
        # ... and the loop re-lists, emitting the difference as changes.
        store.cache.subscribe(changes.append)
        async with running_cache(store):
            await eventually(lambda: "gone" not in store.cache.tasks)
            assert set(store.cache.tasks) == {"keep", "new"}
        assert sorted((c.object_id, c.new is None) for c in changes) == [
            ("gone", True), ("new", False)]
    finally:
        await other_client.close()


async def test_update_of_absent_object_conflicts(store: Store) -> None:
    ghost = task("ghost")
    ghost.meta.version = 7
    with pytest.raises(Conflict):
        await store.commit([Update(ghost)])


async def test_read_modify_write_retries_lost_races_until_all_land(store: Store) -> None:
    """Twenty concurrent increments through the one retried compare-and-swap:
    each lost race is planned again from the refreshed cache, none is lost."""
    await store.create(task("counter"))

    def bump() -> Planned[None]:
        current = store.cache.tasks["counter"]
        bumped = pb.Task()
        bumped.CopyFrom(current)
        bumped.slot += 1
        return Planned([Update(bumped)], None)

    await asyncio.gather(*(store.read_modify_write(bump, attempts=50, backoff=0.001)
                           for _ in range(20)))
    assert store.cache.tasks["counter"].slot == 20


async def test_read_modify_write_is_bounded_and_a_refusal_stops_it(store: Store) -> None:
    await store.create(task("fixed"))
    stale = pb.Task()
    stale.CopyFrom(store.cache.tasks["fixed"])
    stale.meta.version -= 1  # always loses
    attempts: list[int] = []

    def losing() -> Planned[None]:
        attempts.append(1)
        return Planned([Update(stale)], None)

    with pytest.raises(Conflict):
        await store.read_modify_write(losing, attempts=3, backoff=0.001)
    assert len(attempts) == 3

    attempts.clear()

    def refused_after_a_conflict() -> bool:
        raise LookupError("given up")

    def losing_for_good() -> Planned[None]:
        attempts.append(1)
        return Planned([Update(stale)], None, refused_after_a_conflict)

    with pytest.raises(LookupError):
        await store.read_modify_write(losing_for_good, attempts=3, backoff=0.001)
    assert len(attempts) == 1
    assert store.cache.tasks["fixed"].meta.version == stale.meta.version + 1, "nothing written"


async def test_require_version_fails_once_the_object_is_gone_and_refreshes_the_cache(
        store: Store) -> None:
    secret = pb.Secret(id="sec1", spec=pb.SecretSpec(name="pw"))
    await store.create(secret)
    version = secret.meta.version
    await store.create(task("t1"), RequireVersion("secrets", "sec1", version))
    assert "t1" in store.cache.tasks
    # Deleted behind the cache's back (another controller): the compare fails,
    # nothing is written, and the failed transaction tells the cache.
    await store.etcd.txn([], [E.op_delete(store.keys.object("secrets", "sec1"))])
    with pytest.raises(Conflict):
        await store.create(task("t2"), RequireVersion("secrets", "sec1", version))
    _rev, raw = await store.etcd.get(store.keys.object("tasks", "t2"))
    assert raw is None
    assert "sec1" not in store.cache.secrets


async def test_require_unchanged_since_fails_after_any_write_under_the_prefix(
        store: Store) -> None:
    await store.create(pb.Service(id="s1", spec=pb.ServiceSpec(name="web")))
    revision, services = await store.read_all("services")
    assert set(services) == {"s1"}
    assert services["s1"].meta.version <= revision
    since = RequireUnchangedSince(store.keys.objects("services"), revision)
    await store.create(task("t1"), since)  # nothing under services/ changed
    # Writes elsewhere do not count; a deletion under the prefix does not either.
    await store.create(pb.Service(id="s2", spec=pb.ServiceSpec(name="db")))
    revision, _ = await store.read_all("services")
    await store.commit([Delete("services", "s2", store.cache.services["s2"].meta.version)])
    await store.create(task("t2"), RequireUnchangedSince(store.keys.objects("services"),
                                                         revision))
    # A service created, or one updated, after the read: the compare fails.
    revision, _ = await store.read_all("services")
    await store.create(pb.Service(id="s3", spec=pb.ServiceSpec(name="api")))
    with pytest.raises(Conflict):
        await store.create(task("t3"), RequireUnchangedSince(store.keys.objects("services"),
                                                             revision))
    revision, _ = await store.read_all("services")
    updated = pb.Service()
    updated.CopyFrom(store.cache.services["s1"])
    updated.spec.labels["x"] = "y"
    await store.update(updated)
    with pytest.raises(Conflict):
        await store.create(task("t3"), RequireUnchangedSince(store.keys.objects("services"),
                                                             revision))
    _rev, raw = await store.etcd.get(store.keys.object("tasks", "t3"))
    assert raw is None
