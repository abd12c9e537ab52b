"""The data plane's FDB and neighbour plans (agent/network/peerplan.py) and
the batched netlink requests they become (swarm/host/neighbours.py)."""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address

from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.agent.network.model import Peer
from swarm.agent.network.peerplan import Entries, plan_delta, plan_full, record
from swarm.host import neighbours
from swarm.host.neighbours import Entry, Request

LOCAL = IPv4Address("192.168.152.1")
VTEPS = [LOCAL, IPv4Address("192.168.152.2"), IPv4Address("192.168.152.3")]


def peer(number: int, host: int) -> Peer:
    return Peer(IPv4Address(f"10.5.0.{number + 2}"), VTEPS[host])


# A peer set: endpoint number -> host index (each address at most once).
peer_sets = st.dictionaries(st.integers(0, 9), st.integers(0, 2), max_size=10)


def as_peers(members: dict[int, int]) -> list[Peer]:
    return [peer(number, host) for number, host in sorted(members.items())]


def wanted(members: dict[int, int]) -> Entries:
    remote = [p for p in as_peers(members) if p.vtep != LOCAL]
    return Entries({p.mac: str(p.vtep) for p in remote}, {str(p.ip): p.mac for p in remote})


@given(st.lists(peer_sets, min_size=1, max_size=8))
@settings(max_examples=300, deadline=None)
def test_deltas_in_order_from_nothing_give_exactly_the_full_set(sets: list[dict[int, int]]) -> None:
    """Each step's delta (old versions of the peers that left or changed,
    new versions of those that came or changed), planned and recorded from
    the entries the previous steps left: always the full set's entries, and
    only the touched keys are in a plan."""
    entries = Entries()
    before: dict[int, int] = {}
    for after in sets:
        removed = [peer(n, h) for n, h in before.items() if after.get(n) != h]
        upserted = [peer(n, h) for n, h in after.items() if before.get(n) != h]
        plan = plan_delta(entries, removed, upserted, LOCAL)
        assert plan.after is None
        touched = {str(p.ip) for p in removed + upserted}
        assert all(r.entry.address in touched or r.entry.fdb for r in plan.requests)
        deletes = [r.delete for r in plan.requests]
        assert deletes == sorted(deletes, reverse=True), "deletes go first"
        record(entries, plan.requests)
        assert entries == wanted(after)
        before = after


@given(peer_sets, peer_sets)
def test_a_full_plan_goes_from_whatever_the_kernel_has(found: dict[int, int],
                                                       members: dict[int, int]) -> None:
    dumped = wanted(found)
    plan = plan_full(set(dumped.fdb.items()), dict(dumped.neigh), as_peers(members), LOCAL)
    assert plan.after == wanted(members)
    record(dumped, plan.requests)
    assert dumped == wanted(members)
    # Nothing to do when the kernel already matches.
    again = wanted(members)
    assert plan_full(set(again.fdb.items()), dict(again.neigh), as_peers(members),
                     LOCAL).requests == []


def test_a_peer_that_moved_host_is_replaced_not_doubled() -> None:
    entries = Entries()
    record(entries, plan_delta(entries, [], [peer(1, 1)], LOCAL).requests)
    plan = plan_delta(entries, [peer(1, 1)], [peer(1, 2)], LOCAL)
    assert plan.requests == [Request(False, Entry(True, peer(1, 2).mac, str(VTEPS[2])))]
    # Moved onto this host: reached through the bridge, its entries go.
    plan = plan_delta(entries, [peer(1, 1)], [peer(1, 0)], LOCAL)
    assert [r.delete for r in plan.requests] == [True, True]


def _unpack(message: bytes) -> tuple[int, int, int, int, int, int, dict[int, bytes]]:
    length, kind, flags, seq, _ = struct.unpack_from("=LHHLL", message)
    assert length == len(message)
    family, ifindex, state, ndflags, _ = struct.unpack_from("=BxxxiHBB", message, 16)
    attributes = {}
    at = 28
    while at < length:
        size, attribute = struct.unpack_from("=HH", message, at)
        attributes[attribute] = message[at + 4:at + size]
        at += (size + 3) & ~3
    return kind, flags, seq, family, ifindex, state | ndflags << 16, attributes


def test_requests_encode_as_iproute2_sends_them() -> None:
    mac = "02:42:0a:05:00:03"
    fdb = _unpack(neighbours.encode(Request(False, Entry(True, mac, "192.168.152.2")), 7, 41))
    assert fdb == (neighbours.RTM_NEWNEIGH, 0x1 | 0x4 | 0x100 | 0x400, 41, 7, 7,
                   0x80 | 0x40 | 0x02 << 16,
                   {2: bytes.fromhex("02420a050003"), 1: bytes([192, 168, 152, 2])})
    neigh = _unpack(neighbours.encode(Request(True, Entry(False, mac, "10.5.0.3")), 9, 42))
    assert neigh == (neighbours.RTM_DELNEIGH, 0x1 | 0x4, 42, socket.AF_INET, 9, 0x80,
                     {1: bytes([10, 5, 0, 3]), 2: bytes.fromhex("02420a050003")})


def test_acknowledgements_and_dumps_parse() -> None:
    def ack(seq: int, code: int) -> bytes:
        return struct.pack("=LHHLL", 36, neighbours.NLMSG_ERROR, 0, seq, 0) + \
            struct.pack("=i", -code) + bytes(16)

    assert neighbours.acknowledgements(ack(1, 0) + ack(2, 2)) == [(1, 0), (2, 2)]
    entry = neighbours.encode(Request(False, Entry(True, "02:42:0a:05:00:03", "192.168.152.2")),
                              7, 1)
    other_device = neighbours.encode(Request(False, Entry(True, "02:42:0a:05:00:04",
                                                          "192.168.152.3")), 8, 2)
    done = struct.pack("=LHHLL", 20, neighbours.NLMSG_DONE, 0, 3, 0) + bytes(4)
    found, finished = neighbours.parse_neighbours(entry + other_device + done, 7)
    assert (found, finished) == ([("02:42:0a:05:00:03", "192.168.152.2", 0xC0, 0x02)], True)
    assert neighbours.parse_neighbours(entry, 7)[1] is False
