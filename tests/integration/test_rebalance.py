"""Rebalancing against a live control plane: a real etcd, the real controller and
simulated nodes speaking the real dispatcher API. Nodes join after a service was
placed; `swarmctl service rebalance` (dry run, the real thing, refusals) and
`swarm-controller --auto-rebalance` spread the tasks again through the rolling
update, while a listener on the controller's watch cache checks, at every change,
that no slot ever runs twice beyond a start-first overlap and that the running
tasks never drop below what the update config allows."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from swarm.agent.simulated import SimulatedCluster
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.orchestrator import rebalance
from swarm.controller.orchestrator.autorebalance import AutoRebalanceSettings
from swarm.controller.server import Controller
from swarm.controller.store import Change, TaskChange
from tests.etcd_server import EtcdServer
from tests.integration.conftest import FAST_SESSION, admin_channel, controller_config, sim_cluster
from tests.integration.live import LiveCluster, assert_one_line_error, ok, swarmctl
from tests.waiting import eventually

pytestmark = pytest.mark.integration


class Invariants:
    """Checks the service's running tasks at every change the controller's cache sees."""

    def __init__(self, controller: Controller, service_id: str, desired: int,
                 *, at_least: int, per_slot: int) -> None:
        self._cache = controller.store.cache
        self._service_id = service_id
        self.desired, self.at_least, self.per_slot = desired, at_least, per_slot
        self.violations: list[str] = []
        self.lowest = desired
        self.most_per_slot = 0
        self.changes = 0
        self.unsubscribe: Callable[[], None] = lambda: None

    def __call__(self, change: Change) -> None:
        if not isinstance(change, TaskChange):
            return
        self.changes += 1
        tasks = self._cache.tasks_by_service.get(self._service_id, {}).values()
        running = [t for t in tasks if t.status.state == pb.RUNNING]
        per_slot = Counter(t.slot for t in running)
        self.lowest = min(self.lowest, len(running))
        self.most_per_slot = max([self.most_per_slot, *per_slot.values()])
        if len(running) < self.at_least:
            self.violations.append(f"{len(running)} running, fewer than {self.at_least}")
        for slot, count in per_slot.items():
            if count > self.per_slot:
                self.violations.append(f"slot {slot} runs {count} times")


def watch(live: LiveCluster, invariants: Invariants) -> None:
    async def subscribe() -> None:
        invariants.unsubscribe = live.controller.store.cache.subscribe(invariants)

    live.run(subscribe())


def add_nodes(live: LiveCluster, count: int, prefix: str) -> SimulatedCluster:
    """More simulated nodes joining the running cluster (stopped with the test)."""
    async def join() -> SimulatedCluster:
        nodes = sim_cluster(live.controller, count, settings=FAST_SESSION,
                            hostname_prefix=prefix)
        nodes.start()
        await nodes.wait_connected(timeout=15)
        cache = live.controller.store.cache
        if any(network.spec.name == "ingress" for network in cache.networks.values()):
            # The allocator gives a node its ingress address a moment after it
            # registers: wait for it, so that a snapshot taken next is settled.
            await eventually(lambda: all(node.attachments for node in cache.nodes.values()),
                             15, "the new nodes' ingress addresses")
        return nodes

    return live.run(join())


@pytest.fixture
def late_nodes(live: LiveCluster) -> Iterator[list[SimulatedCluster]]:
    joined: list[SimulatedCluster] = []
    try:
        yield joined
    finally:
        for nodes in joined:
            live.run(nodes.stop())


def per_node(live: LiveCluster, name: str) -> dict[str, int]:
    hostnames = {node_id: host for host, node_id in live.node_ids().items()}
    return dict(Counter(hostnames[t.node_id] for t in live.running(name)))


@pytest.mark.parametrize(("order", "at_least", "per_slot"), [
    ("stop-first", 6 - 2, 1),  # parallelism 2: at most two slots down at once, none twice
    ("start-first", 6, 2),     # never below desired; a slot overlaps with its successor only
])
def test_rebalance_after_nodes_join(live: LiveCluster, late_nodes: list[SimulatedCluster],
                                    order: str, at_least: int, per_slot: int) -> None:
    ok(swarmctl(live, "service", "create", "web", "--image", "busybox", "--replicas", "6",
                "--update-parallelism", "2", "--update-order", order, "--update-monitor", "1s",
                "--timeout", "20s"))
    assert sorted(per_node(live, "web").values()) == [2, 2, 2]
    late_nodes.append(add_nodes(live, 3, "late"))

    before = live.snapshot()
    dry = ok(swarmctl(live, "service", "rebalance", "web", "--dry-run"))
    lines = dry.stdout.splitlines()
    assert len(lines) == 4, dry.stdout
    for line in lines[:3]:
        # web.N: sim-000X -> late-000Y (node sim-000X has 2 tasks of web, late-000Y has 0)
        assert line.startswith("web."), line
        assert " -> late-" in line, line
        assert "tasks of web, late-" in line, line
    assert lines[3] == ("dry run: 3 slots would move (2 2 2 0 0 0 tasks on 6 eligible nodes); "
                        "nothing was changed")
    assert live.snapshot() == before  # a dry run writes nothing

    service = live.service("web")
    invariants = Invariants(live.controller, service.id, 6, at_least=at_least,
                            per_slot=per_slot)
    watch(live, invariants)
    try:
        result = ok(swarmctl(live, "service", "rebalance", "web", "--timeout", "30s"))
    finally:
        live.run(asyncio.sleep(0))
        invariants.unsubscribe()
    assert len(result.stdout.splitlines()) == 3
    assert result.stderr.startswith("web: 6/6 tasks running (converged in ")
    assert sorted(per_node(live, "web").values()) == [1] * 6
    status = live.service("web").update_status
    assert (status.state, status.message) == (pb.UpdateStatus.COMPLETED,
                                              "rebalance completed: 3 slots moved")
    assert invariants.changes > 0
    assert invariants.violations == []
    if order == "start-first":
        assert invariants.most_per_slot == 2  # the overlap did happen
    inspect = ok(swarmctl(live, "service", "inspect", "web", "-o", "table"))
    assert "rebalance completed: 3 slots moved" in inspect.stdout

    # Balanced now: says so, exit 0, writes nothing.
    before = live.snapshot()
    again = ok(swarmctl(live, "service", "rebalance", "web"))
    assert again.stdout == "web: already balanced: 1 1 1 1 1 1 tasks on 6 eligible nodes\n"
    assert live.snapshot() == before


def test_rebalance_timeout_exits_3_detach_returns_and_inspect_shows_it(
        live: LiveCluster, late_nodes: list[SimulatedCluster]) -> None:
    for name in ("web", "api"):
        ok(swarmctl(live, "service", "create", name, "--image", "busybox", "--replicas", "6",
                    "--update-monitor", "30s", "--timeout", "20s"))
    late_nodes.append(add_nodes(live, 3, "late"))

    # The monitor period outlasts the wait: the rebalance goes on, swarmctl exits 3.
    result = swarmctl(live, "service", "rebalance", "web", "--timeout", "300ms")
    assert_one_line_error(result, "not converged after", exit_code=3)
    assert len(result.stdout.splitlines()) == 3
    inspect = ok(swarmctl(live, "service", "inspect", "web", "-o", "table")).stdout
    assert re.search(r"State:\s+updating\n.*\n\s*Message:\s+rebalancing: "
                     r"([1-3] slots? moving|3 slots moved, monitoring)\n", inspect), inspect
    # The orchestrator keeps writing the running rebalance's progress, so the
    # refusal is checked on what a request would change: the spec and the
    # rebalance asked for.
    before = live.service("web")
    again = swarmctl(live, "service", "rebalance", "web")
    assert_one_line_error(again, "service 'web' is already rebalancing (rebalancing: ",
                          exit_code=1)
    after = live.service("web")
    assert (after.spec, after.rebalance, after.spec_version) == \
        (before.spec, before.rebalance, before.spec_version)

    started = time.monotonic()
    detached = ok(swarmctl(live, "service", "rebalance", "-d", "api"))
    assert time.monotonic() - started < 5
    assert len(detached.stdout.splitlines()) == 3
    assert detached.stderr == ""
    service = live.service("api")
    assert service.update_status.state == pb.UpdateStatus.UPDATING
    assert service.update_status.message.startswith("rebalancing: ")
    assert service.rebalance.slots == 3
    assert sum(bool(t.rebalance) for t in live.tasks("api")) == 3


def test_rebalance_refusals_write_nothing(live: LiveCluster) -> None:
    ok(swarmctl(live, "service", "create", "agent", "--image", "busybox", "--mode", "global",
                "--timeout", "20s"))
    before = live.snapshot()
    result = swarmctl(live, "service", "rebalance", "agent")
    assert_one_line_error(result, "service 'agent' is global: rebalance applies to replicated "
                          "services only", exit_code=1)
    assert live.snapshot() == before

    result = swarmctl(live, "service", "rebalance", "nope", "--dry-run")
    assert_one_line_error(result, "nope", exit_code=1)

    result = swarmctl(live, "service", "rebalance", "agent", "--timeout", "0s")
    assert_one_line_error(result, "--timeout", exit_code=2)
    assert live.snapshot() == before


def test_rebalance_is_refused_during_an_update(live: LiveCluster) -> None:
    from tests.integration.live import BROKEN_IMAGE

    ok(swarmctl(live, "service", "create", "web", "--image", "busybox", "--replicas", "2",
                "--timeout", "20s"))
    # An update that cannot finish (the nodes reject the image): paused, where it
    # stays (while UPDATING the orchestrator still writes the service's status).
    ok(swarmctl(live, "service", "update", "web", "--image", BROKEN_IMAGE, "-d"))
    live.eventually(lambda: live.service("web").update_status.state == pb.UpdateStatus.PAUSED)
    before = {k: v for k, v in live.snapshot().items() if b"/services/" in k}
    result = swarmctl(live, "service", "rebalance", "web")
    assert_one_line_error(result, "service 'web' ", "rebalance once the update has completed or "
                          "been rolled back", exit_code=1)
    assert {k: v for k, v in live.snapshot().items() if b"/services/" in k} == before
    assert not any(t.rebalance for t in live.tasks("web"))


# ---------------------------------------------------------------- --auto-rebalance


@pytest.fixture
async def auto_controller(etcd_server: EtcdServer, etcd_prefix: str
                          ) -> AsyncIterator[Controller]:
    config = dataclasses.replace(controller_config(etcd_server.endpoint, etcd_prefix),
                                 auto_rebalance=AutoRebalanceSettings(enabled=True, interval=0.5))
    instance = Controller(config)
    await instance.start()
    try:
        yield instance
    finally:
        await instance.stop()


def _spec(name: str, replicas: int) -> pb.ServiceSpec:
    spec = pb.ServiceSpec(name=name)
    spec.replicated.replicas = replicas
    spec.task.container.image = "busybox"
    spec.update.parallelism = 1
    spec.update.monitor.FromSeconds(0)
    return spec


async def test_auto_rebalance_on_node_join_one_service_at_a_time(
        auto_controller: Controller) -> None:
    cache = auto_controller.store.cache
    first = sim_cluster(auto_controller, 2, settings=FAST_SESSION, hostname_prefix="first")
    later = sim_cluster(auto_controller, 2, settings=FAST_SESSION, hostname_prefix="later")
    overlaps: list[str] = []

    def one_at_a_time(change: Change) -> None:
        rebalancing = [s.spec.name for s in cache.services.values() if rebalance.in_progress(s)]
        if len(rebalancing) > 1:
            overlaps.append(" ".join(rebalancing))

    unsubscribe = cache.subscribe(one_at_a_time)
    first.start()
    channel = admin_channel(auto_controller)
    try:
        await first.wait_connected(timeout=15)
        control = cgrpc.ControlStub(channel)
        ids = {}
        for name in ("api", "web"):
            response = await control.CreateService(cpb.CreateServiceRequest(spec=_spec(name, 4)))
            ids[name] = response.service.id

        def running_on(name: str) -> Counter[str]:
            return Counter(t.node_id for t in cache.tasks_by_service.get(ids[name], {}).values()
                           if t.status.state == pb.RUNNING and t.desired_state == pb.RUNNING)

        await eventually(lambda: all(sum(running_on(n).values()) == 4 for n in ids), 15, "placed")
        assert auto_controller.auto_rebalancer.started == []  # no node arrived since

        later.start()
        await later.wait_connected(timeout=15)

        def spread() -> bool:
            return all(sorted(running_on(n).values()) == [1, 1, 1, 1] for n in ids) and all(
                cache.services[i].update_status.message.startswith("rebalance completed")
                for i in ids.values())

        await eventually(spread, 30, "both services spread over the four nodes")
        assert auto_controller.auto_rebalancer.started == ["api", "web"]
        assert overlaps == []
        for service_id in ids.values():
            assert cache.services[service_id].update_status.message == (
                "rebalance completed: 2 slots moved")
    finally:
        unsubscribe()
        await channel.close(None)
        await later.stop()
        await first.stop()
