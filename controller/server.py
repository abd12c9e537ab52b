"""One controller process: the watch cache, the gRPC server (control API for
everyone, dispatcher API served by the leader), and the leader's loops
(orchestrator, allocator, scheduler, dispatcher), all supervised and cancellable."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import grpc
from google.protobuf.duration_pb2 import Duration

from swarmapi.loops import cancel_all, start_supervised
from swarmapi.v1 import control_pb2_grpc as cgrpc
from swarmapi.v1 import dispatcher_pb2_grpc as dgrpc
from swarmapi.v1 import objects_pb2 as pb

from .allocator.index import AddressIndex
from .allocator.ipam import DEFAULT_POOLS, DEFAULT_SUBNET_SIZE
from .allocator.reconciler import Allocator
from .api.control import ControlServicer
from .dispatcher import Dispatcher, DispatcherSettings
from .leadership import Leadership, LeadershipSettings
from .logbroker import LogBroker, LogBrokerSettings
from .orchestrator.reconciler import Orchestrator
from .scheduler.reconciler import SchedulerLoop
from .store import Conflict, Create, EtcdClient, EtcdSettings, Guard, Store

log = logging.getLogger(__name__)

CLUSTER_ID = "default"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ControllerConfig:
    listen: str = "0.0.0.0:2377"
    advertise_addr: str = ""  # what agents and clients dial; default: the listen address
    etcd: EtcdSettings = field(default_factory=EtcdSettings)
    prefix: str = "/swarm/"
    leadership: LeadershipSettings = field(default_factory=LeadershipSettings)
    dispatcher: DispatcherSettings = field(default_factory=DispatcherSettings)
    logs: LogBrokerSettings = field(default_factory=LogBrokerSettings)
    # Settings of a cluster initialised by this controller.
    heartbeat_period: float = 5.0
    task_history_limit: int = 5
    address_pools: tuple[str, ...] = DEFAULT_POOLS  # where networks without --subnet get one
    subnet_size: int = DEFAULT_SUBNET_SIZE


def default_cluster(config: ControllerConfig) -> pb.Cluster:
    period = Duration()
    period.FromNanoseconds(int(config.heartbeat_period * 1e9))
    return pb.Cluster(id=CLUSTER_ID, spec=pb.ClusterSpec(
        name=CLUSTER_ID,
        dispatcher=pb.DispatcherConfig(heartbeat_period=period),
        orchestration=pb.OrchestrationConfig(
            task_history_retention_limit=config.task_history_limit),
        ipam=pb.IPAMDefaults(address_pools=config.address_pools, subnet_size=config.subnet_size),
    ))


class Controller:
    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.etcd = EtcdClient.open(config.etcd)
        self.store = Store(self.etcd, config.prefix)
        self.port = 0
        self._server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ])
        self._loops: list[asyncio.Task[None]] = []
        self.leadership: Leadership | None = None
        self.orchestrator = Orchestrator(self.store)
        # Addresses in use per network, shared by the allocator and the API.
        self.addresses = AddressIndex(self.store.cache)
        self.allocator = Allocator(self.store, self.addresses)
        self.scheduler = SchedulerLoop(self.store)
        self.dispatcher: Dispatcher | None = None
        self.logs = LogBroker(self.store, config.logs)

    async def start(self) -> None:
        self.port = self._server.add_insecure_port(self.config.listen)
        if not self.port:
            raise OSError(f"cannot listen on {self.config.listen}")
        host = self.config.listen.rsplit(":", 1)[0]
        advertise = self.config.advertise_addr or (
            f"{'127.0.0.1' if host in ('0.0.0.0', '[::]', '') else host}:{self.port}")
        self.leadership = Leadership(self.store, advertise, self.config.leadership)
        self.dispatcher = Dispatcher(self.store, self.leadership, self.config.dispatcher)
        self.dispatcher.logs = self.logs
        cgrpc.add_ControlServicer_to_server(
            ControlServicer(self.store, self.leadership, self.addresses, self.logs), self._server)
        dgrpc.add_DispatcherServicer_to_server(self.dispatcher, self._server)
        self._loops.append(start_supervised("watch-cache", self.store.cache.run))
        await self.store.cache.synced.wait()
        await self._ensure_cluster()
        await self._server.start()
        leadership = self.leadership
        self._loops.append(start_supervised("leadership", lambda: leadership.run(self._lead)))
        log.info("controller serving on %s (advertised as %s)", self.config.listen, advertise)

    async def _ensure_cluster(self) -> None:
        if CLUSTER_ID in self.store.cache.clusters:
            return
        try:
            await self.store.commit([Create(default_cluster(self.config))])
            log.info("initialised cluster %s", CLUSTER_ID)
        except Conflict:
            pass  # another controller initialised it first

    async def _lead(self, guard: Guard) -> None:
        assert self.dispatcher is not None
        dispatcher = self.dispatcher
        loops = [
            start_supervised("orchestrator", lambda: self.orchestrator.run(guard)),
            start_supervised("allocator", lambda: self.allocator.run(guard)),
            start_supervised("scheduler", lambda: self.scheduler.run(guard)),
            start_supervised("dispatcher", lambda: dispatcher.serve_as_leader(guard)),
            start_supervised("log-broker", self.logs.serve_as_leader),
        ]
        try:
            await asyncio.gather(*loops)
        finally:
            await cancel_all(loops)

    async def stop(self, grace: float = 1.0) -> None:
        await self._server.stop(grace)
        await cancel_all(reversed(self._loops))
        self._loops.clear()
        await self.etcd.close()
