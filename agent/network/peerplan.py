"""What to write to a VXLAN device's FDB and neighbour table, as pure plans.

The kernel holds, per remote endpoint, an FDB entry (its MAC -> its host's
VTEP) and a neighbour entry (its IP -> its MAC). `Entries` is that picture
as the overlay manager last left it. Two planners:

* plan_full: from what a dump found to exactly the wanted peers (a complete
  set from the dispatcher, a periodic resync): stale entries deleted, missing
  or different ones replaced.
* plan_delta: from the known entries by a delta (the old versions of the
  peers that left or changed, the new versions of those that came or
  changed), touching only those keys: O(change), no dump and no copy,
  whatever the size of the network (`record` then updates the entries).

Both skip peers on this host's own VTEP (reached through the bridge). Applying
the deltas of a sequence of peer sets in order, from nothing, yields what a
full plan of the last set does (tests/unit/test_peerplan.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from swarm.host.neighbours import Entry, Request

from .model import Peer


@dataclass
class Entries:
    """A VXLAN device's static entries: MAC -> VTEP, and IP -> MAC."""

    fdb: dict[str, str] = field(default_factory=dict)
    neigh: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """Requests in the order to send them (deletes first, so that a MAC that
    moved never has two destinations), and for a full plan the entries once
    they are done (a delta's are `record`ed into the known ones: no copy)."""

    requests: list[Request]
    after: Entries | None


def _remote(peers: Iterable[Peer], local: IPv4Address) -> list[Peer]:
    return [p for p in peers if p.vtep != local]


def plan_full(fdb_found: set[tuple[str, str]], neigh_found: dict[str, str],
              peers: Iterable[Peer], local: IPv4Address) -> Plan:
    """From the dumped entries to exactly the remote peers' entries."""
    remote = _remote(peers, local)
    fdb_wanted = {p.mac: str(p.vtep) for p in remote}
    neigh_wanted = {str(p.ip): p.mac for p in remote}
    deletes = [Request(True, Entry(True, mac, vtep)) for mac, vtep in sorted(fdb_found)
               if fdb_wanted.get(mac) != vtep]
    deletes += [Request(True, Entry(False, mac, ip)) for ip, mac in sorted(neigh_found.items())
                if neigh_wanted.get(ip) != mac]
    have = set(fdb_found)
    sets = [Request(False, Entry(True, mac, vtep)) for mac, vtep in sorted(fdb_wanted.items())
            if (mac, vtep) not in have]
    sets += [Request(False, Entry(False, mac, ip)) for ip, mac in sorted(neigh_wanted.items())
             if neigh_found.get(ip) != mac]
    return Plan(deletes + sets, Entries(fdb_wanted, neigh_wanted))


def plan_delta(current: Entries, removed: Iterable[Peer], upserted: Iterable[Peer],
               local: IPv4Address) -> Plan:
    """From the known entries by a delta: `removed` are the old versions of
    the peers that left or changed, `upserted` the new versions of those
    that came or changed. `current` is not modified; `record` the requests
    into it once they were carried out."""
    # What each touched key ends as: None for gone.
    fdb_final: dict[str, str | None] = {}
    neigh_final: dict[str, str | None] = {}
    for peer in _remote(removed, local):
        if current.fdb.get(peer.mac) == str(peer.vtep):
            fdb_final[peer.mac] = None
        if current.neigh.get(str(peer.ip)) == peer.mac:
            neigh_final[str(peer.ip)] = None
    for peer in _remote(upserted, local):
        fdb_final[peer.mac] = str(peer.vtep)
        neigh_final[str(peer.ip)] = peer.mac
    deletes: list[Request] = []
    sets: list[Request] = []
    for mac, vtep in fdb_final.items():
        had = current.fdb.get(mac)
        if vtep is None and had is not None:
            deletes.append(Request(True, Entry(True, mac, had)))
        elif vtep is not None and had != vtep:
            sets.append(Request(False, Entry(True, mac, vtep)))
    for ip, wanted in neigh_final.items():
        had = current.neigh.get(ip)
        if wanted is None and had is not None:
            deletes.append(Request(True, Entry(False, had, ip)))
        elif wanted is not None and had != wanted:
            sets.append(Request(False, Entry(False, wanted, ip)))
    return Plan(deletes + sets, None)


def record(entries: Entries, requests: Iterable[Request]) -> None:
    """Bring `entries` up to date with requests that were carried out."""
    for request in requests:
        entry = request.entry
        if entry.fdb:
            if request.delete:
                entries.fdb.pop(entry.mac, None)
            else:
                entries.fdb[entry.mac] = entry.address
        elif request.delete:
            entries.neigh.pop(entry.address, None)
        else:
            entries.neigh[entry.address] = entry.mac
