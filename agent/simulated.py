"""A simulated node agent, for control-plane tests and benchmarks: real
sessions over the real dispatcher gRPC API, but a FAKE worker that runs no
containers — it reports a task RUNNING as soon as it is assigned and SHUTDOWN
when asked to stop. Hundreds of nodes run in one process over a few shared
channels.

    python -m agent.simulated --controller 127.0.0.1:2377 --nodes 200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Collection, Sequence

from swarmapi.loops import cancel_all, start_supervised
from swarmapi.v1 import dispatcher_pb2 as dpb
from swarmapi.v1 import objects_pb2 as pb

from .session import AgentSession, ChannelFactory, SessionSettings, insecure_channels

log = logging.getLogger(__name__)


def _status(state: int, message: str) -> pb.TaskStatus:
    status = pb.TaskStatus(state=state, message=message)  # type: ignore[arg-type]
    status.timestamp.GetCurrentTime()
    return status


def _has_healthcheck(task: pb.Task) -> bool:
    test = list(task.spec.container.healthcheck.test)
    return bool(test) and test != ["NONE"]


class FakeWorker:
    """Pretends to run tasks: assigned -> RUNNING (HEALTHY when the task has a health
    check), desired shutdown -> SHUTDOWN. A task whose image is in `reject_images` is
    REJECTED instead, as a real agent rejects an image it cannot pull: this is how tests
    drive the restart supervisor and the CLI's convergence failures."""

    def __init__(self, reject_images: Collection[str] = ()) -> None:
        self.session: AgentSession | None = None
        self.tasks: dict[str, pb.TaskStatus] = {}
        self.stopped = False  # a stopped fake node ignores everything (for failure tests)
        self.reject_images = frozenset(reject_images)

    async def apply(self, assignments: dpb.Assignments) -> None:
        if self.stopped:
            return
        if assignments.type == dpb.Assignments.COMPLETE:
            known = {task.id for task in assignments.tasks}
            for task_id in [t for t in self.tasks if t not in known]:
                del self.tasks[task_id]
        for task_id in assignments.removed:
            self.tasks.pop(task_id, None)
        for task in assignments.tasks:
            current = self.tasks.get(task.id)
            if task.desired_state <= pb.RUNNING:
                if current is None and task.spec.container.image in self.reject_images:
                    status = _status(pb.REJECTED, "rejected (simulated)")
                    status.err = f"image {task.spec.container.image} not found (simulated)"
                    self._set(task.id, status)
                elif current is None:
                    status = _status(pb.RUNNING, "started (simulated)")
                    if _has_healthcheck(task):
                        status.health = pb.TaskStatus.HEALTHY
                    self._set(task.id, status)
            elif current is None or current.state < pb.COMPLETE:
                self._set(task.id, _status(pb.SHUTDOWN, "shut down (simulated)"))

    def _set(self, task_id: str, status: pb.TaskStatus) -> None:
        self.tasks[task_id] = status
        assert self.session is not None
        self.session.report(task_id, status)

    def statuses(self) -> dict[str, pb.TaskStatus]:
        return dict(self.tasks)


class SimulatedNode:
    def __init__(self, index: int, controllers: Sequence[str], channels: ChannelFactory,
                 labels: dict[str, str] | None = None, settings: SessionSettings | None = None,
                 hostname_prefix: str = "sim", reject_images: Collection[str] = ()) -> None:
        self.worker = FakeWorker(reject_images)
        description = pb.NodeDescription(
            hostname=f"{hostname_prefix}-{index:04d}",
            addresses=[f"127.0.0.{1 + index % 250}"],
            advertise_addr=f"127.0.0.{1 + index % 250}",
            resources=pb.Resources(nano_cpus=4_000_000_000, memory_bytes=8 << 30),
            platform=pb.Platform(os="linux", architecture="x86_64"),
            agent_version="simulated",
        )
        self.session = AgentSession(controllers, description, self.worker, channels,
                                    labels=labels, settings=settings)
        self.worker.session = self.session
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = start_supervised(f"sim-node-{self.session.description.hostname}",
                                      self.session.run)

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_all([self._task])
            self._task = None


class SimulatedCluster:
    """Many simulated nodes sharing a handful of channels."""

    def __init__(self, controllers: Sequence[str], count: int,
                 labels: dict[str, str] | None = None, settings: SessionSettings | None = None,
                 hostname_prefix: str = "sim", reject_images: Collection[str] = ()) -> None:
        self._channels = insecure_channels()
        self.nodes = [SimulatedNode(i, controllers, self._channels, labels, settings,
                                    hostname_prefix, reject_images) for i in range(count)]

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    async def wait_connected(self, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            for node in self.nodes:
                await node.session.connected.wait()

    async def stop(self) -> None:
        for node in self.nodes:
            await node.stop()


async def _main(args: argparse.Namespace) -> None:
    cluster = SimulatedCluster(args.controller, args.nodes, hostname_prefix=args.hostname_prefix)
    cluster.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await cluster.wait_connected()
    log.info("%d simulated nodes running", args.nodes)
    await stop.wait()
    await cluster.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agent.simulated",
                                     description="Run simulated nodes (fake worker, real gRPC).")
    parser.add_argument("--controller", action="append", required=True)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--hostname-prefix", default="sim")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
