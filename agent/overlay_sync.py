"""Driving an agent's overlay data plane from the assignments stream.

The dispatcher sends, per network the node's tasks use, the network and the
complete set of its peers on other nodes (dispatcher.proto: Assignments
.networks / .removed_networks). `sync_networks` turns each message into calls
on an OverlayManager with replace semantics: set_peers gets the whole peer
set of a network, and the manager adds and removes FDB and neighbour entries
to match (flannel's approach), so a lost or repeated message never leaves a
stale entry behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from swarmapi.v1 import dispatcher_pb2 as dpb
from swarmapi.v1 import objects_pb2 as pb


class OverlayManager(Protocol):
    """The data plane of one host (pyroute2 in the real agent)."""

    async def ensure_network(self, network: pb.Network) -> None:
        """Create (or keep) the network's bridge and VXLAN device (VNI, subnet)."""

    async def set_peers(self, network_id: str, peers: Sequence[dpb.OverlayPeer]) -> None:
        """Make the network's remote entries exactly `peers` (FDB mac -> vtep,
        permanent neighbour address -> mac); anything else is removed."""

    async def remove_network(self, network_id: str) -> None:
        """Remove the network's devices and entries from this host."""

    def networks(self) -> set[str]:
        """The networks this host has devices for."""


async def add_networks(manager: OverlayManager, assignments: dpb.Assignments) -> None:
    """The networks a message names, with their complete peer sets. A worker
    calls this before starting the message's tasks (their devices must exist)."""
    for entry in assignments.networks:
        await manager.ensure_network(entry.network)
        await manager.set_peers(entry.network.id, entry.peers)


def networks_to_remove(manager: OverlayManager, assignments: dpb.Assignments) -> list[str]:
    """The networks to take down after this message: those it removes and, for
    a COMPLETE message, every network it does not name."""
    named = {entry.network.id for entry in assignments.networks}
    gone = set(assignments.removed_networks)
    if assignments.type == dpb.Assignments.COMPLETE:
        gone |= manager.networks() - named
    return sorted(gone - named)


async def sync_networks(manager: OverlayManager, assignments: dpb.Assignments) -> None:
    """Apply one assignments message's network part at once. A real worker
    should instead remove networks (networks_to_remove) only after the tasks
    that used them have been stopped."""
    await add_networks(manager, assignments)
    for network_id in networks_to_remove(manager, assignments):
        await manager.remove_network(network_id)


class RecordingOverlay:
    """An OverlayManager that only remembers what it was told (simulated
    agents and tests)."""

    def __init__(self) -> None:
        self.network_objects: dict[str, pb.Network] = {}
        self.peers: dict[str, list[dpb.OverlayPeer]] = {}

    async def ensure_network(self, network: pb.Network) -> None:
        self.network_objects[network.id] = network

    async def set_peers(self, network_id: str, peers: Sequence[dpb.OverlayPeer]) -> None:
        self.peers[network_id] = list(peers)

    async def remove_network(self, network_id: str) -> None:
        self.network_objects.pop(network_id, None)
        self.peers.pop(network_id, None)

    def networks(self) -> set[str]:
        return set(self.network_objects)
