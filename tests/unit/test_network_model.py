"""The overlay's pure value types: no kernel, no root."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface

import pytest

from swarm.agent.network import OverlayNetwork, OverlaySettings, Peer, mac_from_ip, veth_name
from swarm.agent.network.model import check_ifname, normalize_mac
from swarm.api.v1 import objects_pb2 as pb


def test_mac_from_ip_is_dockers() -> None:
    assert mac_from_ip("10.0.0.2") == "02:42:0a:00:00:02"
    assert mac_from_ip(IPv4Address("192.168.255.254")) == "02:42:c0:a8:ff:fe"


def test_normalize_mac() -> None:
    assert normalize_mac("02-42-0A-00-00-02") == "02:42:0a:00:00:02"
    with pytest.raises(ValueError, match="not a MAC"):
        normalize_mac("02:42:0a:00:00")
    with pytest.raises(ValueError, match="multicast"):
        normalize_mac("01:00:5e:00:00:01")


def test_veth_name_is_deterministic_short_and_distinct() -> None:
    name = veth_name("/run/netns/swarm-abc", "eth0")
    assert name == veth_name("/run/netns/swarm-abc", "eth0")
    assert len(name) <= 15
    assert name != veth_name("/run/netns/swarm-abc", "eth1")
    assert name != veth_name("/run/netns/swarm-abd", "eth0")
    check_ifname(name)


def test_network_from_proto() -> None:
    net = OverlayNetwork.from_proto(pb.Network(id="n1", vni=4096, subnet="10.0.1.0/24",
                                               gateway="10.0.1.1"))
    assert net == OverlayNetwork.create("n1", 4096, "10.0.1.0/24", "10.0.1.1")
    assert str(net.gateway_interface) == "10.0.1.1/24"


@pytest.mark.parametrize(("args", "message"), [
    (("../x", 4096, "10.0.1.0/24", "10.0.1.1"), "bad network id"),
    (("", 4096, "10.0.1.0/24", "10.0.1.1"), "bad network id"),
    (("n", 0, "10.0.1.0/24", "10.0.1.1"), "VNI"),
    (("n", 1 << 24, "10.0.1.0/24", "10.0.1.1"), "VNI"),
    (("n", 4096, "10.0.1.0/31", "10.0.1.1"), "too small"),
    (("n", 4096, "10.0.1.0/24", "10.0.2.1"), "not a host address"),
    (("n", 4096, "10.0.1.0/24", "10.0.1.255"), "not a host address"),
])
def test_network_validation(args: tuple[str, int, str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OverlayNetwork.create(*args)


def test_endpoint_checks() -> None:
    net = OverlayNetwork.create("n", 4096, "10.0.1.0/24", "10.0.1.1")
    net.check_endpoint(IPv4Interface("10.0.1.5/24"))
    with pytest.raises(ValueError, match="not in network"):
        net.check_endpoint(IPv4Interface("10.0.1.5/16"))
    for reserved in ("10.0.1.1/24", "10.0.1.0/24", "10.0.1.255/24"):
        with pytest.raises(ValueError, match="reserved"):
            net.check_endpoint(IPv4Interface(reserved))


def test_peer_mac_defaults_to_the_derived_one() -> None:
    assert Peer.create("10.0.1.5", "192.168.77.12").mac == "02:42:0a:00:01:05"
    assert Peer.create("10.0.1.5", "192.168.77.12", "AA:BB:CC:00:11:22").mac == "aa:bb:cc:00:11:22"
    assert Peer.create("10.0.1.5", "192.168.77.12") == Peer.create("10.0.1.5", "192.168.77.12")


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="netns_prefix"):
        OverlaySettings(IPv4Address("192.168.77.11"), netns_prefix="a/b")
    with pytest.raises(ValueError, match="vxlan_port"):
        OverlaySettings(IPv4Address("192.168.77.11"), vxlan_port=0)
