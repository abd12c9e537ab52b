"""Overlay conventions shared by the controller and the agent."""

from __future__ import annotations

import ipaddress

VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50  # bytes of VXLAN, UDP, IP and inner Ethernet headers


def mac_for_ip(address: str) -> str:
    """The MAC of an overlay endpoint, derived from its IPv4 address as docker
    does (02:42 then the four address bytes): locally administered, unicast,
    and computable by every host without asking anyone. Accepts CIDR form."""
    ip = ipaddress.IPv4Interface(address).ip
    return "02:42:" + ":".join(f"{byte:02x}" for byte in ip.packed)
