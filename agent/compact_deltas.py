"""Compact network deltas, filled in as the session receives them.

To an agent that asks (SessionRequest.compact_deltas), the dispatcher sends
a network delta without the network object and without the service records
when they did not change since that network's last entry
(NetworkAssignment.network_unchanged, services_unchanged), and peers without
their MAC (derived from the address), their node (unused here) and their
name's ".TASKID" suffix (peers_compact). CompactDeltas puts the network and the
records back, in place, before the worker sees the message, so that
everything after (the data plane, discovery, the routing mesh) reads whole
entries; the flags stay set, so the data plane knows the network need not be
set up again. The names are put back where peers are filed
(overlay_sync.PeerSets.apply_changes, which every consumer of names reads
through, with entry_peers): a per-peer loop here cost every message's every
peer once more, needed or not. The same goes for grouped peers
(NetworkAssignment.peer_groups): entry_peers makes them peers where they are
filed; what needs only their task ids reads the groups' columns. A module
of its own: the session imports nothing heavy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from swarm.api.overlay import ungroup
from swarm.api.v1 import dispatcher_pb2 as dpb
from swarm.api.v1 import objects_pb2 as pb

log = logging.getLogger(__name__)


class CompactDeltas:
    """Fills in what a compact delta left out (dispatcher.proto:
    NetworkAssignment.network_unchanged, services_unchanged) from the last
    entry of that network, in place, so that every consumer of a message
    sees whole entries. One per session stream; cheap (one small network
    object and a few service records per entry)."""

    def __init__(self) -> None:
        self._networks: dict[str, pb.Network] = {}
        self._services: dict[str, list[dpb.ServiceRecord]] = {}

    def expand(self, assignments: dpb.Assignments) -> None:
        for entry in assignments.networks:
            network_id = entry.network.id
            if entry.network_unchanged:
                known = self._networks.get(network_id)
                if known is None:
                    log.warning("network %s: a compact delta for a network never sent whole",
                                network_id)
                else:
                    entry.network.CopyFrom(known)
            else:
                self._networks[network_id] = entry.network
            if entry.services_unchanged:
                entry.services.extend(self._services.get(network_id, ()))
            else:
                self._services[network_id] = list(entry.services)
        named = {entry.network.id for entry in assignments.networks}
        gone = set(assignments.removed_networks)
        if assignments.type == dpb.Assignments.COMPLETE:
            gone |= set(self._networks) - named
        for network_id in gone - named:
            self._networks.pop(network_id, None)
            self._services.pop(network_id, None)


def entry_peers(entry: dpb.NetworkAssignment) -> list[dpb.OverlayPeer]:
    """The entry's peers, whole (names with their ".TASKID" suffix), from
    whichever form it carries them in: `peers` (compact ones are completed
    in place, once: the flag is cleared, for an entry several consumers
    take) and `peer_groups` (made anew on each call)."""
    if entry.peers_compact:
        entry.peers_compact = False
        _whole_names(entry.peers)
    grouped = ungroup(entry.peer_groups)
    _whole_names(grouped)
    return [*entry.peers, *grouped]


def _whole_names(peers: Iterable[dpb.OverlayPeer]) -> None:
    for peer in peers:
        if peer.task_name:  # a task's (a node's own endpoint has none)
            peer.task_name = f"{peer.task_name}.{peer.task_id}"
