"""Size bounds (issue 11 item 4): transactions split by bytes, the service
spec limit at create and update, and one service that cannot be written
never holding up the others.

The issue's case, reproduced: `service create big --replicas 200 --env
BIG=<20 KiB>` used to make the orchestrator's 128-task transaction (2.5 MiB)
exceed etcd's 1.5 MiB request limit, crash the loop for every service, and
leave an unrelated service at 0/4."""

from __future__ import annotations

import json

import pytest

from swarm.api.v1 import objects_pb2 as pb
from swarm.api.validation import MAX_SERVICE_SPEC_BYTES
from swarm.controller.store import Create, Op, ReserveName, Store, StoreRejected
from tests.integration.live import LiveCluster, assert_one_line_error, ok, swarmctl
from tests.integration.test_store import task


def _env(size: int) -> str:
    return "BIG=" + "x" * size


def test_the_issue_case_converges_with_an_unrelated_service(live: LiveCluster) -> None:
    ok(swarmctl(live, "service", "create", "-d", "big", "--image", "busybox",
                "--replicas", "200", "--env", _env(20 * 1024)))
    ok(swarmctl(live, "service", "create", "-d", "small", "--image", "busybox"))
    ok(swarmctl(live, "service", "scale", "-d", "small=4"))
    live.eventually(lambda: len(live.running("small")) == 4, timeout=60,
                    message="the unrelated service at 4/4")
    live.eventually(lambda: len(live.running("big")) == 200, timeout=120,
                    message="the big service at 200/200")
    assert not live.service("big").write_error.message


def test_the_largest_spec_on_an_overlay_network_converges(live: LiveCluster) -> None:
    # The allocator rewrites these tasks with their addresses, the largest a
    # spec may be, in batches bounded by bytes as well as operations.
    ok(swarmctl(live, "network", "create", "back", "--subnet", "10.211.0.0/24"))
    ok(swarmctl(live, "service", "create", "-d", "wide", "--image", "busybox", "--replicas",
                "120", "--network", "back", "--publish", "8080:80",
                "--env", _env(MAX_SERVICE_SPEC_BYTES - 1024)))
    live.eventually(lambda: len(live.running("wide")) == 120, timeout=120,
                    message="120 tasks of the largest spec on an overlay network")
    addresses = {a.addresses[0] for t in live.running("wide") for a in t.networks}
    assert len(addresses) == 240  # one on "back" and one on "ingress" per task


def test_a_spec_over_the_limit_is_refused_and_nothing_written(live: LiveCluster) -> None:
    before = live.snapshot()
    result = swarmctl(live, "service", "create", "-d", "huge", "--image", "busybox",
                      "--env", _env(MAX_SERVICE_SPEC_BYTES))
    assert_one_line_error(result, "spec: the service spec is ",
                          f"over the limit of {MAX_SERVICE_SPEC_BYTES} bytes (32 KiB)",
                          exit_code=1)
    assert live.snapshot() == before

    ok(swarmctl(live, "service", "create", "-d", "web", "--image", "busybox"))
    live.eventually(lambda: len(live.running("web")) == 1, message="web running")
    before = live.snapshot()
    result = swarmctl(live, "service", "update", "-d", "web",
                      "--env-add", _env(MAX_SERVICE_SPEC_BYTES))
    assert_one_line_error(result, "spec: the service spec is ", "over the limit of",
                          exit_code=1)
    assert live.snapshot() == before


def test_a_service_that_cannot_be_written_does_not_stop_the_others(live: LiveCluster) -> None:
    # As an older controller (or a hand in etcd) could have left it: over the limit.
    legacy = pb.Service(id="legacy0000000000000000000", spec_version=1, spec=pb.ServiceSpec(
        name="legacy", replicated=pb.ReplicatedService(replicas=3)))
    legacy.spec.task.container.image = "busybox"
    legacy.spec.task.container.env.append(_env(4 * MAX_SERVICE_SPEC_BYTES))
    store = live.controller.store
    live.run(store.commit([Create(legacy), ReserveName("services", "legacy", legacy.id)]))

    ok(swarmctl(live, "service", "create", "-d", "small", "--image", "busybox"))
    ok(swarmctl(live, "service", "scale", "-d", "small=4"))
    live.eventually(lambda: len(live.running("small")) == 4, timeout=30,
                    message="the other service at 4/4")
    live.eventually(lambda: bool(live.service("legacy").write_error.message), timeout=10,
                    message="the failure reported in the service")
    error = live.service("legacy").write_error
    assert "over the limit of 32768" in error.message
    assert error.attempts >= 1
    assert live.tasks("legacy") == []

    # Shown where an operator looks: ps says why tasks are missing, inspect has it.
    result = ok(swarmctl(live, "service", "ps", "legacy"))
    assert result.stderr.startswith("service legacy: the controller cannot write its tasks (")
    assert "over the limit of 32768" in result.stderr
    inspected = json.loads(ok(swarmctl(live, "service", "inspect", "legacy")).stdout)
    assert "over the limit" in inspected[0]["write_error"]["message"]

    # Backing off: a few attempts in a few seconds, not a hot loop.
    attempts = live.service("legacy").write_error.attempts
    assert attempts <= 4, attempts


# ---------------------------------------------------------------- the store itself


async def test_transactions_are_split_by_bytes(store: Store) -> None:
    # 40 tasks of 100 KiB: 4 MB in one 128-operation transaction would be refused.
    tasks = [task(f"fat{i:02d}") for i in range(40)]
    for each in tasks:
        each.spec.container.env.append(_env(100 * 1024))
    rejected: list[Op] = []
    failed = await store.commit_chunked([Create(t) for t in tasks], rejected=rejected)
    assert failed == []
    assert rejected == []
    _, kvs = await store.etcd.range_prefix(store.keys.prefix + b"tasks/")
    assert len(kvs) == 40


async def test_a_group_etcd_refuses_fails_alone(store: Store) -> None:
    huge = task("huge")
    huge.spec.container.env.append(_env(1600 * 1024))  # over etcd's 1.5 MiB request limit
    groups = [[Create(task("before"))], [Create(huge)], [Create(task("after"))]]
    rejected: dict[int, StoreRejected] = {}
    failed = await store.commit_groups(groups, rejected=rejected)
    assert failed == []
    assert list(rejected) == [1]
    assert "request is too large" in str(rejected[1]) or "larger than max" in str(rejected[1])
    _, kvs = await store.etcd.range_prefix(store.keys.prefix + b"tasks/")
    assert sorted(kv.key.rsplit(b"/", 1)[1] for kv in kvs) == [b"after", b"before"]
    # Without a place to put it, the refusal is raised as a store error, not a gRPC one.
    with pytest.raises(StoreRejected):
        await store.commit_groups([[Create(huge)]])
