"""What the dispatcher tells every node about the routing mesh, on top of
the ingress network's peers (peers.py): the node's own address on it, and
the services publishing ports in ingress mode with those ports.

While any service publishes a port in ingress mode (mesh_needed), every
node with an address on the ingress network is assigned it (its own
endpoint is in the OverlayIndex, see peers.node_endpoints), whether or not it
runs a task there: it must listen on every published port. While none does,
no node is sent it: its peers would be every node, news of every join for
every node, and nothing listens (dispatcher/assignments.py). The services are
few, so each ingress entry carries all of them (dispatcher.proto); a change
of the published services alone is sent as a delta without peer changes.
"""

from __future__ import annotations

from collections.abc import Iterable

from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import objects_pb2 as pb

from .allocator.ingress import node_address
from .allocator.ports import ingress_ports


def ingress_records(services: Iterable[pb.Service]) -> list[dpb.ServiceRecord]:
    """The services publishing ports in ingress mode (their allocated ports), by id."""
    records = []
    for service in sorted(services, key=lambda s: s.id):
        ports = ingress_ports(service.endpoint.ports)
        if ports:
            records.append(dpb.ServiceRecord(id=service.id, name=service.spec.name,
                                             mode=service.spec.endpoint.mode, ports=ports))
    return records


def mesh_needed(services: Iterable[pb.Service]) -> bool:
    """Whether nodes need the ingress network: some service publishes a
    port in ingress mode."""
    return any(ingress_ports(service.endpoint.ports) for service in services)


def affects_mesh(old: pb.Service | None, new: pb.Service | None) -> bool:
    """Whether a service change changes what the ingress entries carry."""
    return ingress_records([old] if old is not None else []) != \
        ingress_records([new] if new is not None else [])


def mesh_fingerprint(node: pb.Node | None, network: pb.Network,
                     records: list[dpb.ServiceRecord]) -> bytes:
    """What a node was told of the mesh besides the peers: resent when it changes."""
    address = node_address(node, network.id) if node is not None else ""
    return address.encode() + b"\0" + b"".join(r.SerializeToString(deterministic=True)
                                              for r in records)


def complete_ingress(assignment: dpb.NetworkAssignment | None, network: pb.Network,
                     node: pb.Node | None, records: list[dpb.ServiceRecord],
                     changed: bool) -> dpb.NetworkAssignment | None:
    """The ingress entry for `node`: the peer assignment (None: no peer
    changed) with the node's address and the published services; a delta
    without peers when only those `changed`; None when nothing did."""
    if assignment is None:
        if not changed:
            return None
        assignment = dpb.NetworkAssignment(network=network, delta=True)
        assignment.network.ClearField("meta")
        assignment.network.address_cursor = ""
    if node is not None:
        assignment.node_address = node_address(node, network.id)
    del assignment.services[:]
    assignment.services.extend(records)
    assignment.services_unchanged = False  # the ingress entry's records are the mesh's
    return assignment
