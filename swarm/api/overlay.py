"""Overlay conventions shared by the controller and the agent."""

from __future__ import annotations

import ipaddress


def mac_for_ip(address: str) -> str:
    """The MAC of an overlay endpoint, derived from its IPv4 address as docker
    does (02:42 then the four address bytes): locally administered, unicast,
    and computable by every host without asking anyone. Accepts CIDR form.
    agent.network.model.mac_from_ip is the same rule (a test keeps them equal)."""
    ip = ipaddress.IPv4Interface(address).ip
    return "02:42:" + ":".join(f"{byte:02x}" for byte in ip.packed)
