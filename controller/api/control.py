"""The control API servicer: what swarmctl calls, on every controller.

Reads are answered from the watch cache, so a controller that lost etcd keeps
answering them. Writes validate the whole request first (nothing is written
for a bad one), then commit one compare-and-swap transaction; a conflict is
ABORTED for the caller to read again, an unreachable etcd is UNAVAILABLE,
a full one (etcd's NOSPACE alarm) RESOURCE_EXHAUSTED with what to do about
it, a request etcd refuses as such INVALID_ARGUMENT (store_status).

Reads are refused (UNAVAILABLE) once the cache has not heard from etcd for
max_staleness seconds: a controller behind a half-open connection serves a
view at most that old, then sends clients to another controller. An idle
healthy cache hears from etcd every few seconds (the watch's progress
requests), so the bound only bites when etcd is really out of reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import NoReturn, TypeVar

import grpc

from swarm.api.metadata import LEADER_METADATA_KEY, RETRY_METADATA_KEY
from swarm.api.refs import resolve_ref
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import control_pb2_grpc as cgrpc
from swarm.api.v1 import logs_pb2 as lpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.api.validation import (
    ValidationError,
    normalize_network_spec,
    normalize_node_spec,
    normalize_service_spec,
    validate_replicas,
)

from ..allocator.claims import (
    claim_address,
    claim_port,
    network_ops,
    release_address,
    release_network,
    release_node,
    release_port,
    release_ports,
    release_vips,
    vip_owner,
)
from ..allocator.index import AddressIndex
from ..allocator.ingress import find_ingress
from ..allocator.ipam import free_count, parse_subnet
from ..allocator.networks import (
    AllocationError,
    VipPlan,
    allocate_network,
    plan_vips,
    pool_settings,
    stopping_holders,
)
from ..allocator.ports import PortPlan, ingress_ports, plan_ports
from ..ca import revoke_node_ops
from ..ids import new_id
from ..leadership import Leadership
from ..logbroker import LogBroker, SubscriptionRefused
from ..orchestrator import rebalance
from ..store import (
    Conflict,
    Create,
    Delete,
    Op,
    ReleaseName,
    ReserveName,
    Store,
    StoreError,
    Update,
    store_status,
)
from .events import EventLog, serve_events

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[object, object]
# Trailing metadata of a FAILED_PRECONDITION that resolves itself: retrying
# later may succeed (control.proto: RemoveNetwork).
T = TypeVar("T")
_SCALE_ATTEMPTS = 10
# Writes that allocate (networks, VIPs) retry when they lost a race on a network
# object; a lost race on a new key (another controller's claim) is only seen
# once the watch delivers the winner, hence the short pause.
_ALLOC_ATTEMPTS = 10
_RACE_PAUSE = 0.05  # seconds, times a random factor in [0.5, 1.5) against lock-step retries


async def _abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable")  # abort raises


MAX_STALENESS = 15.0  # seconds; see the module docstring


async def _store_failed(context: Context, error: StoreError, what: str) -> NoReturn:
    code, message = store_status(error, what)
    await _abort(context, code, message)


def _copy(obj: T) -> T:
    clone = type(obj)()
    clone.CopyFrom(obj)  # type: ignore[attr-defined]
    return clone


def _with_prefix(objects: Iterable[T], id_of: Callable[[T], str], prefixes: Iterable[str]) -> list[T]:
    wanted = list(prefixes)
    if not wanted:
        return list(objects)
    return [obj for obj in objects if any(id_of(obj).startswith(p) for p in wanted)]


def _labels_match(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(key in labels and (not value or labels[key] == value)
               for key, value in wanted.items())


def replicas_needed(spec: pb.ServiceSpec) -> int:
    """Task addresses a new service needs on each of its networks at once."""
    if not spec.task.networks or spec.WhichOneof("mode") != "replicated":
        return 0
    return int(spec.replicated.replicas)


def _template_changed(old: pb.ServiceSpec, new: pb.ServiceSpec) -> bool:
    return old.task.SerializeToString(deterministic=True) != \
        new.task.SerializeToString(deterministic=True) or \
        old.endpoint.SerializeToString(deterministic=True) != \
        new.endpoint.SerializeToString(deterministic=True)


class ControlServicer(cgrpc.ControlServicer):
    def __init__(self, store: Store, leadership: Leadership,
                 addresses: AddressIndex | None = None, logs: LogBroker | None = None) -> None:
        self._store = store
        self._leadership = leadership
        self._addresses = addresses or AddressIndex(store.cache)
        # Network creations on one controller take turns: they would all pick
        # the same lowest free subnet and VNI from the same cache, and all but
        # one lose. Races with other controllers are left to the claims.
        self._network_lock = asyncio.Lock()
        self._logs = logs
        self.max_staleness = MAX_STALENESS
        self.events: EventLog | None = None  # set by the server (api/events.py)

    async def _commit(self, context: Context, ops: list[Op], what: str) -> None:
        try:
            await self._store.commit(ops)
        except StoreError as error:
            await _store_failed(context, error, what)
        except Conflict:
            await _abort(context, grpc.StatusCode.ABORTED,
                         f"cannot {what}: it was changed concurrently; read it again and retry")

    async def _fresh(self, context: Context) -> None:
        """Refuse to read from a cache that has not heard from etcd for too long."""
        staleness = self._store.cache.staleness()
        if staleness > self.max_staleness:
            await _abort(context, grpc.StatusCode.UNAVAILABLE,
                         f"this controller has not heard from etcd for {staleness:.0f}s "
                         f"(limit {self.max_staleness:.0f}s), so its view may be stale; "
                         "try another controller")

    async def _resolve(self, context: Context, ref: str, objects: Mapping[str, T],
                       name_of: Callable[[T], str], kind: str) -> T:
        try:
            return resolve_ref(ref, objects, name_of, kind)
        except LookupError as error:
            await _abort(context, grpc.StatusCode.NOT_FOUND, str(error.args[0]))

    async def _invalid(self, context: Context, error: ValidationError) -> NoReturn:
        await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(error))

    # ------------------------------------------------------------ services

    async def CreateService(self, request: cpb.CreateServiceRequest,
                            context: Context) -> cpb.ServiceResponse:
        try:
            spec = normalize_service_spec(request.spec, self._store.cache.networks)
        except ValidationError as error:
            await self._invalid(context, error)
        service_id = new_id()
        for _ in range(_ALLOC_ATTEMPTS):
            if any(s.spec.name == spec.name for s in self._store.cache.services.values()):
                await _abort(context, grpc.StatusCode.ALREADY_EXISTS,
                             f"spec.name: service {spec.name!r} already exists")
            service = pb.Service(id=service_id, spec=spec, spec_version=1)
            plan = await self._plan_vips(context, spec, [], replicas_needed(spec))
            ports = await self._plan_ports(context, service_id, spec, [])
            ops: list[Op] = [Create(service), ReserveName("services", spec.name, service.id)]
            ops.extend(self._vip_ops(service, plan))
            ops.extend(self._port_ops(service, ports))
            try:
                await self._store.commit(ops)
            except Conflict:
                if self._networks_moved(plan.networks):
                    continue
                if ports.claimed:  # perhaps a port race: the checks above tell, once seen
                    await asyncio.sleep(_RACE_PAUSE * random.uniform(0.5, 1.5))
                    continue
                await _abort(context, grpc.StatusCode.ALREADY_EXISTS,
                             f"spec.name: service {spec.name!r} already exists")
            except StoreError as error:
                await _store_failed(context, error, "create service")
            log.info("created service %s (%s)", service.spec.name, service.id)
            return cpb.ServiceResponse(service=service)
        await _abort(context, grpc.StatusCode.ABORTED,
                     "its networks kept changing concurrently; try again")

    async def _plan_vips(self, context: Context, spec: pb.ServiceSpec,
                         current: Sequence[pb.VirtualIP], replicas: int) -> VipPlan:
        """The service's VIPs (nothing is written here). A full network is
        RESOURCE_EXHAUSTED, and so is one without room for `replicas` more
        task addresses: better refused now than tasks left waiting."""
        used = self._addresses
        try:
            plan = plan_vips(spec, current, self._store.cache.networks, used)
        except AllocationError as error:
            code = (grpc.StatusCode.RESOURCE_EXHAUSTED if error.exhausted
                    else grpc.StatusCode.INVALID_ARGUMENT)
            await _abort(context, code, str(error))
        claimed = {network_id for network_id, _ in plan.claimed}
        for index, network in enumerate(plan.networks):
            subnet = parse_subnet(network.subnet, network.gateway)
            free = free_count(subnet, used.get(network.id, set())) - (network.id in claimed)
            if replicas > free:
                await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"spec.task.networks[{index}].target: network "
                             f"{network.spec.name!r} ({network.subnet}) has {free} free "
                             f"address(es), not enough for {replicas} replicas")
        return plan

    def _vip_ops(self, service: pb.Service, plan: VipPlan) -> list[Op]:
        """Record the plan on `service` (its endpoint); the ops that go with it."""
        keys = self._store.keys
        service.endpoint.spec.CopyFrom(service.spec.endpoint)
        del service.endpoint.virtual_ips[:]
        service.endpoint.virtual_ips.extend(plan.virtual_ips)
        ops: list[Op] = [Update(network) for network in plan.networks]
        ops.extend(claim_address(keys, network_id, address, vip_owner(service.id))
                   for network_id, address in plan.claimed)
        ops.extend(release_address(keys, vip.network_id, vip.addr) for vip in plan.released)
        return ops

    async def _plan_ports(self, context: Context, service_id: str, spec: pb.ServiceSpec,
                          current: Sequence[pb.PortConfig]) -> PortPlan:
        """The service's published ports (nothing is written here): a port
        another service publishes is refused naming it; ingress ports need
        the ingress network."""
        ingress = ingress_ports(spec.endpoint.ports)
        if ingress and find_ingress(self._store.cache.networks.values()) is None:
            index = list(spec.endpoint.ports).index(ingress[0])
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                         f"spec.endpoint.ports[{index}]: published in ingress mode (the routing "
                         "mesh), but the cluster has no ingress network (create one: swarmctl "
                         "network create --ingress ingress; or publish with mode=host)")
        try:
            return plan_ports(service_id, spec, current, self._store.cache.services.values())
        except AllocationError as error:
            code = (grpc.StatusCode.RESOURCE_EXHAUSTED if error.exhausted
                    else grpc.StatusCode.INVALID_ARGUMENT)
            await _abort(context, code, str(error))

    def _port_ops(self, service: pb.Service, plan: PortPlan) -> list[Op]:
        """Record the plan on `service` (endpoint.ports); the claims and releases."""
        keys = self._store.keys
        service.endpoint.spec.CopyFrom(service.spec.endpoint)
        del service.endpoint.ports[:]
        service.endpoint.ports.extend(plan.ports)
        ops: list[Op] = [claim_port(keys, protocol, port, service.id)
                         for protocol, port in plan.claimed]
        ops.extend(release_port(keys, protocol, port) for protocol, port in plan.released)
        return ops

    def _networks_moved(self, networks: Sequence[pb.Network]) -> bool:
        """Whether a conflict was (also) on the networks: worth planning again.
        The failed transaction has refreshed them in the cache."""
        cached = self._store.cache.networks
        return any(n.id not in cached or cached[n.id].meta.version != n.meta.version
                   for n in networks)

    async def GetService(self, request: cpb.GetRequest, context: Context) -> cpb.ServiceResponse:
        await self._fresh(context)
        service = await self._resolve(context, request.ref, self._store.cache.services,
                                      lambda s: s.spec.name, "service")
        return cpb.ServiceResponse(service=service)

    async def ListServices(self, request: cpb.ListServicesRequest,
                           context: Context) -> cpb.ListServicesResponse:
        await self._fresh(context)
        filters = request.filters
        services = _with_prefix(self._store.cache.services.values(), lambda s: s.id,
                                filters.id_prefixes)
        if filters.names:
            services = [s for s in services if s.spec.name in set(filters.names)]
        if filters.labels:
            services = [s for s in services if _labels_match(s.spec.labels, filters.labels)]
        services.sort(key=lambda s: s.spec.name)
        return cpb.ListServicesResponse(services=services)

    async def UpdateService(self, request: cpb.UpdateServiceRequest,
                            context: Context) -> cpb.ServiceResponse:
        current = self._store.cache.services.get(request.service_id)
        if current is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND,
                         f"service {request.service_id!r} not found")
        if request.version and request.version != current.meta.version:
            await _abort(context, grpc.StatusCode.ABORTED,
                         f"service {current.spec.name!r} changed since it was read "
                         f"(version {request.version}, now {current.meta.version}); read it again")
        if request.rollback:
            if not current.HasField("previous_spec"):
                await _abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                             f"service {current.spec.name!r} has no previous spec to roll back to")
            wanted = current.previous_spec
        else:
            wanted = request.spec
        try:
            spec = normalize_service_spec(wanted, self._store.cache.networks)
        except ValidationError as error:
            await self._invalid(context, error)
        if spec.name != current.spec.name:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         f"spec.name: a service cannot be renamed ({current.spec.name!r} to {spec.name!r})")
        if spec.WhichOneof("mode") != current.spec.WhichOneof("mode"):
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         "spec.mode: a service cannot change between replicated and global")
        service = _copy(current)
        if _template_changed(current.spec, spec):
            service.previous_spec.CopyFrom(current.spec)
            service.spec_version += 1
            service.update_status.Clear()
            service.update_status.state = (pb.UpdateStatus.ROLLBACK_STARTED if request.rollback
                                           else pb.UpdateStatus.UPDATING)
            service.update_status.started_at.GetCurrentTime()
            service.update_status.message = ("rollback in progress" if request.rollback
                                             else "update in progress")
        service.spec.CopyFrom(spec)
        for _ in range(_ALLOC_ATTEMPTS):
            plan = await self._plan_vips(context, spec, current.endpoint.virtual_ips, 0)
            ports = await self._plan_ports(context, service.id, spec, current.endpoint.ports)
            ops: list[Op] = [Update(service), *self._vip_ops(service, plan),
                             *self._port_ops(service, ports)]
            try:
                await self._store.commit(ops)
            except Conflict:
                if self._networks_moved(plan.networks) and \
                        self._store.cache.services.get(service.id, current).meta.version \
                        == current.meta.version:
                    continue
                await _abort(context, grpc.StatusCode.ABORTED,
                             f"cannot update service {spec.name!r}: it was changed concurrently; "
                             "read it again and retry")
            except StoreError as error:
                await _store_failed(context, error, f"update service {spec.name!r}")
            return cpb.ServiceResponse(service=service)
        await _abort(context, grpc.StatusCode.ABORTED,
                     "its networks kept changing concurrently; try again")

    async def ScaleService(self, request: cpb.ScaleServiceRequest,
                           context: Context) -> cpb.ServiceResponse:
        try:
            validate_replicas(request.replicas)
        except ValidationError as error:
            await self._invalid(context, error)
        for _ in range(_SCALE_ATTEMPTS):
            current = await self._resolve(context, request.ref, self._store.cache.services,
                                          lambda s: s.spec.name, "service")
            if current.spec.WhichOneof("mode") != "replicated":
                await _abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                             f"service {current.spec.name!r} is global: scale applies to "
                             "replicated services only")
            service = _copy(current)
            service.spec.replicated.replicas = request.replicas
            try:
                await self._store.commit([Update(service)])
            except Conflict:
                continue
            except StoreError as error:
                await _store_failed(context, error, "scale")
            return cpb.ServiceResponse(service=service)
        await _abort(context, grpc.StatusCode.ABORTED, "service kept changing; try again")

    async def RemoveService(self, request: cpb.RemoveRequest,
                            context: Context) -> cpb.RemoveResponse:
        service = await self._resolve(context, request.ref, self._store.cache.services,
                                      lambda s: s.spec.name, "service")
        # Its VIPs and ports go with it; its tasks' addresses go with each task record.
        await self._commit(context, [Delete("services", service.id, service.meta.version),
                                     ReleaseName("services", service.spec.name),
                                     *release_vips(self._store.keys, service),
                                     *release_ports(self._store.keys, service)],
                           f"remove service {service.spec.name!r}")
        log.info("removed service %s (%s)", service.spec.name, service.id)
        return cpb.RemoveResponse(id=service.id)

    async def RebalanceService(self, request: cpb.RebalanceServiceRequest,
                               context: Context) -> cpb.RebalanceServiceResponse:
        """Plan (orchestrator/rebalance.py), then start the rebalance in one
        transaction; the orchestrator's update machinery carries it out. A task
        that changed meanwhile (a status report) means planning again."""
        for _ in range(_SCALE_ATTEMPTS):
            service = await self._resolve(context, request.ref, self._store.cache.services,
                                          lambda s: s.spec.name, "service")
            tasks = list(self._store.cache.tasks_by_service.get(service.id, {}).values())
            why_not = rebalance.refusal(service, tasks)
            if why_not is not None:
                await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, why_not)
            # Planned in a thread over a snapshot (the cache's objects are replaced,
            # never changed in place): a plan over 100,000 tasks takes about a
            # second, which the event loop (leases, heartbeats) must not wait for.
            plan = await asyncio.to_thread(
                rebalance.plan_rebalance, service, tasks, dict(self._store.cache.nodes),
                list(self._store.cache.tasks.values()))
            response = cpb.RebalanceServiceResponse(service=service)
            response.moves.extend(
                cpb.RebalanceMove(slot=move.slot, task_id=move.task_id,
                                  from_node=move.from_node, to_node=move.to_node,
                                  reason=move.reason)
                for move in plan.moves)
            if not plan.moves:
                response.message = f"already balanced: {plan.summary()}"
                return response
            if request.dry_run:
                response.message = f"dry run: {plan.summary()}"
                return response
            updated, marked = rebalance.start(service, tasks, plan, time.time())
            try:
                await self._store.commit([Update(updated), *(Update(task) for task in marked)])
            except Conflict:
                await asyncio.sleep(_RACE_PAUSE * random.uniform(0.5, 1.5))
                continue
            except StoreError as error:
                await _store_failed(context, error, f"rebalance service {service.spec.name!r}")
            log.info("rebalancing service %s: %d slots move", service.spec.name,
                     len(plan.moves))
            response.service.CopyFrom(updated)
            return response
        await _abort(context, grpc.StatusCode.ABORTED, "the service's tasks kept changing; try again")

    # ------------------------------------------------------------ nodes

    async def GetNode(self, request: cpb.GetRequest, context: Context) -> cpb.NodeResponse:
        await self._fresh(context)
        node = await self._resolve(context, request.ref, self._store.cache.nodes,
                                   lambda n: n.description.hostname, "node")
        return cpb.NodeResponse(node=node)

    async def ListNodes(self, request: cpb.ListNodesRequest,
                        context: Context) -> cpb.ListNodesResponse:
        await self._fresh(context)
        filters = request.filters
        nodes = _with_prefix(self._store.cache.nodes.values(), lambda n: n.id, filters.id_prefixes)
        if filters.names:
            nodes = [n for n in nodes if n.description.hostname in set(filters.names)]
        if filters.labels:
            nodes = [n for n in nodes if _labels_match(n.spec.labels, filters.labels)]
        if filters.roles:
            nodes = [n for n in nodes if n.spec.role in set(filters.roles)]
        nodes.sort(key=lambda n: (n.description.hostname, n.id))
        return cpb.ListNodesResponse(nodes=nodes)

    async def UpdateNode(self, request: cpb.UpdateNodeRequest,
                         context: Context) -> cpb.NodeResponse:
        current = self._store.cache.nodes.get(request.node_id)
        if current is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"node {request.node_id!r} not found")
        if request.version and request.version != current.meta.version:
            await _abort(context, grpc.StatusCode.ABORTED,
                         f"node {current.description.hostname!r} changed since it was read; "
                         "read it again")
        try:
            spec = normalize_node_spec(request.spec)
        except ValidationError as error:
            await self._invalid(context, error)
        node = _copy(current)
        node.spec.CopyFrom(spec)
        await self._commit(context, [Update(node)], f"update node {current.id}")
        return cpb.NodeResponse(node=node)

    async def RemoveNode(self, request: cpb.RemoveNodeRequest,
                         context: Context) -> cpb.RemoveResponse:
        node = await self._resolve(context, request.ref, self._store.cache.nodes,
                                   lambda n: n.description.hostname, "node")
        if node.status.state == pb.NodeStatus.READY and not request.force:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                         f"node {node.description.hostname or node.id} is not down and can't be "
                         "removed; drain it first or use --force")
        # The removed node's certificates are revoked, and its own addresses
        # (ingress) released, in the same transaction.
        await self._commit(context, [Delete("nodes", node.id, node.meta.version),
                                     *revoke_node_ops(self._store, node.id),
                                     *release_node(self._store.keys, node)],
                           f"remove node {node.id}")
        return cpb.RemoveResponse(id=node.id)

    # ------------------------------------------------------------ networks

    async def CreateNetwork(self, request: cpb.CreateNetworkRequest,
                            context: Context) -> cpb.NetworkResponse:
        try:
            spec = normalize_network_spec(request.spec)
        except ValidationError as error:
            await self._invalid(context, error)
        if spec.ingress:
            existing = find_ingress(self._store.cache.networks.values())
            if existing is not None:
                await _abort(context, grpc.StatusCode.ALREADY_EXISTS,
                             f"spec.ingress: the cluster already has an ingress network "
                             f"({existing.spec.name!r}); there can be only one")
        async with self._network_lock:
            return await self._create_network(context, spec)

    async def _create_network(self, context: Context, spec: pb.NetworkSpec) -> cpb.NetworkResponse:
        network_id = new_id()
        for _ in range(_ALLOC_ATTEMPTS):
            cache = self._store.cache
            if any(n.spec.name == spec.name for n in cache.networks.values()):
                await _abort(context, grpc.StatusCode.ALREADY_EXISTS,
                             f"spec.name: network {spec.name!r} already exists")
            try:
                allocation = allocate_network(spec, cache.networks.values(),
                                              pool_settings(cache.clusters.values()))
            except AllocationError as error:
                code = (grpc.StatusCode.RESOURCE_EXHAUSTED if error.exhausted
                        else grpc.StatusCode.INVALID_ARGUMENT)
                await _abort(context, code, str(error))
            network = pb.Network(id=network_id, spec=spec, vni=allocation.vni,
                                 subnet=allocation.subnet, gateway=allocation.gateway)
            ops = network_ops(self._store.keys, network)
            try:
                await self._store.commit(ops)
            except Conflict:
                # Another controller took the name, subnet or VNI first; once the
                # watch shows its network, the checks above say which.
                log.info("creating network %r lost a race with another controller; retrying",
                         spec.name)
                await asyncio.sleep(_RACE_PAUSE * random.uniform(0.5, 1.5))
                continue
            except StoreError as error:
                await _store_failed(context, error, "create network")
            log.info("created network %s (%s): subnet %s, gateway %s, VNI %d", spec.name,
                     network.id, network.subnet, network.gateway, network.vni)
            return cpb.NetworkResponse(network=network)
        await _abort(context, grpc.StatusCode.ABORTED,
                     f"network {spec.name!r} kept conflicting with concurrent creations; try again")

    async def GetNetwork(self, request: cpb.GetRequest, context: Context) -> cpb.NetworkResponse:
        await self._fresh(context)
        network = await self._resolve(context, request.ref, self._store.cache.networks,
                                      lambda n: n.spec.name, "network")
        return cpb.NetworkResponse(network=network)

    async def ListNetworks(self, request: cpb.ListNetworksRequest,
                           context: Context) -> cpb.ListNetworksResponse:
        await self._fresh(context)
        filters = request.filters
        networks = _with_prefix(self._store.cache.networks.values(), lambda n: n.id,
                                filters.id_prefixes)
        if filters.names:
            networks = [n for n in networks if n.spec.name in set(filters.names)]
        networks.sort(key=lambda n: n.spec.name)
        return cpb.ListNetworksResponse(networks=networks)

    async def RemoveNetwork(self, request: cpb.RemoveRequest,
                            context: Context) -> cpb.RemoveResponse:
        network = await self._resolve(context, request.ref, self._store.cache.networks,
                                      lambda n: n.spec.name, "network")
        cache = self._store.cache
        users = sorted(s.spec.name for s in cache.services.values()
                       if any(a.target == network.id for a in s.spec.task.networks)
                       or (network.spec.ingress and ingress_ports(s.spec.endpoint.ports)))
        if users:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                         f"network {network.spec.name!r} is in use by service(s) {', '.join(users)}")
        # Tasks of removed services hold their addresses while they stop: the
        # network stays until they have (their nodes still have its devices).
        # Refused with a hint the caller may retry on (swarmctl waits).
        stopping = stopping_holders(network.id, cache.tasks.values(), cache.nodes)
        if stopping:
            context.set_trailing_metadata(((RETRY_METADATA_KEY, "endpoints"),))
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                         f"network {network.spec.name!r} still has {len(stopping)} task(s) "
                         "holding addresses on it while they stop (of removed or updated "
                         "services); retry when they have stopped")
        # Ended tasks kept as history may still hold addresses here: the sweep
        # below deletes their address keys (their own releases later find
        # nothing), and the dispatcher tells nodes to drop the network. No new
        # task can get an address here: the allocator serves only tasks of
        # existing services, and none uses the network. The delete compares
        # the network's version, and every service write and task allocation
        # on it rewrites it: a concurrent new user makes this fail.
        await self._commit(context, [Delete("networks", network.id, network.meta.version),
                                     ReleaseName("networks", network.spec.name),
                                     *release_network(self._store.keys, network)],
                           f"remove network {network.spec.name!r}")
        return cpb.RemoveResponse(id=network.id)

    # ------------------------------------------------------------ tasks

    async def GetTask(self, request: cpb.GetRequest, context: Context) -> cpb.TaskResponse:
        await self._fresh(context)
        task = await self._resolve(context, request.ref, self._store.cache.tasks,
                                   lambda t: t.id, "task")
        return cpb.TaskResponse(task=task)

    async def ListTasks(self, request: cpb.ListTasksRequest,
                        context: Context) -> cpb.ListTasksResponse:
        await self._fresh(context)
        filters = request.filters
        cache = self._store.cache
        if filters.service_ids:
            candidates: Iterable[pb.Task] = [
                t for sid in filters.service_ids for t in cache.tasks_by_service.get(sid, {}).values()]
        elif filters.node_ids:
            candidates = [t for nid in filters.node_ids
                          for t in cache.tasks_by_node.get(nid, {}).values()]
        else:
            candidates = cache.tasks.values()
        tasks = _with_prefix(candidates, lambda t: t.id, filters.id_prefixes)
        if filters.node_ids:
            node_ids = set(filters.node_ids)
            tasks = [t for t in tasks if t.node_id in node_ids]
        if filters.desired_states:
            states = set(filters.desired_states)
            tasks = [t for t in tasks if t.desired_state in states]
        if filters.slots:
            slots = set(filters.slots)
            tasks = [t for t in tasks if t.slot in slots]
        tasks.sort(key=lambda t: (t.service_name, t.slot, t.node_id,
                                  -t.meta.created_at.ToNanoseconds()))
        return cpb.ListTasksResponse(tasks=tasks)

    # ------------------------------------------------------------ cluster

    async def GetCluster(self, request: cpb.GetClusterRequest,
                         context: Context) -> cpb.ClusterResponse:
        await self._fresh(context)
        clusters = list(self._store.cache.clusters.values())
        if not clusters:
            await _abort(context, grpc.StatusCode.NOT_FOUND, "the cluster is not initialised")
        cluster = pb.Cluster()
        cluster.CopyFrom(clusters[0])
        if cluster.HasField("ca"):
            cluster.ca.ClearField("encrypted_ca_key")  # sealed, but no client needs it
        return cpb.ClusterResponse(cluster=cluster, leader_addr=self._leadership.leader_addr)

    async def ListControllers(self, request: cpb.ListControllersRequest,
                              context: Context) -> cpb.ListControllersResponse:
        """The registered controllers (controller/registry.py); `leader` as etcd has it now."""
        leader = await self._leadership.confirmed_leader()
        found = []
        for addr, info in sorted(self._store.cache.controllers.items()):
            entry = pb.ControllerInfo()
            entry.CopyFrom(info)
            entry.leader = addr == leader
            found.append(entry)
        return cpb.ListControllersResponse(controllers=found)

    # ------------------------------------------------------------ logs

    async def ServiceLogs(self, request: lpb.ServiceLogsRequest,
                          context: Context) -> AsyncIterator[lpb.ServiceLogsMessage]:
        """The service's logs, from the leader's log broker (controller/logbroker.py).
        A follower does not proxy: it names the leader, as the dispatcher does."""
        service = await self._resolve(context, request.service, self._store.cache.services,
                                      lambda s: s.spec.name, "service")
        options = request.options
        if options.HasField("tail") and options.tail < 0:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                         "options.tail: must not be negative (unset for all lines)")
        broker = self._logs
        if broker is None or not broker.leading:
            leader = await self._leadership.confirmed_leader()
            context.set_trailing_metadata(((LEADER_METADATA_KEY, leader),))
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                         f"logs are served by the leader; the leader is {leader or 'unknown'}")
        try:
            async with contextlib.aclosing(broker.subscribe(service, options)) as messages:
                async for message in messages:
                    yield message
        except SubscriptionRefused as error:
            await _abort(context, error.code, str(error))

    # ------------------------------------------------------------ events (api/events.py)

    async def Events(self, request: cpb.EventsRequest,
                     context: Context) -> AsyncIterator[cpb.EventsResponse]:
        async for event in serve_events(self.events, request, context):
            yield event
