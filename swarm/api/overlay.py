"""Overlay conventions shared by the controller and the agent."""

from __future__ import annotations

import functools
import ipaddress


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
