"""Overlay conventions shared by the controller and the agent: the MAC of
an endpoint, and compact peers grouped by node and service for the wire
(group_peers on the controller, ungroup on the agent)."""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Iterable

from swarm.api.v1 import dispatcher_pb2 as dpb


@functools.lru_cache(maxsize=1 << 16)
def mac_for_ip(address: str) -> str:
    """The MAC of an overlay endpoint, derived from its IPv4 address as docker
    does (02:42 then the four address bytes): locally administered, unicast,
    and computable by every host without asking anyone. Accepts CIDR form.
    agent.network.model.mac_from_ip is the same rule (a test keeps them equal).
    Memoized: the controller derives it for every endpoint it describes, and
    parsing with ipaddress costs microseconds."""
    ip = ipaddress.IPv4Interface(address).ip
    return "02:42:" + ":".join(f"{byte:02x}" for byte in ip.packed)


@functools.lru_cache(maxsize=1 << 16)
def _split(address: str) -> tuple[bytes, int]:
    """A CIDR IPv4 address as 4 bytes and its prefix length (memoized: the
    same endpoints are grouped for every entry that names them)."""
    interface = ipaddress.IPv4Interface(address)
    return interface.ip.packed, interface.network.prefixlen


# A compact peer as group_rows takes it: its group (VTEP, service, prefix
# length), then its task id, packed address, name and readiness.
PeerRow = tuple[tuple[str, str, int], str, bytes, str, bool]


def peer_row(peer: dpb.OverlayPeer) -> PeerRow:
    """A compact peer as a row (the controller keeps each peer's row, so that
    grouping the peers of every delta reads no message)."""
    packed, prefix = _split(peer.address)
    return (peer.vtep, peer.service_id, prefix), peer.task_id, packed, peer.task_name, peer.ready


def group_peers(peers: Iterable[dpb.OverlayPeer]) -> list[dpb.PeerGroup]:
    """Compact peers (no MAC, no node, names without their ".TASKID"
    suffix) as groups of one node (VTEP), service and prefix length, in
    order of first appearance, each keeping its peers' order
    (dispatcher.proto: PeerGroup). ungroup is the inverse."""
    return group_rows([peer_row(peer) for peer in peers])


def group_rows(rows: Iterable[PeerRow]) -> list[dpb.PeerGroup]:
    """group_peers, of peers as rows (peer_row)."""
    groups: dict[tuple[str, str, int], tuple[list[str], list[bytes], list[str], list[bool]]] = {}
    for key, task_id, packed, name, ready in rows:
        columns = groups.get(key)
        if columns is None:
            columns = groups[key] = ([], [], [], [])
        columns[0].append(task_id)
        columns[1].append(packed)
        columns[2].append(name)
        columns[3].append(ready)
    return [dpb.PeerGroup(vtep=vtep, service_id=service_id, prefix_length=prefix,
                          task_ids=ids, addresses=b"".join(addresses), task_names=names,
                          ready=ready)
            for (vtep, service_id, prefix), (ids, addresses, names, ready) in groups.items()]


def ungroup(groups: Iterable[dpb.PeerGroup]) -> list[dpb.OverlayPeer]:
    """The peers of the groups as compact peers (group_peers' input),
    group by group. A group whose columns differ in length is cut to the
    shortest (a malformed message loses peers, not the session)."""
    peers: list[dpb.OverlayPeer] = []
    for group in groups:
        addresses = group.addresses
        suffix = f"/{group.prefix_length}"
        for index, (task_id, name, ready) in enumerate(
                zip(group.task_ids, group.task_names, group.ready, strict=False)):
            packed = addresses[4 * index:4 * index + 4]
            if len(packed) < 4:
                break
            peers.append(dpb.OverlayPeer(
                task_id=task_id, address=socket.inet_ntoa(packed) + suffix,
                vtep=group.vtep, service_id=group.service_id, task_name=name, ready=ready))
    return peers
