"""One controller process: the watch cache, the gRPC server (control API and
dispatcher API: every controller serves agent sessions), and the leader's
loops (orchestrator, allocator, scheduler, the dispatcher's node judgement),
all supervised and cancellable.

Transport security (see controller/ca.py, swarmapi/channels.py): by default
the control port is mutual TLS with every call authorized by role
(ca.POLICY) and checked against the revoked nodes, and a second port (the
join port, control port + 1) serves only CAJoin over server-only TLS.
`insecure=True` serves plaintext without a join port, for development."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer  # = grpc_health.v1.health.aio

import swarm
from swarm.api import channels
from swarm.api.loops import cancel_all, start_supervised
from swarm.api.v1 import ca_pb2_grpc as cagrpc
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import objects_pb2 as pb

from .allocator.index import AddressIndex
from .allocator.ingress import IngressKeeper
from .allocator.ipam import DEFAULT_INGRESS_SUBNET_SIZE, DEFAULT_POOLS, DEFAULT_SUBNET_SIZE
from .allocator.reconciler import Allocator
from .api.base import DataKeySource
from .api.control import MAX_STALENESS, ControlServicer
from .api.errors import ErrorInterceptor
from .api.events import EventLog

if TYPE_CHECKING:
    from swarm.api.metrics import MetricsServer
from .ca import (
    POLICY,
    CAAdminServicer,
    CASettings,
    ClusterPKI,
    ControllerIdentity,
    JoinServicer,
    NodeCAServicer,
)
from .compaction import CompactionSettings, Compactor
from .dispatcher import Dispatcher, DispatcherSettings
from .dispatcher.beatserver import BeatServer, certificate_authorizer
from .leadership import Leadership, LeadershipSettings
from .logbroker import LogBroker, LogBrokerSettings
from .orchestrator.autorebalance import AutoRebalancer, AutoRebalanceSettings
from .orchestrator.disruption import DisruptionSettings
from .orchestrator.reconciler import Orchestrator
from .payloads import PayloadServer
from .pullauth import PullCredentials
from .registry import ControllerRegistry
from .scheduler.reconciler import SchedulerLoop
from .store import Conflict, Create, EtcdClient, EtcdSettings, Guard, Store
from .wire import add_dispatcher

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
    compaction: CompactionSettings = field(default_factory=CompactionSettings)
    # Reads are refused once the watch cache has not heard from etcd for this long.
    max_read_staleness: float = MAX_STALENESS
    # Settings of a cluster initialised by this controller.
    heartbeat_period: float = 5.0
    task_history_limit: int = 5
    address_pools: tuple[str, ...] = DEFAULT_POOLS  # where networks without --subnet get one
    subnet_size: int = DEFAULT_SUBNET_SIZE
    ingress_subnet_size: int = DEFAULT_INGRESS_SUBNET_SIZE  # the routing mesh's network
    # Transport security: mutual TLS unless insecure (development only).
    insecure: bool = False
    ca: CASettings = field(default_factory=CASettings)
    # The join port; default: the control port + 1 (an ephemeral port when
    # the control port is 0, as in tests).
    join_listen: str = ""
    # Write an admin identity for swarmctl here at start (--admin-out).
    admin_out: str = ""
    # The leader makes the routing mesh's `ingress` network when the cluster
    # has none (as `docker swarm init`); tests of other parts turn it off.
    create_ingress: bool = True
    # --auto-rebalance: the leader rebalances services when nodes arrive.
    auto_rebalance: AutoRebalanceSettings = field(default_factory=AutoRebalanceSettings)
    # Mass-disconnect protection (orchestrator/disruption.py).
    disruption: DisruptionSettings = field(default_factory=DisruptionSettings)
    # --metrics-addr HOST:PORT: Prometheus metrics, /healthz and /readyz (controller/metrics.py).
    metrics_addr: str = ""
    # Where the heartbeat server listens (dispatcher/beatserver.py: beats
    # answered off the event loop); default: the listen host, an ephemeral
    # port (agents are told it in their sessions). "off": none, agents beat
    # on the control port.
    heartbeat_listen: str = ""
    # Test only (--debug-stall-loop): on SIGUSR1 the event loop runs busy for
    # this many seconds (tests/integration/test_beat_server.py).
    debug_stall_loop: float = 0.0


def default_cluster(config: ControllerConfig) -> pb.Cluster:
    period = Duration()
    period.FromNanoseconds(int(config.heartbeat_period * 1e9))
    return pb.Cluster(id=CLUSTER_ID, spec=pb.ClusterSpec(
        name=CLUSTER_ID,
        dispatcher=pb.DispatcherConfig(heartbeat_period=period),
        orchestration=pb.OrchestrationConfig(
            task_history_retention_limit=config.task_history_limit),
        ipam=pb.IPAMDefaults(address_pools=config.address_pools, subnet_size=config.subnet_size,
                             ingress_subnet_size=config.ingress_subnet_size),
    ))


class Controller:
    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.etcd = EtcdClient.open(config.etcd)
        self.store = Store(self.etcd, config.prefix)
        self.port = 0
        self.join_port = 0
        self.pki = ClusterPKI(self.store, CLUSTER_ID, config.ca)
        self.identity: ControllerIdentity | None = None
        self._server: grpc.aio.Server | None = None
        self._join_server: grpc.aio.Server | None = None
        self.beat_server: BeatServer | None = None
        self.beat_port = 0
        self._loops: list[asyncio.Task[None]] = []
        self.leadership: Leadership | None = None
        self.orchestrator = Orchestrator(self.store, disruption=config.disruption)
        # Addresses in use per network, shared by the allocator and the API.
        self.addresses = AddressIndex(self.store.cache)
        self.allocator = Allocator(self.store, self.addresses)
        self.ingress = IngressKeeper(self.store, self.addresses, create=config.create_ingress)
        self.scheduler = SchedulerLoop(self.store)
        self.auto_rebalancer = AutoRebalancer(self.store, config.auto_rebalance)
        self.dispatcher: Dispatcher | None = None
        self.registry: ControllerRegistry | None = None
        self.logs = LogBroker(self.store, config.logs)
        self.compactor = Compactor(self.etcd, config.compaction)
        # Subscribed before the first list, so that replay starts at the beginning.
        self.events = EventLog(self.store.cache)
        self.metrics: MetricsServer | None = None  # with --metrics-addr
        self.health = HealthServicer()  # grpc.health.v1, on the control and join ports

    async def start(self) -> None:
        self._loops.append(start_supervised("watch-cache", self.store.cache.run))
        await self.store.cache.synced.wait()
        await self._ensure_cluster()
        host = self.config.listen.rsplit(":", 1)[0]
        if not self.config.insecure:
            await self.pki.ensure()
            advertised_host = self.config.advertise_addr.rsplit(":", 1)[0]
            addresses = tuple(h.strip("[]") for h in {host, advertised_host}
                              if h and h not in ("0.0.0.0", "[::]"))
            self.identity = ControllerIdentity(self.pki, addresses)
            identity = self.identity
            self._loops.append(start_supervised("controller-certificate",
                                                identity.renew_forever))
            if self.config.admin_out:
                self.pki.admin_identity().save(Path(self.config.admin_out))
                log.info("wrote an admin identity for swarmctl to %s", self.config.admin_out)
        settings = channels.LinkSettings(max_message_bytes=MAX_MESSAGE_BYTES)
        # Refusals raised by handlers become statuses in one place (api/errors.py).
        if self.config.insecure:
            self._server = channels.new_server(settings, interceptors=[ErrorInterceptor()])
        else:
            # The cluster's own ID is checked too: an external CA may sign for others.
            self._server = channels.new_server(settings, interceptors=[channels.AuthInterceptor(
                POLICY, self.pki.revocations, cluster_id=self.pki.cluster_uid),
                ErrorInterceptor()])
            self._join_server = channels.new_server(settings, interceptors=[ErrorInterceptor()])
        self.port = channels.listen(self._server, self.config.listen,
                                    self.identity.current if self.identity else None,
                                    insecure=self.config.insecure)
        advertise = self.config.advertise_addr or (
            f"{'127.0.0.1' if host in ('0.0.0.0', '[::]', '') else host}:{self.port}")
        self.leadership = Leadership(self.store, advertise, self.config.leadership)
        self.dispatcher = Dispatcher(self.store, self.leadership, self.config.dispatcher,
                                     dial=self._dial_controller)
        self.dispatcher.logs = self.logs
        # Secrets, configs and registry credentials are sealed with the data key (read when used);
        # an --insecure controller has none.
        pki_state = self.pki
        payload_key: DataKeySource | None = \
            None if self.config.insecure else (lambda: pki_state.data_key)
        if payload_key is not None:  # registry credentials are sealed the same way
            self.dispatcher.payloads = PayloadServer(self.store.cache, payload_key)
            self.dispatcher.pull_auth = PullCredentials(self.store.cache.services, payload_key)
        control = ControlServicer(self.store, self.leadership, self.addresses, self.logs,
                                  payload_key)
        control.max_staleness = self.config.max_read_staleness
        control.dial = self._dial_controller  # a follower relays leader-only calls
        control.events = self.events
        cgrpc.add_ControlServicer_to_server(control, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        add_dispatcher(self.dispatcher, self._server)  # Session sends pre-encoded bytes
        if self._join_server is not None and self.identity is not None:
            cagrpc.add_NodeCAServicer_to_server(NodeCAServicer(self.pki), self._server)
            cagrpc.add_CAAdminServicer_to_server(CAAdminServicer(self.pki), self._server)
            cagrpc.add_CAJoinServicer_to_server(JoinServicer(self.pki), self._join_server)
            # Load balancers and probes without a cluster certificate ask here.
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._join_server)
            join_addr = self.config.join_listen or (
                f"{host}:{self.port + 1}" if self.config.listen.rsplit(":", 1)[1] != "0"
                else f"{host}:0")
            self.join_port = channels.join_listen(self._join_server, join_addr,
                                                  self.identity.current)
            await self._join_server.start()
            log.info("join service on %s (server-only TLS)", join_addr.rsplit(":", 1)[0] +
                     f":{self.join_port}")
        dispatcher = self.dispatcher
        if self.config.heartbeat_listen != "off":
            self._start_beat_server(dispatcher, host, advertise, settings)
        self._loops.append(start_supervised("dispatcher", dispatcher.serve))
        await self._server.start()
        info = pb.ControllerInfo(addr=advertise, version=swarm.__version__)
        info.started_at.GetCurrentTime()
        registry = self.registry = ControllerRegistry(self.store, info,
                                                      self.config.leadership.lease_ttl,
                                                      self.config.leadership.watchdog)
        self._loops.append(start_supervised("controller-registry", registry.run))
        # Listed (controller ls, agents' sessions) by the time start returns, as
        # long as etcd answers; the loop keeps trying otherwise.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.leadership.lease_ttl):
                await registry.registered.wait()
        leadership = self.leadership
        self._loops.append(start_supervised("leadership", lambda: leadership.run(self._lead)))
        for service in ("", "swarm.v1.Control"):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if self.config.metrics_addr:
            from .metrics import serve_metrics  # prometheus_client only with metrics on

            self.metrics = await serve_metrics(self, self.config.metrics_addr)
        log.info("controller serving on %s (advertised as %s)", self.config.listen, advertise)

    def _start_beat_server(self, dispatcher: Dispatcher, host: str, advertise: str,
                           settings: channels.LinkSettings) -> None:
        """The heartbeat-only server on its threads (dispatcher/beatserver.py),
        with the control port's mutual TLS and authorization."""
        authorize = None if self.identity is None else certificate_authorizer(
            self.pki.revocations, channels.CONTROL_PLANE_POLICY["swarm.v1.Dispatcher"],
            self.pki.cluster_uid)
        server = BeatServer(dispatcher, authorize, settings)
        listen = self.config.heartbeat_listen or f"{host}:0"
        self.beat_port = server.listen(listen, self.identity.current if self.identity else None,
                                       insecure=self.config.insecure)
        self.beat_server = server
        dispatcher.beat_addr = f"{advertise.rsplit(':', 1)[0]}:{self.beat_port}"
        log.info("heartbeats served off the event loop on %s (advertised as %s)", listen,
                 dispatcher.beat_addr)

    def _dial_controller(self, addr: str) -> grpc.aio.Channel:
        """A channel to another controller, as this controller (its identity)."""
        settings = channels.LinkSettings(max_message_bytes=MAX_MESSAGE_BYTES)
        if self.identity is None:
            return channels.client_channel(addr, None, insecure=True, settings=settings)
        return channels.client_channel(addr, self.identity.current(), settings=settings)

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
            start_supervised("ingress", lambda: self.ingress.run(guard)),
            start_supervised("scheduler", lambda: self.scheduler.run(guard)),
            start_supervised("dispatcher-leader", lambda: dispatcher.serve_as_leader(guard)),
            start_supervised("log-broker", self.logs.serve_as_leader),
            start_supervised("compactor", self.compactor.run),
        ]
        if self.config.auto_rebalance.enabled:
            rebalancer = self.auto_rebalancer
            loops.append(start_supervised("auto-rebalance", lambda: rebalancer.run(guard)))
        try:
            await asyncio.gather(*loops)
        finally:
            await cancel_all(loops)

    @property
    def join_addr(self) -> str:
        return f"127.0.0.1:{self.join_port}"

    async def stop(self, grace: float = 1.0) -> None:
        await self.health.enter_graceful_shutdown()
        if self.metrics is not None:
            await self.metrics.stop()
        if self._server is not None:
            await self._server.stop(grace)
        if self._join_server is not None:
            await self._join_server.stop(grace)
        if self.beat_server is not None:
            await asyncio.to_thread(self.beat_server.stop, grace)
        await cancel_all(reversed(self._loops))
        self._loops.clear()
        if self.registry is not None:
            await self.registry.withdraw()
        await self.etcd.close()
