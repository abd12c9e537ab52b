"""A simulated node agent, for control-plane tests and benchmarks: real
sessions over the real dispatcher gRPC API, but a FAKE worker that runs no
containers — it reports a task RUNNING as soon as it is assigned and SHUTDOWN
when asked to stop. Hundreds of nodes run in one process.

A task with a health check is reported HEALTHY at once, unless its container
env sets the simulator's own knob SWARM_SIM_HEALTH (a real agent ignores it):
`healthy-after:2s` (HEALTH_STARTING, then HEALTHY), `unhealthy-after:2s`
(HEALTH_STARTING, then UNHEALTHY and FAILED, as a real agent fails an
unhealthy container) or `starting` (HEALTH_STARTING for ever). Tests of
health-gated updates use it. SWARM_SIM_EXIT=`CODE-after:DURATION` makes the
task exit (COMPLETE for 0, FAILED otherwise), for jobs.

Each node joins with the token as a real agent does and keeps its own
certificate and channel (the node ID is the certificate's CN); the CA is
fetched and checked against the token once for all of them. At most
JOIN_CONCURRENCY nodes of a process join at once: thousands joining at once
made a retry storm (at 5,000 nodes, 122,000 join calls timed out in six
minutes, each a new key and TLS handshake on both sides, and the controller
signed certificates for callers that had given up), which real hosts,
started over minutes, do not make. With
join_token=None (--insecure) the nodes share plaintext channels.

    python -m swarm.agent.simulated --controller 127.0.0.1:2377 --nodes 200 --join-token SWMTKN-1-...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import grpc

import swarm
from swarm.api import pki
from swarm.api.healthcheck import has_healthcheck
from swarm.api.loops import cancel_all, start_supervised
from swarm.api.units import parse_duration
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import objects_pb2 as pb

from .identity import IdentityKeeper, fetch_ca, join_address, request_certificate
from .overlay_sync import PeerSets, RecordingOverlay, sync_networks
from .session import AgentSession, ChannelFactory, SessionSettings, insecure_channels

log = logging.getLogger(__name__)


def _status(state: int, message: str) -> pb.TaskStatus:
    status = pb.TaskStatus(state=state, message=message)  # type: ignore[arg-type]
    status.timestamp.GetCurrentTime()
    return status


SIM_HEALTH_ENV = "SWARM_SIM_HEALTH"


@dataclass(frozen=True)
class SimulatedHealth:
    """How a simulated task's health goes: `final` (HEALTHY, UNHEALTHY, or
    HEALTH_STARTING for ever) after `after` seconds of HEALTH_STARTING."""

    final: int
    after: float


def simulated_health(task: pb.Task) -> SimulatedHealth | None:
    """From the task's SWARM_SIM_HEALTH (None: no health check, so no health).
    A value it does not understand raises ValueError naming it."""
    if not has_healthcheck(task.spec.container.healthcheck):
        return None
    value = ""
    for item in task.spec.container.env:
        key, _, rest = item.partition("=")
        if key == SIM_HEALTH_ENV:
            value = rest
    if value in ("", "healthy"):
        return SimulatedHealth(pb.TaskStatus.HEALTHY, 0.0)
    if value == "starting":
        return SimulatedHealth(pb.TaskStatus.HEALTH_STARTING, 0.0)
    kind, _, after = value.partition(":")
    finals = {"healthy-after": pb.TaskStatus.HEALTHY, "unhealthy-after": pb.TaskStatus.UNHEALTHY}
    try:
        if kind not in finals:
            raise ValueError("expected healthy, starting, healthy-after:DURATION or "
                             "unhealthy-after:DURATION")
        return SimulatedHealth(finals[kind], parse_duration(after) / 1e9)
    except ValueError as error:
        raise ValueError(f"{SIM_HEALTH_ENV}={value!r}: {error}") from None


SIM_EXIT_ENV = "SWARM_SIM_EXIT"


def simulated_exit(task: pb.Task) -> tuple[int, float] | None:
    """From the task's SWARM_SIM_EXIT, `CODE-after:DURATION` (e.g. `0-after:1s`):
    the simulated container exits with CODE that long after it started (COMPLETE
    for 0, FAILED otherwise, as a real agent reports an exit). None: it runs until
    stopped. Jobs' control-plane tests use it. A bad value raises ValueError."""
    value = ""
    for item in task.spec.container.env:
        key, _, rest = item.partition("=")
        if key == SIM_EXIT_ENV:
            value = rest
    if not value:
        return None
    code, _, after = value.partition("-after:")
    try:
        return int(code), parse_duration(after) / 1e9
    except ValueError:
        raise ValueError(f"{SIM_EXIT_ENV}={value!r}: expected CODE-after:DURATION") from None


class FakeWorker:
    """Pretends to run tasks: assigned -> RUNNING (HEALTHY when the task has a health
    check), desired shutdown -> SHUTDOWN. A task whose image is in `reject_images` is
    REJECTED instead, as a real agent rejects an image it cannot pull: this is how tests
    drive the restart supervisor and the CLI's convergence failures."""

    def __init__(self, reject_images: Collection[str] = (), record_peers: bool = True) -> None:
        self.session: AgentSession | None = None
        # False (benchmarks of the control plane): the peers are kept as
        # task ids per network only, not converted and filed as a data
        # plane would (RecordingOverlay, PeerSets): hundreds of simulated
        # nodes share this process and its core with the controller, and
        # each stands for a host of its own; what they cost must not be
        # what the benchmark measures.
        self.record_peers = record_peers
        self.peer_ids: dict[str, set[str]] = {}
        self.tasks: dict[str, pb.TaskStatus] = {}
        self.stopped = False  # a stopped fake node ignores everything (for failure tests)
        self.reject_images = frozenset(reject_images)
        self.overlay = RecordingOverlay()  # the networks and peers it was sent
        self.peer_sets = PeerSets()  # with the endpoints as sent and the service records
        # The latest network entries as they came (complete or delta), for tests
        # that check what was sent, not only what resulted.
        self.received: deque[dpb.NetworkAssignment] = deque(maxlen=256)
        # The last entry of each network (node address, services), for tests.
        self.entries: dict[str, dpb.NetworkAssignment] = {}
        # Seconds a task takes to stop once told to (a real one has its grace
        # period): tests of what waits for stopping tasks set it.
        self.stop_delay = 0.0
        self._stopping: set[str] = set()
        # The registry credentials its assignments brought, by task (tests
        # check which nodes were given a service's credentials).
        self.pull_credentials: dict[str, pb.RegistryCredential] = {}

    async def apply(self, assignments: dpb.Assignments) -> None:
        if self.stopped:
            return
        self.received.extend(assignments.networks)
        for given in assignments.pull_credentials:
            self.pull_credentials[given.task_id] = given.credential
        if self.record_peers:
            await sync_networks(self.overlay, assignments, self.peer_sets)
        else:
            self._track_peers(assignments)
        for entry in assignments.networks:
            self.entries[entry.network.id] = entry
        for network_id in assignments.removed_networks:
            self.entries.pop(network_id, None)
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
                    self._start(task)
            elif current is None or current.state < pb.COMPLETE:
                if not self.stop_delay:
                    self._set(task.id, _status(pb.SHUTDOWN, "shut down (simulated)"))
                elif task.id not in self._stopping:
                    self._stopping.add(task.id)
                    asyncio.get_running_loop().call_later(self.stop_delay, self._stopped,
                                                          task.id)

    def _track_peers(self, assignments: dpb.Assignments) -> None:
        """The peers' task ids per network (record_peers=False)."""
        named = set()
        for entry in assignments.networks:
            network_id = entry.network.id
            named.add(network_id)
            if entry.delta:
                ids = self.peer_ids.setdefault(network_id, set())
                ids.difference_update(entry.removed_peers)
            else:
                ids = self.peer_ids[network_id] = set()
            ids.update([peer.task_id for peer in entry.peers])
            for group in entry.peer_groups:  # a column: no message per peer
                ids.update(group.task_ids)
        gone = set(assignments.removed_networks)
        if assignments.type == dpb.Assignments.COMPLETE:
            gone |= set(self.peer_ids) - named
        for network_id in gone - named:
            self.peer_ids.pop(network_id, None)

    def _start(self, task: pb.Task) -> None:
        status = _status(pb.RUNNING, "started (simulated)")
        try:
            health = simulated_health(task)
            exits = simulated_exit(task)
        except ValueError as error:
            status = _status(pb.REJECTED, "rejected (simulated)")
            status.err = str(error)
            self._set(task.id, status)
            return
        if exits is not None:
            asyncio.get_running_loop().call_later(exits[1], self._exited, task.id, exits[0])
        if health is None:
            self._set(task.id, status)
            return
        if health.final == pb.TaskStatus.HEALTHY and not health.after:
            status.health = pb.TaskStatus.HEALTHY
            self._set(task.id, status)
            return
        status.health = pb.TaskStatus.HEALTH_STARTING
        self._set(task.id, status)
        if health.final != pb.TaskStatus.HEALTH_STARTING:
            asyncio.get_running_loop().call_later(health.after, self._health_decided,
                                                  task.id, health.final)

    def _health_decided(self, task_id: str, health: int) -> None:
        current = self.tasks.get(task_id)
        if self.stopped or current is None or current.state != pb.RUNNING:
            return
        status = _status(pb.RUNNING, current.message)
        status.health = health  # type: ignore[assignment]
        self._set(task_id, status)
        if health == pb.TaskStatus.UNHEALTHY:
            failed = _status(pb.FAILED, "unhealthy container")
            failed.err = "unhealthy container (simulated)"
            failed.health = pb.TaskStatus.UNHEALTHY
            self._set(task_id, failed)

    def _exited(self, task_id: str, code: int) -> None:
        current = self.tasks.get(task_id)
        if self.stopped or current is None or current.state != pb.RUNNING:
            return
        if code == 0:
            status = _status(pb.COMPLETE, "finished")
        else:
            status = _status(pb.FAILED, f"non-zero exit ({code})")
            status.err = f"task: non-zero exit ({code})"
        status.container.exit_code = code
        self._set(task_id, status)

    def _stopped(self, task_id: str) -> None:
        self._stopping.discard(task_id)
        current = self.tasks.get(task_id)
        if not self.stopped and (current is None or current.state < pb.COMPLETE):
            self._set(task_id, _status(pb.SHUTDOWN, "shut down (simulated)"))

    def _set(self, task_id: str, status: pb.TaskStatus) -> None:
        self.tasks[task_id] = status
        assert self.session is not None
        self.session.report(task_id, status)

    def statuses(self) -> dict[str, pb.TaskStatus]:
        return dict(self.tasks)


JOIN_CONCURRENCY = 25  # nodes of one process joining at once


@dataclass(frozen=True)
class JoinSettings:
    """How simulated nodes join: the token, and where the join ports are."""

    token: str
    join_addrs: tuple[str, ...]


class SimulatedNode:
    def __init__(self, index: int, controllers: Sequence[str], channels: ChannelFactory | None,
                 labels: dict[str, str] | None = None, settings: SessionSettings | None = None,
                 hostname_prefix: str = "sim", reject_images: Collection[str] = (),
                 joining: JoinSettings | None = None,
                 ca_pem: Callable[[], Awaitable[bytes]] | None = None,
                 role: pb.NodeSpec.Role.ValueType = pb.NodeSpec.WORKER,
                 generic: Sequence[pb.GenericResource] = (),
                 join_slots: asyncio.Semaphore | None = None,
                 record_peers: bool = True) -> None:
        self.worker = FakeWorker(reject_images, record_peers)
        self._join_slots = join_slots
        description = pb.NodeDescription(
            hostname=f"{hostname_prefix}-{index:04d}",
            addresses=[f"127.0.0.{1 + index % 250}"],
            advertise_addr=f"127.0.0.{1 + index % 250}",
            resources=pb.Resources(nano_cpus=4_000_000_000, memory_bytes=8 << 30,
                                   generic=generic),
            platform=pb.Platform(os="linux", architecture="x86_64"),
            agent_version=f"swarm-agent {swarm.__version__} (simulated)",
        )
        self._controllers = list(controllers)
        self._joining = joining
        self._ca_pem = ca_pem
        self.keeper: IdentityKeeper | None = None
        self.session = AgentSession(controllers, description, self.worker,
                                    channels or self._channel, labels=labels, settings=settings,
                                    role=role)
        self.worker.session = self.session
        self._task: asyncio.Task[None] | None = None

    def _channel(self, addr: str) -> grpc.aio.Channel:
        assert self.keeper is not None, "the node has not joined yet"
        return self.keeper.channel(addr)

    async def _join(self) -> None:
        assert self._joining is not None
        assert self._ca_pem is not None
        ca_pem = await self._ca_pem()
        failures = 0
        while True:
            addr = self._joining.join_addrs[failures % len(self._joining.join_addrs)]
            try:
                async with self._join_slots or contextlib.nullcontext():
                    identity = await request_certificate(addr, self._joining.token, ca_pem)
                break
            except (grpc.aio.AioRpcError, pki.PKIError, OSError) as error:
                failures += 1
                log.warning("%s cannot join through %s: %s", self.session.description.hostname,
                            addr, error)
                await asyncio.sleep(min(2.0, 0.05 * 2 ** failures))
        self.keeper = IdentityKeeper(identity, self._controllers)
        session = self.session
        self.keeper.follow(lambda: session.controllers)

    async def _run(self) -> None:
        if self._joining is not None and self.keeper is None:
            await self._join()
        await self.session.run()

    def start(self) -> None:
        self._task = start_supervised(f"sim-node-{self.session.description.hostname}", self._run)

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_all([self._task])
            self._task = None
        if self.keeper is not None:
            await self.keeper.close()


class SimulatedCluster:
    """Many simulated nodes: joined with `join_token` (mutual TLS, one channel
    per node), or on shared plaintext channels when it is None. The first
    `managers` register as managers (placement's node.role), the rest as workers;
    `generic`: the generic resources node i advertises (e.g. a GPU)."""

    def __init__(self, controllers: Sequence[str], count: int,
                 labels: dict[str, str] | None = None, settings: SessionSettings | None = None,
                 hostname_prefix: str = "sim", reject_images: Collection[str] = (), *,
                 join_token: str | None = None, join_addrs: Sequence[str] = (),
                 managers: int = 0,
                 generic: Mapping[int, Sequence[pb.GenericResource]] | None = None,
                 record_peers: bool = True) -> None:
        joining = None if join_token is None else JoinSettings(
            join_token, tuple(join_addrs) or tuple(join_address(c) for c in controllers))
        self._channels = insecure_channels() if joining is None else None
        self._joining = joining
        self._ca: asyncio.Future[bytes] | None = None
        join_slots = asyncio.Semaphore(JOIN_CONCURRENCY)
        self.nodes = [SimulatedNode(i, controllers, self._channels, labels, settings,
                                    hostname_prefix, reject_images, joining, self._ca_pem,
                                    pb.NodeSpec.MANAGER if i < managers else pb.NodeSpec.WORKER,
                                    (generic or {}).get(i, ()), join_slots, record_peers)
                      for i in range(count)]

    async def _ca_pem(self) -> bytes:
        """The cluster CA, fetched and checked against the token once for all nodes."""
        if self._ca is None:
            self._ca = asyncio.ensure_future(self._fetch_ca())
        return await asyncio.shield(self._ca)

    async def _fetch_ca(self) -> bytes:
        assert self._joining is not None
        token = pki.parse_join_token(self._joining.token)
        for attempt in range(50):
            for addr in self._joining.join_addrs:
                try:
                    return await fetch_ca(addr, token)
                except OSError as error:
                    log.warning("cannot fetch the CA from %s: %s", addr, error)
            await asyncio.sleep(min(2.0, 0.05 * 2 ** attempt))
        raise OSError("no join port answered")

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
    if args.insecure:
        log.warning("INSECURE: simulated nodes use plaintext gRPC (--insecure)")
    elif not args.join_token:
        raise SystemExit("python -m swarm.agent.simulated: --join-token is required (or --insecure)")
    cluster = SimulatedCluster(args.controller, args.nodes, hostname_prefix=args.hostname_prefix,
                               join_token=None if args.insecure else args.join_token,
                               join_addrs=args.join_addr,
                               record_peers=not args.peer_ids_only)
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
    parser = argparse.ArgumentParser(prog="python -m swarm.agent.simulated",
                                     description="Run simulated nodes (fake worker, real gRPC).")
    parser.add_argument("--controller", action="append", required=True)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--hostname-prefix", default="sim")
    parser.add_argument("--join-token", default="", help="worker join token (SWMTKN-1-...)")
    parser.add_argument("--join-addr", action="append", default=[],
                        help="controller join port HOST:PORT (default: each --controller's port + 1)")
    parser.add_argument("--insecure", action="store_true", help="plaintext gRPC (development only)")
    parser.add_argument("--peer-ids-only", action="store_true",
                        help="keep the overlay peers sent as task ids only, without the "
                             "simulated data plane's bookkeeping (control-plane benchmarks)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
