"""A leader's death must not touch the data plane: real controller processes,
a real etcd and simulated agents (their own process), the leader SIGKILLed.

What an operator cares about: another controller leads within the lease TTL,
no node is marked DOWN, no task is replaced or moved, no slot runs twice, and
the new leader then acts on a change."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

import swarm
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from swarm.cli.main import app
from swarm.controller.server import Controller
from tests.etcd_server import EtcdServer
from tests.integration.conftest import FAST_SESSION, controller_config, sim_cluster
from tests.integration.test_leadership import leader_of
from tests.processes import (
    Proc,
    admin_channel,
    start_controller,
    start_simulated_agents,
    worker_token,
)
from tests.waiting import eventually, eventually_async, until

LEASE_TTL = 2
HEARTBEAT = 0.5  # a silent node is DOWN after 3 of these: well inside one failover


@pytest.fixture
def controllers(etcd_server: EtcdServer, etcd_prefix: str) -> Iterator[list[Proc]]:
    procs: list[Proc] = []
    try:
        for _ in range(2):
            procs.append(start_controller(etcd_server.endpoint, etcd_prefix, lease_ttl=LEASE_TTL,
                                          heartbeat_period=HEARTBEAT))
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def running_slots(tasks: list[pb.Task]) -> dict[int, list[str]]:
    """Slot -> the tasks that run in it (observed RUNNING)."""
    slots: dict[int, list[str]] = {}
    for task in tasks:
        if task.status.state == pb.RUNNING:
            slots.setdefault(task.slot, []).append(task.id)
    return slots


@pytest.mark.parametrize("known", ["all", "one"])
async def test_leader_kill_moves_no_task(etcd_server: EtcdServer, etcd_prefix: str,
                                         controllers: list[Proc], known: str) -> None:
    """known: the controllers the agents are started with -- all of them, or
    only the leader (they learn the other from their session)."""
    addrs = {proc.addr: proc for proc in controllers}

    async def has_leader() -> bool:
        return await leader_of(etcd_server, etcd_prefix) in addrs

    await eventually_async(has_leader, timeout=10, message="a leader")
    first = await leader_of(etcd_server, etcd_prefix)
    follower = next(a for a in addrs if a != first)
    given = list(controllers) if known == "all" else [addrs[first]]
    agents = start_simulated_agents(given, 3, await worker_token(addrs[first]))
    try:
        async with admin_channel(addrs[follower]) as channel:
            control = cgrpc.ControlStub(channel)

            async def nodes_ready() -> bool:
                nodes = (await control.ListNodes(cpb.ListNodesRequest())).nodes
                return len(nodes) == 3 and all(
                    n.status.state == pb.NodeStatus.READY for n in nodes)

            await eventually_async(nodes_ready, timeout=15, message="3 nodes ready")
            spec = pb.ServiceSpec(name="web", replicated=pb.ReplicatedService(replicas=12))
            spec.task.container.image = "busybox"
            await control.CreateService(cpb.CreateServiceRequest(spec=spec))

            async def all_running() -> bool:
                tasks = (await control.ListTasks(cpb.ListTasksRequest())).tasks
                return sum(t.status.state == pb.RUNNING for t in tasks) == 12

            await eventually_async(all_running, timeout=15, message="12 running")
            before = {t.id: t.node_id for t in
                      (await control.ListTasks(cpb.ListTasksRequest())).tasks}

            killed = time.monotonic()
            addrs[first].signal(signal.SIGKILL)  # no goodbye: the lease must expire

            async def follower_leads() -> bool:
                return await leader_of(etcd_server, etcd_prefix) == follower

            await eventually_async(follower_leads, timeout=LEASE_TTL + 3,
                                   message="the follower takes over")
            took = time.monotonic() - killed
            assert took <= LEASE_TTL + 1.0, f"failover took {took:.1f}s (lease {LEASE_TTL}s)"

            # Watch for several DOWN thresholds after the election.
            deadline = time.monotonic() + HEARTBEAT * 3 * 4
            while time.monotonic() < deadline:
                nodes = (await control.ListNodes(cpb.ListNodesRequest())).nodes
                down = [n.description.hostname for n in nodes
                        if n.status.state == pb.NodeStatus.DOWN]
                assert not down, f"nodes marked DOWN after a leader kill: {down}"
                tasks = (await control.ListTasks(cpb.ListTasksRequest())).tasks
                now = {t.id: t.node_id for t in tasks}
                assert now == before, "tasks were replaced or moved by a leader kill"
                twice = {s: ids for s, ids in running_slots(list(tasks)).items() if len(ids) > 1}
                assert not twice, f"slots running twice: {twice}"
                await asyncio.sleep(0.1)

            await eventually_async(nodes_ready, timeout=5, message="agents on the new leader")
            await control.ScaleService(cpb.ScaleServiceRequest(ref="web", replicas=15))

            async def fifteen_running() -> bool:
                tasks = (await control.ListTasks(cpb.ListTasksRequest())).tasks
                return sum(t.status.state == pb.RUNNING and t.desired_state == pb.RUNNING
                           for t in tasks) == 15

            await eventually_async(fifteen_running, timeout=10, message="the new leader schedules")
            tasks = (await control.ListTasks(cpb.ListTasksRequest())).tasks
            assert {t.id: t.node_id for t in tasks if t.id in before} == before
            assert all(len(ids) == 1 for ids in running_slots(list(tasks)).values())
    finally:
        agents.stop()


def controller_ls(via: Proc, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    monkeypatch.setenv("SWARMCTL_TLS_DIR", via.extra["admin"])
    result = CliRunner().invoke(app, ["--controller", via.addr, "controller", "ls", "-o", "json"])
    assert result.exit_code == 0, result.output
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def test_controller_ls_follows_the_leader(etcd_server: EtcdServer, etcd_prefix: str,
                                          controllers: list[Proc],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    addrs = {proc.addr: proc for proc in controllers}

    def listed() -> str:
        rows = controller_ls(controllers[1], monkeypatch)
        leaders = [r["addr"] for r in rows if r["leader"] is True]
        if sorted(str(r["addr"]) for r in rows) != sorted(addrs) or len(leaders) != 1:
            return f"listed {rows}"
        return ""

    until(listed, timeout=10)
    rows = controller_ls(controllers[1], monkeypatch)
    assert all(r["version"] == swarm.__version__ for r in rows)
    assert all(isinstance(r["uptime_s"], int) and 0 <= r["uptime_s"] < 120 for r in rows)
    assert {r["leader"] for r in rows} == {True, False}  # JSON says false, not nothing
    leader = next(str(r["addr"]) for r in rows if r["leader"])
    survivor = next(p for a, p in addrs.items() if a != leader)
    addrs[leader].signal(signal.SIGKILL)

    def survivor_alone_leads() -> str:
        rows = controller_ls(survivor, monkeypatch)
        if [(r["addr"], r["leader"]) for r in rows] != [(survivor.addr, True)]:
            return f"listed {rows}"
        return ""

    # The dead one's record lapses with its lease; the survivor is elected.
    until(survivor_alone_leads, timeout=LEASE_TTL + 5)

    table = CliRunner().invoke(app, ["--controller", survivor.addr, "controller", "ls"])
    assert table.exit_code == 0, table.output
    assert table.stdout.splitlines()[0].split() == ["ADDRESS", "LEADER", "VERSION", "UPTIME"]
    assert survivor.addr in table.stdout
    assert "yes" in table.stdout


async def test_agents_learn_controllers_added_and_removed(etcd_server: EtcdServer,
                                                          etcd_prefix: str) -> None:
    """Agents started with one controller's address learn of a controller
    started later, and forget one that stops, from their session."""
    first = Controller(controller_config(etcd_server.endpoint, etcd_prefix))
    await first.start()
    second: Controller | None = None
    nodes = sim_cluster(first, 2, settings=FAST_SESSION)
    try:
        nodes.start()
        await nodes.wait_connected(timeout=15)
        first_addr = f"127.0.0.1:{first.port}"
        assert all(n.session.controllers == [first_addr] for n in nodes.nodes)
        second = Controller(controller_config(etcd_server.endpoint, etcd_prefix))
        await second.start()
        both = sorted([first_addr, f"127.0.0.1:{second.port}"])
        await eventually(lambda: all(sorted(n.session.controllers) == both for n in nodes.nodes),
                         timeout=10, message="agents told of the second controller")
        await second.stop()
        second = None
        await eventually(lambda: all(n.session.controllers == [first_addr] for n in nodes.nodes),
                         timeout=10, message="agents told the second one left")
    finally:
        await nodes.stop()
        if second is not None:
            await second.stop()
        await first.stop()


async def test_a_dead_leaders_seat_is_taken_before_its_lease_runs_out(
        etcd_server: EtcdServer, etcd_prefix: str) -> None:
    """A SIGKILLed leader's address refuses connections and its lease is not
    refreshed: a follower takes the seat without waiting out the lease."""
    ttl = 5
    procs = [start_controller(etcd_server.endpoint, etcd_prefix, lease_ttl=ttl,
                              heartbeat_period=HEARTBEAT) for _ in range(2)]
    try:
        addrs = {proc.addr: proc for proc in procs}

        async def has_leader() -> bool:
            return await leader_of(etcd_server, etcd_prefix) in addrs

        await eventually_async(has_leader, timeout=15, message="a leader")
        first = await leader_of(etcd_server, etcd_prefix)
        survivor = next(p for a, p in addrs.items() if a != first)
        addrs[first].signal(signal.SIGKILL)
        killed = time.monotonic()

        async def survivor_leads() -> bool:
            return await leader_of(etcd_server, etcd_prefix) == survivor.addr

        await eventually_async(survivor_leads, timeout=ttl + 3, message="the survivor leads")
        took = time.monotonic() - killed
        assert "taking over without waiting for its lease" in survivor.log()
        assert took < ttl, f"{took:.1f}s: no sooner than the lease"
    finally:
        for proc in procs:
            proc.stop()
