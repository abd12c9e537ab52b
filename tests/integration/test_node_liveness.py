"""Node liveness with real processes: a controller (mutual TLS, its node
monitor judging only up to the probe it sends through its own queue,
controller/dispatcher/heartbeats.py), a real etcd, and simulated agents in
three processes. The node whose process is SIGKILLed and the one whose
process is SIGSTOPped are marked DOWN within the documented bound
(heartbeats.worst_detection) and not before their missed periods; the
node that keeps beating stays READY throughout."""

from __future__ import annotations

import asyncio
import signal
import time

from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb
from swarm.controller.dispatcher.heartbeats import HEARTBEAT_MISSES, worst_detection
from tests.etcd_server import EtcdServer
from tests.processes import admin_channel, start_controller, start_simulated_agents, worker_token
from tests.waiting import eventually_async

HEARTBEAT = 0.5
# Polling the node list, the DOWN write and a busy test machine.
SLACK = 1.5


async def test_killed_and_stopped_agents_are_marked_down_in_bounded_time(
        etcd_server: EtcdServer, etcd_prefix: str) -> None:
    controller = start_controller(etcd_server.endpoint, etcd_prefix, heartbeat_period=HEARTBEAT)
    token = await worker_token(controller)
    killed = start_simulated_agents([controller], 1, token, hostname_prefix="killed")
    stopped = start_simulated_agents([controller], 1, token, hostname_prefix="stopped")
    steady = start_simulated_agents([controller], 1, token, hostname_prefix="steady")
    try:
        async with admin_channel(controller) as channel:
            control = cgrpc.ControlStub(channel)

            async def states() -> dict[str, int]:
                nodes = (await control.ListNodes(cpb.ListNodesRequest())).nodes
                return {n.description.hostname.rstrip("0123456789-"): n.status.state
                        for n in nodes}

            async def all_ready() -> bool:
                now = await states()
                return len(now) == 3 and all(s == pb.NodeStatus.READY for s in now.values())

            await eventually_async(all_ready, timeout=20, message="3 nodes READY")
            await asyncio.sleep(HEARTBEAT * 2)  # beating on schedule
            killed.signal(signal.SIGKILL)
            stopped.signal(signal.SIGSTOP)
            silent_from = time.monotonic()
            down_after: dict[str, float] = {}
            limit = worst_detection(HEARTBEAT, HEARTBEAT / 2) + SLACK
            while len(down_after) < 2 and time.monotonic() - silent_from < limit + 5:
                now = await states()
                assert now.get("steady") == pb.NodeStatus.READY, "the live node was marked down"
                for name in ("killed", "stopped"):
                    if now.get(name) == pb.NodeStatus.DOWN and name not in down_after:
                        down_after[name] = time.monotonic() - silent_from
                await asyncio.sleep(0.05)
            assert set(down_after) == {"killed", "stopped"}, f"still up: {down_after}"
            for name, seconds in down_after.items():
                # Its last beat came at most 0.8 period before it fell silent.
                assert seconds >= HEARTBEAT_MISSES * HEARTBEAT - 0.8 * HEARTBEAT, (name, seconds)
                assert seconds <= limit, (name, seconds)
            await asyncio.sleep(HEARTBEAT * 4)
            assert (await states())["steady"] == pb.NodeStatus.READY
    finally:
        stopped.signal(signal.SIGCONT)
        killed.stop()
        stopped.stop()
        steady.stop()
        controller.stop()
