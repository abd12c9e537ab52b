"""A service's endpoint, planned when the service is written: its VIPs and published ports.

The control API writes a service together with its endpoint (so a bad or
unsatisfiable one is refused before anything is stored, and two services
cannot take one port). Planning is pure: `plan_endpoint` reads the networks,
the addresses in use and the other services; `endpoint_ops` records the plan
on the service and returns the claims and releases that go in the same
transaction. A full network is refused now (RESOURCE_EXHAUSTED), and so is one
without room for the new service's replicas: better refused than tasks left
waiting.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from swarm.api.v1 import objects_pb2 as pb

from ..store import Keys, Op, Update
from .claims import claim_address, claim_port, release_address, release_port, vip_owner
from .ingress import find_ingress
from .ipam import free_count, parse_subnet
from .networks import AllocationError, VipPlan, plan_vips
from .ports import PortPlan, ingress_ports, plan_ports


class NeedsIngress(AllocationError):
    """Ingress ports, but the cluster has no ingress network (a failed
    precondition rather than bad input: creating one makes the call work)."""


@dataclass
class EndpointPlan:
    vips: VipPlan
    ports: PortPlan

    def networks_moved(self, networks: Mapping[str, pb.Network]) -> bool:
        """Whether a conflict was (also) on the attached networks (`networks`:
        the cache, which the failed transaction refreshed): worth planning again."""
        return any(n.id not in networks or networks[n.id].meta.version != n.meta.version
                   for n in self.vips.networks)


def replicas_needed(spec: pb.ServiceSpec) -> int:
    """Task addresses a new service needs on each of its networks at once."""
    if not spec.task.networks or spec.WhichOneof("mode") != "replicated":
        return 0
    return int(spec.replicated.replicas)


def plan_endpoint(service_id: str, spec: pb.ServiceSpec, current: pb.Endpoint,
                  networks: Mapping[str, pb.Network], used: Mapping[str, AbstractSet[int]],
                  services: Iterable[pb.Service], replicas: int) -> EndpointPlan:
    """The endpoint of service `service_id` with the (normalised) spec, given
    what it has now (`current`). Raises AllocationError naming the field: a
    network gone or full (also: without `replicas` more free addresses), a
    port another service publishes; NeedsIngress for ingress ports without
    the ingress network."""
    vips = plan_vips(spec, current.virtual_ips, networks, used)
    claimed = {network_id for network_id, _ in vips.claimed}
    for index, network in enumerate(vips.networks):
        subnet = parse_subnet(network.subnet, network.gateway)
        free = free_count(subnet, used.get(network.id, set())) - (network.id in claimed)
        if replicas > free:
            raise AllocationError(f"spec.task.networks[{index}].target",
                                  f"network {network.spec.name!r} ({network.subnet}) has "
                                  f"{free} free address(es), not enough for {replicas} replicas",
                                  exhausted=True)
    ingress = ingress_ports(spec.endpoint.ports)
    if ingress and find_ingress(networks.values()) is None:
        index = list(spec.endpoint.ports).index(ingress[0])
        raise NeedsIngress(f"spec.endpoint.ports[{index}]",
                           "published in ingress mode (the routing mesh), but the cluster has "
                           "no ingress network (create one: swarmctl network create --ingress "
                           "ingress; or publish with mode=host)")
    return EndpointPlan(vips, plan_ports(service_id, spec, current.ports, services))


def endpoint_ops(keys: Keys, service: pb.Service, plan: EndpointPlan) -> list[Op]:
    """Record the plan on `service` (its endpoint); the ops that go with it:
    the attached networks written back (so a concurrent `network rm`
    conflicts), the address and port claims and releases."""
    service.endpoint.spec.CopyFrom(service.spec.endpoint)
    del service.endpoint.virtual_ips[:]
    service.endpoint.virtual_ips.extend(plan.vips.virtual_ips)
    del service.endpoint.ports[:]
    service.endpoint.ports.extend(plan.ports.ports)
    ops: list[Op] = [Update(network) for network in plan.vips.networks]
    ops.extend(claim_address(keys, network_id, address, vip_owner(service.id))
               for network_id, address in plan.vips.claimed)
    ops.extend(release_address(keys, vip.network_id, vip.addr) for vip in plan.vips.released)
    ops.extend(claim_port(keys, protocol, port, service.id)
               for protocol, port in plan.ports.claimed)
    ops.extend(release_port(keys, protocol, port) for protocol, port in plan.ports.released)
    return ops
