"""Network handlers: create, read, remove.

A network's subnet and VNI come from the allocator's pure planner
(allocator/networks.allocate_network) and are claimed in the same
transaction (allocator/claims.py), so two controllers cannot hand out the
same ones. Creations on one controller take turns: they would all pick the
same lowest free subnet and VNI from the same cache, and all but one lose;
races with other controllers are left to the claims (a lost one is planned
again once the watch shows the winner).
"""

from __future__ import annotations

import logging

from swarm.api.metadata import RETRY_METADATA_KEY
from swarm.api.refs import resolve_ref
from swarm.api.v1 import control_pb2 as cpb
from swarm.api.v1 import objects_pb2 as pb
from swarm.api.validation import normalize_network_spec

from ..allocator.claims import network_ops, release_network
from ..allocator.ingress import find_ingress
from ..allocator.networks import allocate_network, pool_settings, stopping_holders
from ..allocator.ports import ingress_ports
from ..ids import new_id
from ..store import Delete, Planned, ReleaseName
from .base import Handlers, network_name, select
from .errors import AlreadyExists, Context, FailedPrecondition, NotFound

log = logging.getLogger(__name__)

class Networks(Handlers):
    async def CreateNetwork(self, request: cpb.CreateNetworkRequest,
                            context: Context) -> cpb.NetworkResponse:
        spec = normalize_network_spec(request.spec)
        cache = self._store.cache
        if spec.ingress:
            existing = find_ingress(cache.networks.values())
            if existing is not None:
                raise AlreadyExists(f"spec.ingress: the cluster already has an ingress network "
                                    f"({existing.spec.name!r}); there can be only one")
        network_id = new_id()

        def step() -> Planned[pb.Network]:
            if any(n.spec.name == spec.name for n in cache.networks.values()):
                raise AlreadyExists(f"spec.name: network {spec.name!r} already exists")
            allocation = allocate_network(spec, cache.networks.values(),
                                          pool_settings(cache.clusters.values()))
            network = pb.Network(id=network_id, spec=spec, vni=allocation.vni,
                                 subnet=allocation.subnet, gateway=allocation.gateway)
            return Planned(network_ops(self._store.keys, network), network)

        async with self._network_lock:
            network = await self._write(
                "create network", step,
                gave_up=f"network {spec.name!r} kept conflicting with concurrent creations; "
                        "try again")
        log.info("created network %s (%s): subnet %s, gateway %s, VNI %d", spec.name,
                 network.id, network.subnet, network.gateway, network.vni)
        return cpb.NetworkResponse(network=network)

    async def GetNetwork(self, request: cpb.GetRequest, context: Context) -> cpb.NetworkResponse:
        self._fresh()
        network = resolve_ref(request.ref, self._store.cache.networks, network_name, "network")
        return cpb.NetworkResponse(network=network)

    async def ListNetworks(self, request: cpb.ListNetworksRequest,
                           context: Context) -> cpb.ListNetworksResponse:
        self._fresh()
        networks = select(self._store.cache.networks.values(), request.filters, lambda n: n.id,
                          network_name)
        networks.sort(key=lambda n: n.spec.name)
        return cpb.ListNetworksResponse(networks=networks)

    async def RemoveNetwork(self, request: cpb.RemoveRequest,
                            context: Context) -> cpb.RemoveResponse:
        cache = self._store.cache
        found = resolve_ref(request.ref, cache.networks, network_name, "network")

        def step() -> Planned[pb.Network]:
            network = cache.networks.get(found.id)
            if network is None:
                raise NotFound(f"network {request.ref!r} not found")
            users = sorted(s.spec.name for s in cache.services.values()
                           if any(a.target == network.id for a in s.spec.task.networks)
                           or (network.spec.ingress and ingress_ports(s.spec.endpoint.ports)))
            if users:
                raise FailedPrecondition(f"network {network.spec.name!r} is in use by "
                                         f"service(s) {', '.join(users)}")
            # Tasks of removed services hold their addresses while they stop: the
            # network stays until they have (their nodes still have its devices).
            # Refused with a hint the caller may retry on (swarmctl waits).
            stopping = stopping_holders(network.id, cache.tasks.values(), cache.nodes)
            if stopping:
                raise FailedPrecondition(
                    f"network {network.spec.name!r} still has {len(stopping)} task(s) holding "
                    "addresses on it while they stop (of removed or updated services); retry "
                    "when they have stopped", trailing=((RETRY_METADATA_KEY, "endpoints"),))
            # Ended tasks kept as history may still hold addresses here: the sweep
            # below deletes their address keys (their own releases later find
            # nothing), and the dispatcher tells nodes to drop the network. No new
            # task can get an address here: the allocator serves only tasks of
            # existing services, and none uses the network.
            return Planned([Delete("networks", network.id, network.meta.version),
                            ReleaseName("networks", network.spec.name),
                            *release_network(self._store.keys, network)], network)

        # One attempt: the delete compares the network's version, and every
        # service write and task allocation on it rewrites it, so a concurrent
        # new user makes it fail; planning again from a cache that may not show
        # that user yet could delete a network in use.
        network = await self._write(f"remove network {found.spec.name!r}", step, attempts=1)
        return cpb.RemoveResponse(id=network.id)

