"""Every controller serves agent sessions (controller/dispatcher/): real
controller processes (mutual TLS), a real etcd, simulated agents in their
own processes, faults by SIGKILL and SIGSTOP.

What an operator cares about:
- agents whose session is on a follower stay READY (the follower reports
  their beats to the leader), and their tasks run;
- the follower's death moves them to another controller with nothing
  replaced: no node DOWN, no task replaced or moved, no slot run twice;
- a node that falls silent with its follower (it cannot move: paused) IS
  marked DOWN by the leader and its tasks are replaced elsewhere, and comes
  back READY when it wakes up.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Iterator

import pytest

from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from tests.etcd_server import EtcdServer
from tests.integration.test_failover import running_slots
from tests.integration.test_leadership import leader_of
from tests.processes import Proc, admin_channel, start_controller, start_simulated_agents, worker_token
from tests.waiting import eventually_async

LEASE_TTL = 2
HEARTBEAT = 0.5  # a silent node is DOWN after 3 of these
DOWN_AFTER = HEARTBEAT * 3


@pytest.fixture
def controllers(etcd_server: EtcdServer, etcd_prefix: str) -> Iterator[list[Proc]]:
    procs: list[Proc] = []
    try:
        for _ in range(3):
            procs.append(start_controller(etcd_server.endpoint, etcd_prefix, lease_ttl=LEASE_TTL,
                                          heartbeat_period=HEARTBEAT))
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def sessions_opened(agents: Proc) -> dict[str, int]:
    """Controller address -> sessions the agents opened with it (their log)."""
    opened: dict[str, int] = {}
    for addr in re.findall(r"session \S+ with (\S+) open", agents.log()):
        opened[addr] = opened.get(addr, 0) + 1
    return opened


async def roles(etcd_server: EtcdServer, prefix: str, procs: list[Proc]) -> tuple[Proc, list[Proc]]:
    """The leader and the followers, once there is a leader."""
    addrs = {proc.addr: proc for proc in procs}

    async def elected() -> bool:
        return await leader_of(etcd_server, prefix) in addrs

    await eventually_async(elected, timeout=10, message="a leader")
    leader = addrs[await leader_of(etcd_server, prefix)]
    return leader, [p for p in procs if p is not leader]


async def nodes(control: cgrpc.ControlAsyncStub) -> list[pb.Node]:
    return list((await control.ListNodes(cpb.ListNodesRequest(), timeout=5)).nodes)


async def tasks(control: cgrpc.ControlAsyncStub) -> list[pb.Task]:
    return list((await control.ListTasks(cpb.ListTasksRequest(), timeout=5)).tasks)


async def create(control: cgrpc.ControlAsyncStub, name: str, replicas: int) -> None:
    spec = pb.ServiceSpec(name=name, replicated=pb.ReplicatedService(replicas=replicas))
    spec.task.container.image = "busybox"
    await control.CreateService(cpb.CreateServiceRequest(spec=spec), timeout=5)


async def running(control: cgrpc.ControlAsyncStub, count: int) -> bool:
    return sum(t.status.state == pb.RUNNING and t.desired_state == pb.RUNNING
               for t in await tasks(control)) == count


async def test_a_follower_served_session_survives_the_followers_death(
        etcd_server: EtcdServer, etcd_prefix: str, controllers: list[Proc]) -> None:
    leader, (follower, other) = await roles(etcd_server, etcd_prefix, controllers)
    # Given only the follower's address: the sessions open there and stay
    # (the agents learn the other controllers from the session).
    agents = start_simulated_agents([follower], 4, await worker_token(follower))
    try:
        async with admin_channel(leader) as channel:
            control = cgrpc.ControlStub(channel)

            async def all_ready() -> bool:
                found = await nodes(control)
                return len(found) == 4 and all(n.status.state == pb.NodeStatus.READY
                                               for n in found)

            await eventually_async(all_ready, timeout=20, message="4 nodes ready")
            # A node is READY once the controller opened its session; the
            # agent logs it when the first message arrives, a moment later.

            async def all_logged_on_the_follower() -> bool:
                return sum(sessions_opened(agents).values()) >= 4

            await eventually_async(all_logged_on_the_follower, timeout=10,
                                   message="4 sessions logged")
            assert sessions_opened(agents) == {follower.addr: 4}, agents.log()[-3000:]
            # The leader hears of them only through the follower's reports:
            # they stay READY for several DOWN thresholds.
            deadline = time.monotonic() + DOWN_AFTER * 3
            while time.monotonic() < deadline:
                assert await all_ready(), "a node served by a follower was marked down"
                await asyncio.sleep(0.1)

            await create(control, "web", 12)
            # Placed by the leader, sent by the follower, reported RUNNING
            # through the follower's status writes.
            await eventually_async(lambda: running(control, 12), timeout=20,
                                   message="12 running")
            before = {t.id: t.node_id for t in await tasks(control)}

            follower.signal(signal.SIGKILL)
            moved_by = time.monotonic() + 10

            async def moved() -> bool:
                opened = sessions_opened(agents)
                return sum(n for addr, n in opened.items() if addr != follower.addr) >= 4

            # Watch through several DOWN thresholds while the agents move.
            deadline = time.monotonic() + DOWN_AFTER * 4
            while time.monotonic() < deadline or not await moved():
                assert time.monotonic() < moved_by, \
                    f"agents did not move: {sessions_opened(agents)}"
                down = [n.description.hostname for n in await nodes(control)
                        if n.status.state == pb.NodeStatus.DOWN]
                assert not down, f"nodes marked DOWN after a follower's death: {down}"
                now = await tasks(control)
                assert {t.id: t.node_id for t in now} == before, \
                    "tasks were replaced or moved by a follower's death"
                twice = {s: ids for s, ids in running_slots(now).items() if len(ids) > 1}
                assert not twice, f"slots running twice: {twice}"
                await asyncio.sleep(0.1)
            assert set(sessions_opened(agents)) <= {follower.addr, leader.addr, other.addr}

            # The cluster still acts, through the agents' new controllers.
            await control.ScaleService(cpb.ScaleServiceRequest(ref="web", replicas=15), timeout=5)
            await eventually_async(lambda: running(control, 15), timeout=15,
                                   message="15 running after the move")
            now = await tasks(control)
            assert {t.id: t.node_id for t in now if t.id in before} == before
            assert all(len(ids) == 1 for ids in running_slots(now).values())
    finally:
        agents.stop()


async def test_a_node_silent_with_its_follower_is_marked_down_and_replaced(
        etcd_server: EtcdServer, etcd_prefix: str, controllers: list[Proc]) -> None:
    leader, (follower, other) = await roles(etcd_server, etcd_prefix, controllers)
    token = await worker_token(follower)
    stuck = start_simulated_agents([follower], 2, token, hostname_prefix="stuck")
    healthy = start_simulated_agents([other], 2, token, hostname_prefix="healthy")
    try:
        async with admin_channel(leader) as channel:
            control = cgrpc.ControlStub(channel)

            async def states() -> dict[str, int]:
                return {n.description.hostname: n.status.state for n in await nodes(control)}

            async def all_ready() -> bool:
                found = await states()
                return len(found) == 4 and set(found.values()) == {pb.NodeStatus.READY}

            await eventually_async(all_ready, timeout=20, message="4 nodes ready")
            assert set(sessions_opened(stuck)) == {follower.addr}
            await create(control, "web", 8)
            await eventually_async(lambda: running(control, 8), timeout=20, message="8 running")
            stuck_ids = {n.id for n in await nodes(control)
                         if n.description.hostname.startswith("stuck")}
            on_stuck = {t.id for t in await tasks(control) if t.node_id in stuck_ids}
            assert on_stuck, "no task on the nodes about to fall silent"

            # The nodes cannot move (paused) and their follower is gone for good.
            stuck.signal(signal.SIGSTOP)
            follower.signal(signal.SIGKILL)
            silent = time.monotonic()

            async def stuck_down() -> bool:
                found = await states()
                return all(state == pb.NodeStatus.DOWN for host, state in found.items()
                           if host.startswith("stuck"))

            await eventually_async(stuck_down, timeout=DOWN_AFTER + 10,
                                   message="the silent nodes marked down")
            took = time.monotonic() - silent
            # Judged on the nodes' last beats (up to one beat interval, 0.8
            # period, and one report, half a period, before the signals).
            assert took >= DOWN_AFTER - HEARTBEAT * 1.3, f"marked down after only {took:.2f}s"
            found = await states()
            assert all(state == pb.NodeStatus.READY for host, state in found.items()
                       if host.startswith("healthy"))

            async def replaced() -> bool:
                now = await tasks(control)
                live = [t for t in now if t.desired_state == pb.RUNNING
                        and t.status.state == pb.RUNNING]
                return len(live) == 8 and not any(t.node_id in stuck_ids for t in live)

            await eventually_async(replaced, timeout=20, message="their tasks replaced elsewhere")
            now = await tasks(control)
            assert all(t.desired_state > pb.RUNNING for t in now if t.id in on_stuck)
            slots = sorted(t.slot for t in now if t.desired_state == pb.RUNNING
                           and t.status.state == pb.RUNNING)
            assert slots == list(range(1, 9))

            # Woken, they find another controller and are READY again.
            stuck.signal(signal.SIGCONT)
            await eventually_async(all_ready, timeout=20, message="the nodes back")
    finally:
        stuck.signal(signal.SIGCONT)
        stuck.stop()
        healthy.stop()
