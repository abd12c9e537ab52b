"""Driving the agent's overlay data plane (agent.network.OverlayManager) from
the assignments stream.

The dispatcher sends, per network the node's tasks use, the network, every
endpoint on it (this node's own included) and the services attached to it:
the complete peer set first, then only what changed (dispatcher.proto:
NetworkAssignment). A compact delta leaves out the network object and the
service records when unchanged; CompactDeltas (compact_deltas.py) fills
them in from the last entry as the session receives it, so everything after
sees whole entries. PeerSets keeps the resulting set per network (as the data plane takes it,
and as sent, for service discovery) and says what each entry changed: a
complete set goes to the OverlayManager's set_peers (replace semantics: the
FDB and neighbour entries are made to match, so no stale entry survives), a
delta to its update_peers (only the entries that changed, in one batch). An
entry whose network did not change does not set the network up again.
A new session starts with complete sets.

A worker calls add_networks before starting the message's tasks (their
devices must exist to attach to), and removes networks_to_remove only after
the tasks that used them have stopped.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Interface
from typing import Protocol

from swarm.api.v1 import dispatcher_pb2 as dpb

from .compact_deltas import entry_peers
from .network.model import OverlayNetwork, Peer
from .network.overlay import OverlayError

log = logging.getLogger(__name__)


class OverlayManager(Protocol):
    """What these functions need of agent.network.OverlayManager."""

    async def ensure_network(self, network: OverlayNetwork) -> None: ...

    async def set_peers(self, network: OverlayNetwork, peers: Iterable[Peer]) -> None: ...

    async def update_peers(self, network: OverlayNetwork, removed: Iterable[Peer],
                           upserted: Iterable[Peer],
                           everything: Callable[[], Iterable[Peer]]) -> None: ...

    def ensured(self, network_id: str) -> bool: ...

    async def remove_network(self, network_id: str) -> None: ...

    def networks(self) -> list[str]: ...


@dataclass(frozen=True)
class PeerChanges:
    """What one entry changed in a network's peer set, as the data plane
    takes it: everything (complete: `upserted` is the whole set), or the old
    versions of the peers that left or changed and the new versions of
    those that came or changed (a readiness change alone changes neither)."""

    complete: bool
    removed: list[Peer]
    upserted: list[Peer]


class PeerSets:
    """The peer set of each network as the dispatcher described it: complete
    sets replace, deltas apply on top; and its service records (every entry
    carries them all). One per agent (its worker's state). Peers are
    converted once, when they arrive, not on every message."""

    def __init__(self) -> None:
        self._sets: dict[str, dict[str, Peer]] = {}
        self._sent: dict[str, dict[str, dpb.OverlayPeer]] = {}
        self._services: dict[str, list[dpb.ServiceRecord]] = {}

    def apply(self, entry: dpb.NetworkAssignment) -> list[Peer]:
        """The network's whole peer set after this entry, by task id."""
        self.apply_changes(entry)
        return self.peers(entry.network.id)

    def peers(self, network_id: str) -> list[Peer]:
        """The network's whole peer set, by task id."""
        current = self._sets.get(network_id, {})
        return [current[task_id] for task_id in sorted(current)]

    def apply_changes(self, entry: dpb.NetworkAssignment) -> PeerChanges:
        """Take the entry; what it changed, in time proportional to its size."""
        network_id = entry.network.id
        removed: list[Peer] = []
        upserted: list[Peer] = []
        if entry.delta:
            current = self._sets.setdefault(network_id, {})
            sent = self._sent.setdefault(network_id, {})
            for task_id in entry.removed_peers:
                old = current.pop(task_id, None)
                if old is not None:
                    removed.append(old)
                sent.pop(task_id, None)
        else:
            current = self._sets[network_id] = {}
            sent = self._sent[network_id] = {}
        # Compact peers (names without their suffix, or grouped) are made
        # whole here, where each is filed, not in the session (compact_deltas).
        for peer in entry_peers(entry):
            sent[peer.task_id] = peer
            converted = _convert(peer, network_id)
            old = current.get(peer.task_id)
            if converted == old:
                continue  # its readiness, name or service changed: not the data plane's
            if old is not None:
                removed.append(old)
            if converted is None:
                del current[peer.task_id]
            else:
                current[peer.task_id] = converted
                upserted.append(converted)
        self._services[network_id] = list(entry.services)
        return PeerChanges(not entry.delta, removed, upserted)

    def endpoints(self, network_id: str) -> list[dpb.OverlayPeer]:
        """The network's endpoints as sent (with service, task name and
        readiness), by task id."""
        sent = self._sent.get(network_id, {})
        return [sent[task_id] for task_id in sorted(sent)]

    def services(self, network_id: str) -> list[dpb.ServiceRecord]:
        """The services attached to the network, as last sent."""
        return list(self._services.get(network_id, ()))

    def forget(self, network_id: str) -> None:
        self._sets.pop(network_id, None)
        self._sent.pop(network_id, None)
        self._services.pop(network_id, None)


def _convert(peer: dpb.OverlayPeer, network_id: str) -> Peer | None:
    """A peer as the data plane takes it. One that does not parse (a node
    advertising a hostname, say) is left out, with a warning, rather than
    failing the whole network."""
    converted = _parsed(peer.address, peer.vtep, peer.mac)
    if isinstance(converted, str):
        log.warning("network %s: ignoring peer %s (task %s on %s): %s", network_id,
                    peer.address, peer.task_id, peer.vtep, converted)
        return None
    return converted


@functools.lru_cache(maxsize=1 << 16)
def _parsed(address: str, vtep: str, mac: str) -> Peer | str:
    """The Peer of these fields, or why they do not parse. Memoized: parsing
    addresses with ipaddress costs several microseconds, and the same peer
    comes again whenever only its readiness changed (and, where many
    simulated nodes share a process, once per node). Peers are frozen, so a
    shared one is safe."""
    try:
        return Peer.create(str(IPv4Interface(address).ip), vtep, mac)
    except ValueError as error:
        return str(error)


def peers_of(peers: Iterable[dpb.OverlayPeer], network_id: str = "") -> list[Peer]:
    """Peers as the data plane takes them, the unparseable left out."""
    return [p for p in (_convert(peer, network_id) for peer in peers) if p is not None]


async def add_networks(manager: OverlayManager, assignments: dpb.Assignments,
                       peer_sets: PeerSets) -> dict[str, str]:
    """Create (or keep) every network the message names and set its peers.
    Each network on its own: one that cannot be set up here (an underlay MTU
    too small, say) does not keep the others from being set up. Returns why
    each failed one failed, by network id (its tasks are rejected with it)."""
    failed: dict[str, str] = {}
    for entry in assignments.networks:
        network_id = entry.network.id
        # Bookkeeping first, whatever the data plane does: later deltas build on it.
        changes = peer_sets.apply_changes(entry)
        try:
            network = OverlayNetwork.from_proto(entry.network)
            set_up = not (entry.network_unchanged and manager.ensured(network_id))
            if set_up:
                await manager.ensure_network(network)
            if changes.complete:
                await manager.set_peers(network, changes.upserted)
            elif set_up or changes.removed or changes.upserted:
                # After ensure_network the manager knows no entries: this
                # sets them all (a recreated VXLAN device has lost them).
                await manager.update_peers(network, changes.removed, changes.upserted,
                                           functools.partial(peer_sets.peers, network_id))
        except (OverlayError, ValueError, OSError) as error:
            log.error("overlay network %s: %s", entry.network.id, error)
            failed[entry.network.id] = str(error)
    return failed


def networks_to_remove(manager: OverlayManager, assignments: dpb.Assignments) -> list[str]:
    """The networks to take down after this message: those it removes and, for
    a COMPLETE message, every network this host has that it does not name."""
    named = {entry.network.id for entry in assignments.networks}
    gone = set(assignments.removed_networks)
    if assignments.type == dpb.Assignments.COMPLETE:
        gone |= set(manager.networks()) - named
    return sorted(gone - named)


async def sync_networks(manager: OverlayManager, assignments: dpb.Assignments,
                        peer_sets: PeerSets) -> None:
    """Both halves at once (for workers that run nothing, like the simulated one)."""
    await add_networks(manager, assignments, peer_sets)  # failures are logged
    for network_id in networks_to_remove(manager, assignments):
        await manager.remove_network(network_id)
        peer_sets.forget(network_id)


@functools.lru_cache(maxsize=1 << 16)
def _recorded_key(peer: Peer) -> tuple[str, str]:
    """How RecordingOverlay files a peer (memoized: str() of an address is
    slow, and many simulated nodes in one process file the same peers)."""
    return str(peer.ip), str(peer.vtep)


class RecordingOverlay:
    """An OverlayManager that only remembers what it was told (simulated
    agents and tests)."""

    def __init__(self) -> None:
        self.network_objects: dict[str, OverlayNetwork] = {}
        self._peers: dict[str, dict[tuple[str, str], Peer]] = {}  # by (ip, vtep)
        self.full_sets = 0  # set_peers calls (tests: deltas are not applied as full sets)

    @property
    def peers(self) -> dict[str, list[Peer]]:
        """The peers of each network, in address order."""
        return {network_id: [peers[key] for key in sorted(peers)]
                for network_id, peers in self._peers.items()}

    async def ensure_network(self, network: OverlayNetwork) -> None:
        self.network_objects[network.network_id] = network

    def ensured(self, network_id: str) -> bool:
        return network_id in self.network_objects

    async def set_peers(self, network: OverlayNetwork, peers: Iterable[Peer]) -> None:
        self.full_sets += 1
        self._peers[network.network_id] = {_recorded_key(p): p for p in peers}

    async def update_peers(self, network: OverlayNetwork, removed: Iterable[Peer],
                           upserted: Iterable[Peer],
                           everything: Callable[[], Iterable[Peer]]) -> None:
        current = self._peers.get(network.network_id)
        if current is None:
            await self.set_peers(network, everything())
            return
        for peer in removed:
            current.pop(_recorded_key(peer), None)
        for peer in upserted:
            current[_recorded_key(peer)] = peer

    async def remove_network(self, network_id: str) -> None:
        self.network_objects.pop(network_id, None)
        self._peers.pop(network_id, None)

    def networks(self) -> list[str]:
        return sorted(self.network_objects)
