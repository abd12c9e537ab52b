"""The kernel routing mesh's decisions (agent.network.mesh): the nft tables
made of published ports and backends, the links' addresses; and the PROXY
protocol v2 header of the userspace proxy. Pure; the tables are loaded into
real namespaces by tests/network/test_published.py."""

from __future__ import annotations

import re
import socket
import struct
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarm.agent.network import mesh
from swarm.agent.network.proxy import PROXY_V2_SIGNATURE, parse_proxy_v2, proxy_v2_header

TCP, UDP, SCTP = 0, 1, 2
SBX = IPv4Address("169.254.64.6")


def test_no_port_no_table() -> None:
    script = mesh.node_ruleset("swarm-mesh-x", [], SBX, {})
    assert script == "table ip swarm-mesh-x\ndelete table ip swarm-mesh-x\n"
    # Without a linked sandbox, ingress ports get no rule either.
    assert mesh.node_ruleset("t", [(TCP, 80)], None, {}) == "table ip t\ndelete table ip t\n"


def test_the_node_sends_ingress_ports_to_the_sandbox_and_host_ports_to_tasks() -> None:
    host = {(TCP, 9000): mesh.HostTarget((IPv4Address("169.254.128.2"),), 90),
            (TCP, 9001): mesh.HostTarget((IPv4Address("169.254.130.2"),
                                          IPv4Address("169.254.129.2")), 91),
            (TCP, 9002): mesh.HostTarget((), 92)}  # no task linked yet: no rule
    script = mesh.node_ruleset("t", [(UDP, 53), (TCP, 80), (SCTP, 99)], SBX, host)
    assert script.startswith("table ip t\ndelete table ip t\ntable ip t {\n")
    rules = [line.strip() for line in script.splitlines() if "dport" in line]
    assert rules == [
        "tcp dport 80 dnat to 169.254.64.6",  # the port is kept: the sandbox maps it
        "udp dport 53 dnat to 169.254.64.6",
        "tcp dport 9000 dnat to 169.254.128.2:90",
        "tcp dport 9001 dnat to numgen random mod 2 map "
        "{ 0 : 169.254.129.2, 1 : 169.254.130.2 }:91",
    ]
    # Only traffic to the node's own addresses; loopback is the proxy's.
    assert "fib daddr type local jump ports" in script
    assert "ip daddr != 127.0.0.0/8 fib daddr type local jump ports" in script
    assert script == mesh.node_ruleset("t", [(TCP, 80), (UDP, 53), (SCTP, 99)], SBX,
                                       dict(reversed(host.items())))  # deterministic
    assert "shl*" not in script
    # Tasks with host links: only replies come in through them.
    guarded = mesh.node_ruleset("t", [], None, {}, host_links=True)
    assert [line.strip() for line in guarded.splitlines() if "shl*" in line] == [
        'iifname "shl*" ct state established,related accept', 'iifname "shl*" drop'] * 2
    assert "type filter hook input" in guarded
    assert "type filter hook forward" in guarded


def test_the_sandbox_balances_over_ready_tasks_and_masquerades_on_the_overlay() -> None:
    ports = {(TCP, 80): mesh.IngressTarget(8080, (IPv4Address("10.0.0.5"),
                                                  IPv4Address("10.0.0.3"))),
             (UDP, 53): mesh.IngressTarget(53, (IPv4Address("10.0.0.7"),)),
             (TCP, 81): mesh.IngressTarget(8081, ())}  # none ready: the sandbox refuses
    script = mesh.sandbox_ruleset(ports, 5.0)
    rules = [line.strip() for line in script.splitlines() if "dport" in line]
    assert rules == [
        "iifname mesh0 tcp dport 80 dnat to numgen random mod 2 map "
        "{ 0 : 10.0.0.3, 1 : 10.0.0.5 }:8080",
        "iifname mesh0 udp dport 53 dnat to 10.0.0.7:53",
    ]
    assert "oifname eth0 masquerade" in script
    assert "tcp option maxseg size set rt mtu" in script
    assert mesh.sandbox_ruleset({}, 5.0).count("dnat") == 0
    assert "@live" not in script  # no backend here and elsewhere: no guard
    assert not mesh.guarded(ports)


def test_while_the_node_is_not_known_live_the_sandbox_keeps_its_own_backends() -> None:
    """A port with backends here and elsewhere: all of them while the set
    `live` has its element (renewed on each heartbeat), then only this
    node's; all here or all elsewhere: one rule, no guard."""
    here, there = IPv4Address("10.0.0.3"), IPv4Address("10.0.0.9")
    ports = {(TCP, 80): mesh.IngressTarget(8080, (here, there), (here,)),
             (TCP, 81): mesh.IngressTarget(8081, (here,), (here,)),
             (UDP, 82): mesh.IngressTarget(8082, (there,), ())}
    script = mesh.sandbox_ruleset(ports, 5.0)
    rules = [line.strip() for line in script.splitlines() if "dport" in line]
    assert rules == [
        "iifname mesh0 tcp dport 80 meta l4proto @live dnat to numgen random mod 2 map "
        "{ 0 : 10.0.0.3, 1 : 10.0.0.9 }:8080",
        "iifname mesh0 tcp dport 80 dnat to 10.0.0.3:8080",
        "iifname mesh0 tcp dport 81 dnat to 10.0.0.3:8081",
        "iifname mesh0 udp dport 82 dnat to 10.0.0.9:8082",
    ]
    assert "elements = { tcp timeout 5000ms, udp timeout 5000ms }" in script
    assert mesh.guarded(ports)
    assert mesh.renew_live(2.5) == (
        "flush set ip swarm-mesh live\n"
        "add element ip swarm-mesh live { tcp timeout 2500ms, udp timeout 2500ms }\n")


@given(st.text(min_size=1, max_size=80), st.integers(0, 5))
def test_links_get_a_30_of_their_pool_named_within_ifnamsiz(key: str, probe: int) -> None:
    for pool in (mesh.MESH_POOL, mesh.HOST_LINK_POOL):
        host, inner = mesh.link_pair(key, pool, probe)
        assert host.network == inner.network
        assert host.network.prefixlen == 30
        assert host.network.subnet_of(pool)
        assert (int(host.ip) & 3, int(inner.ip) & 3) == (1, 2)
        assert mesh.link_pair(key, pool, probe) == (host, inner)
    assert mesh.link_pair(key, mesh.MESH_POOL, 0) != mesh.link_pair(key, mesh.MESH_POOL, 1)
    for prefix in (mesh.MESH_PREFIX, mesh.HOST_PREFIX):
        assert len(mesh.link_name(key, prefix)) <= 15
    assert re.fullmatch(r"swarm-mesh-[0-9a-f]{8}", mesh.node_table(key))


def test_the_pools_stay_clear_of_the_metadata_address() -> None:
    metadata = IPv4Network("169.254.169.254/32")
    assert not metadata.subnet_of(mesh.MESH_POOL)
    assert mesh.MESH_POOL.overlaps(mesh.HOST_LINK_POOL) is False


def test_proxy_v2_header_is_haproxys_format() -> None:
    header = proxy_v2_header(("192.0.2.7", 51000), ("198.51.100.1", 80))
    assert header[:12] == PROXY_V2_SIGNATURE == b"\r\n\r\n\x00\r\nQUIT\n"
    assert header[12:16] == b"\x21\x11\x00\x0c"  # v2 PROXY, TCP over IPv4, 12 bytes
    assert header[16:] == (socket.inet_aton("192.0.2.7") + socket.inet_aton("198.51.100.1")
                           + struct.pack("!HH", 51000, 80))


ADDRESSES = st.tuples(st.ip_addresses(v=4).map(str), st.integers(0, 65535))


@given(ADDRESSES, ADDRESSES, st.binary(max_size=20))
def test_proxy_v2_round_trip(client: tuple[str, int], local: tuple[str, int],
                             rest: bytes) -> None:
    header = proxy_v2_header(client, local)
    assert parse_proxy_v2(header + rest) == (client, local, len(header))


def test_what_is_not_a_proxy_v2_header() -> None:
    for data in (b"GET / HTTP/1.1\r\n", PROXY_V2_SIGNATURE + b"\x21\x11\x00",
                 PROXY_V2_SIGNATURE + b"\x20\x11\x00\x0c" + b"\0" * 12,
                 PROXY_V2_SIGNATURE + b"\x21\x21\x00\x24" + b"\0" * 36):
        with pytest.raises(ValueError, match="PROXY protocol v2 header"):
            parse_proxy_v2(data)
