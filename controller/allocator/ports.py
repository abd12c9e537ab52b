"""Published ports: which port each of a service's ports gets, pure.

A port published in ingress mode (the routing mesh) listens on every node,
so it is unique in the cluster: a second service cannot publish it, in any
mode. A port published in host mode listens only on the nodes running the
service's tasks: two services may share it (the scheduler keeps their tasks
apart, see scheduler.filters.HostPortFilter), but not with an ingress port.
An ingress port given as 0 gets the lowest free one of 30000-32767, docker's
dynamic range.

The allocated ports are the service's `endpoint.ports`; each ingress port
also has a create-only key ({prefix}ipam/port/...), written in the same
transaction as the service, so two controllers racing for one port make one
transaction fail (see claims).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from swarm.api.v1 import objects_pb2 as pb

from .networks import AllocationError

DYNAMIC_FIRST = 30000
DYNAMIC_LAST = 32767

PortKey = tuple[int, int]  # (PortConfig.Protocol, published port)


def protocol_name(protocol: int) -> str:
    return pb.PortConfig.Protocol.Name(protocol).lower()  # type: ignore[arg-type]


def ingress_ports(ports: Iterable[pb.PortConfig]) -> list[pb.PortConfig]:
    return [p for p in ports if p.publish_mode == pb.PortConfig.INGRESS]


def publishes_ingress(spec: pb.ServiceSpec) -> bool:
    """Whether the service's tasks join the ingress network."""
    return bool(ingress_ports(spec.endpoint.ports))


@dataclass
class PortPlan:
    ports: list[pb.PortConfig]  # the service's endpoint.ports from now on
    claimed: list[PortKey] = field(default_factory=list)  # ingress ports to claim
    released: list[PortKey] = field(default_factory=list)  # ingress ports given up


def _held(services: Iterable[pb.Service], service_id: str
          ) -> tuple[dict[PortKey, str], dict[PortKey, str]]:
    """(ingress ports, host ports) of the OTHER services, port -> service name."""
    ingress: dict[PortKey, str] = {}
    host: dict[PortKey, str] = {}
    for service in services:
        if service.id == service_id:
            continue
        for port in service.endpoint.ports:
            if not port.published_port:
                continue
            bucket = ingress if port.publish_mode == pb.PortConfig.INGRESS else host
            bucket.setdefault((port.protocol, port.published_port), service.spec.name)
    return ingress, host


def plan_ports(service_id: str, spec: pb.ServiceSpec, current: Sequence[pb.PortConfig],
               services: Iterable[pb.Service]) -> PortPlan:
    """The ports of service `service_id` with the (validated) spec: published
    ports as given, ingress ports given as 0 keeping the one they had (same
    target and protocol) or getting a free dynamic one. `current` is the
    service's endpoint.ports so far, `services` every service (the service
    itself is skipped). Raises AllocationError naming the clashing service."""
    ingress_held, host_held = _held(services, service_id)
    had = {(p.protocol, p.target_port): p.published_port for p in ingress_ports(current)}
    plan = PortPlan(ports=[])
    wanted: set[PortKey] = set()
    explicit = {(p.protocol, p.published_port) for p in spec.endpoint.ports if p.published_port}
    for index, requested in enumerate(spec.endpoint.ports):
        where = f"spec.endpoint.ports[{index}].published_port"
        port = pb.PortConfig()
        port.CopyFrom(requested)
        key = (port.protocol, port.published_port)
        ingress = port.publish_mode == pb.PortConfig.INGRESS
        if port.published_port:
            other = ingress_held.get(key) or (host_held.get(key) if ingress else None)
            if other is not None:
                how = "ingress" if key in ingress_held else "host"
                raise AllocationError(where, f"port {port.published_port}/"
                                      f"{protocol_name(port.protocol)} is already published by "
                                      f"service {other!r} (mode {how})")
        elif ingress:
            port.published_port = had.get((port.protocol, port.target_port), 0)
            taken = set(ingress_held) | set(host_held) | wanted | explicit
            if not port.published_port or (port.protocol, port.published_port) in taken:
                found = next((n for n in range(DYNAMIC_FIRST, DYNAMIC_LAST + 1)
                              if (port.protocol, n) not in taken), None)
                if found is None:
                    raise AllocationError(where, f"no free port left in {DYNAMIC_FIRST}-"
                                          f"{DYNAMIC_LAST}; give one", exhausted=True)
                port.published_port = found
        else:
            raise AllocationError(where, "a port published in host mode needs a published "
                                  "port number")
        if ingress:
            wanted.add((port.protocol, port.published_port))
        plan.ports.append(port)
    before = {(p.protocol, p.published_port) for p in ingress_ports(current) if p.published_port}
    plan.claimed = sorted(wanted - before)
    plan.released = sorted(before - wanted)
    return plan
