"""Driving the agent's overlay data plane (agent.network.OverlayManager) from
the assignments stream.

The dispatcher sends, per network the node's tasks use, the network and the
complete set of its peers on other nodes (dispatcher.proto: Assignments
.networks / .removed_networks). These functions turn a message into
OverlayManager calls with its replace semantics: set_peers gets the whole
peer set of a network and makes the FDB and neighbour entries match, so a
lost or repeated message never leaves a stale entry behind.

A worker calls add_networks before starting the message's tasks (their
devices must exist to attach to), and removes networks_to_remove only after
the tasks that used them have stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from ipaddress import IPv4Interface
from typing import Protocol

from swarmapi.v1 import dispatcher_pb2 as dpb

from .network.model import OverlayNetwork, Peer

log = logging.getLogger(__name__)


class OverlayManager(Protocol):
    """What these functions need of agent.network.OverlayManager."""

    async def ensure_network(self, network: OverlayNetwork) -> None: ...

    async def set_peers(self, network: OverlayNetwork, peers: Iterable[Peer]) -> None: ...

    async def remove_network(self, network_id: str) -> None: ...

    def networks(self) -> list[str]: ...


def peers_of(entry: dpb.NetworkAssignment) -> list[Peer]:
    """The entry's peers as the data plane takes them. A peer that does not
    parse (a node advertising a hostname, say) is left out, with a warning,
    rather than failing the whole network."""
    peers: list[Peer] = []
    for peer in entry.peers:
        try:
            peers.append(Peer.create(str(IPv4Interface(peer.address).ip), peer.vtep, peer.mac))
        except ValueError as error:
            log.warning("network %s: ignoring peer %s (task %s on %s): %s", entry.network.id,
                        peer.address, peer.task_id, peer.vtep, error)
    return peers


async def add_networks(manager: OverlayManager, assignments: dpb.Assignments) -> None:
    """Create (or keep) every network the message names and set its peers."""
    for entry in assignments.networks:
        network = OverlayNetwork.from_proto(entry.network)
        await manager.ensure_network(network)
        await manager.set_peers(network, peers_of(entry))


def networks_to_remove(manager: OverlayManager, assignments: dpb.Assignments) -> list[str]:
    """The networks to take down after this message: those it removes and, for
    a COMPLETE message, every network this host has that it does not name."""
    named = {entry.network.id for entry in assignments.networks}
    gone = set(assignments.removed_networks)
    if assignments.type == dpb.Assignments.COMPLETE:
        gone |= set(manager.networks()) - named
    return sorted(gone - named)


async def sync_networks(manager: OverlayManager, assignments: dpb.Assignments) -> None:
    """Both halves at once (for workers that run nothing, like the simulated one)."""
    await add_networks(manager, assignments)
    for network_id in networks_to_remove(manager, assignments):
        await manager.remove_network(network_id)


class RecordingOverlay:
    """An OverlayManager that only remembers what it was told (simulated
    agents and tests)."""

    def __init__(self) -> None:
        self.network_objects: dict[str, OverlayNetwork] = {}
        self.peers: dict[str, list[Peer]] = {}

    async def ensure_network(self, network: OverlayNetwork) -> None:
        self.network_objects[network.network_id] = network

    async def set_peers(self, network: OverlayNetwork, peers: Iterable[Peer]) -> None:
        self.peers[network.network_id] = list(peers)

    async def remove_network(self, network_id: str) -> None:
        self.network_objects.pop(network_id, None)
        self.peers.pop(network_id, None)

    def networks(self) -> list[str]:
        return sorted(self.network_objects)
