"""IPAM decisions as store operations: the create-only keys that make every
address, VNI and subnet unique across racing controllers, and their release.

A claim goes in the same transaction as the object that records the
allocation (the task, service or network), and a release in the same
transaction as the object's deletion, so the keys and the objects never
disagree.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from swarm.api.v1 import objects_pb2 as pb

from ..store import Claim, Create, Keys, Op, Release, RequireAbsent, ReserveName
from .ipam import address_of, ancestor_bits, subnet_bits


def task_owner(task_id: str) -> str:
    return f"task/{task_id}"


def vip_owner(service_id: str) -> str:
    return f"vip/{service_id}"


def node_owner(node_id: str) -> str:
    return f"node/{node_id}"


def claim_port(keys: Keys, protocol: int, port: int, service_id: str) -> Claim:
    """An ingress port, unique in the cluster (see allocator.ports)."""
    return Claim(keys.port(protocol, port), service_id.encode())


def release_port(keys: Keys, protocol: int, port: int) -> Release:
    return Release(keys.port(protocol, port))


def release_ports(keys: Keys, service: pb.Service) -> list[Op]:
    """Releases of the service's ingress ports."""
    return [release_port(keys, p.protocol, p.published_port) for p in service.endpoint.ports
            if p.publish_mode == pb.PortConfig.INGRESS and p.published_port]


def release_node(keys: Keys, node: pb.Node) -> list[Op]:
    """Releases of the node's own addresses (its ingress endpoint)."""
    return [release_address(keys, attachment.network_id, cidr)
            for attachment in node.attachments for cidr in attachment.addresses]


def claim_address(keys: Keys, network_id: str, address: int, owner: str) -> Claim:
    return Claim(keys.address(network_id, str(IPv4Address(address))), owner.encode())


def release_address(keys: Keys, network_id: str, cidr: str) -> Release:
    return Release(keys.address(network_id, str(IPv4Address(address_of(cidr)))))


def release_task(keys: Keys, task: pb.Task) -> list[Op]:
    """Releases of every address the task holds (nothing for an unallocated task)."""
    return [release_address(keys, attachment.network_id, cidr)
            for attachment in task.networks for cidr in attachment.addresses]


def release_vips(keys: Keys, service: pb.Service) -> list[Op]:
    return [release_address(keys, vip.network_id, vip.addr)
            for vip in service.endpoint.virtual_ips]


def claim_network(keys: Keys, network: pb.Network) -> list[Op]:
    """Claims of the network's VNI and subnet.

    The subnet key is named by its prefix bits (ipam.subnet_bits), so a claim
    fails when an overlapping subnet is claimed: a smaller one inside it (a key
    under its own: the prefix check) or a larger one around it (one of its
    ancestors' keys)."""
    subnet = IPv4Network(network.subnet)
    own = keys.subnet(subnet_bits(subnet))
    ops: list[Op] = [
        Claim(keys.vni(network.vni), network.id.encode()),
        RequireAbsent(own, prefix=True),
        Claim(own, network.id.encode()),
    ]
    ops.extend(RequireAbsent(keys.subnet(bits)) for bits in ancestor_bits(subnet))
    return ops


def network_ops(keys: Keys, network: pb.Network) -> list[Op]:
    """A new network with its unique name and its claims, for one transaction."""
    return [Create(network), ReserveName("networks", network.spec.name, network.id),
            *claim_network(keys, network)]


def release_network(keys: Keys, network: pb.Network) -> list[Op]:
    """Releases of the network's VNI, subnet and (as a safety sweep: they should
    be gone with their tasks and services) any address keys left on it."""
    ops: list[Op] = [Release(keys.network_addresses(network.id), prefix=True)]
    if network.vni:
        ops.append(Release(keys.vni(network.vni)))
    if network.subnet:
        ops.append(Release(keys.subnet(subnet_bits(IPv4Network(network.subnet)))))
    return ops
