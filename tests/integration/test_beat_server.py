"""Heartbeats answered while the controller's event loop is busy (real
processes: a controller with mutual TLS, a real etcd, a simulated agent).

The controller is started with the test-only --debug-stall-loop: on SIGUSR1
its event loop runs busy (pure Python, as a loop busy with a burst) for
STALL seconds, longer than the agent waits for a beat's answer (3 periods).
With the heartbeat server (controller/dispatcher/beatserver.py) the agent's
beats are answered on its threads meanwhile: the session stays open and the
node stays READY. The same stall with the heartbeat server off ends the
session (the beat waits for the loop and times out): the test tells the two
apart."""

from __future__ import annotations

import asyncio
import signal
import time

import grpc

from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from tests.etcd_server import EtcdServer
from tests.processes import admin_channel, start_controller, start_simulated_agents, worker_token
from tests.waiting import eventually_async

HEARTBEAT = 1.0
STALL = 4.5  # past the agent's patience (3 periods), within beatserver.stall_limit (6)


async def _stall_controller(heartbeat_listen: str, etcd: EtcdServer, prefix: str,
                            heartbeat: float = HEARTBEAT, stall: float = STALL,
                            ) -> tuple[str, float, pb.NodeStatus.State.ValueType]:
    """The agent's log after the controller's loop stalled, how long a
    control call sent in the stall took, and the node's state after."""
    controller = start_controller(etcd.endpoint, prefix, heartbeat_period=heartbeat,
                                  extra_args=["--debug-stall-loop", str(stall),
                                              "--heartbeat-listen", heartbeat_listen])
    agent = None
    try:
        token = await worker_token(controller)
        agent = start_simulated_agents([controller], 1, token, hostname_prefix="beating")
        async with admin_channel(controller) as channel:
            control = cgrpc.ControlStub(channel)

            async def ready() -> bool:
                nodes = (await control.ListNodes(cpb.ListNodesRequest(), timeout=5)).nodes
                return len(nodes) == 1 and nodes[0].status.state == pb.NodeStatus.READY

            await eventually_async(ready, timeout=20, message="the node READY")
            await eventually_async(lambda: _logged(agent.log(), " open"), timeout=10,
                                   message="the agent's session open")
            await asyncio.sleep(heartbeat * 2)  # beating on schedule
            controller.signal(signal.SIGUSR1)
            await asyncio.sleep(0.2)
            sent = time.monotonic()
            await control.ListNodes(cpb.ListNodesRequest(), timeout=30)
            control_wait = time.monotonic() - sent
            # Past the stall, and long enough for a lost session to show.
            await asyncio.sleep(stall + heartbeat * 2 - control_wait)
            nodes = (await control.ListNodes(cpb.ListNodesRequest(), timeout=10)).nodes
        return agent.log(), control_wait, nodes[0].status.state
    finally:
        if agent is not None:
            agent.stop()
        controller.stop()


async def _logged(log: str, needle: str) -> bool:
    return needle in log


def _sessions_opened(log: str) -> int:
    return sum(" open" in line and "session " in line for line in log.splitlines())


async def test_beats_are_answered_while_the_loop_is_busy(etcd_server: EtcdServer,
                                                         etcd_prefix: str) -> None:
    log, control_wait, state = await _stall_controller("127.0.0.1:0", etcd_server, etcd_prefix)
    # The loop really was busy: a call on the control port waited for it.
    assert control_wait > STALL / 2, control_wait
    assert _sessions_opened(log) == 1, log
    assert "failed" not in log, log
    assert "beating on the session's channel" not in log, log
    assert state == pb.NodeStatus.READY


async def test_without_the_beat_server_the_same_stall_ends_the_session(
        etcd_server: EtcdServer, etcd_prefix: str) -> None:
    log, control_wait, _state = await _stall_controller("off", etcd_server, etcd_prefix)
    assert control_wait > STALL / 2, control_wait
    # The beat waited for the loop past its deadline: the agent gave up the
    # session and opened another.
    assert grpc.StatusCode.DEADLINE_EXCEEDED.name in log, log
    assert _sessions_opened(log) >= 2, log


async def test_a_wedged_loop_loses_its_agents(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    # Busy past beatserver.stall_limit (6 periods): the heartbeat server
    # refuses, the agent beats on the session's channel, which the stalled
    # loop does not answer, and the session ends (a controller whose loop
    # no longer turns does not keep its agents; here it is the only one, so
    # the agent opens a new session once the loop runs again).
    log, control_wait, _state = await _stall_controller("127.0.0.1:0", etcd_server, etcd_prefix,
                                                        heartbeat=0.5, stall=6.0)
    assert control_wait > 3.0, control_wait
    assert "heartbeat server of" in log, log
    assert "UNAVAILABLE" in log, log
    assert _sessions_opened(log) >= 2, log
