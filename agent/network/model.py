"""Pure value types of the overlay data plane: what a network, a local
endpoint and a remote peer are, and the names and MACs derived from them.

Nothing here touches the kernel, so all of it is unit-tested without root.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from swarm.api.v1 import objects_pb2 as pb

VXLAN_PORT = 4789  # IANA's VXLAN port; Docker, flannel and the kernel docs use it
# Outer Ethernet (14) + IPv4 (20) + UDP (8) + VXLAN (8): what each frame costs
# on the underlay, so the overlay MTU is the underlay's minus this.
VXLAN_OVERHEAD = 50
VNI_MAX = (1 << 24) - 1

# A network ID becomes part of a file name under /run/netns: keep it to
# characters that cannot escape that directory or confuse a shell reader.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")  # IFNAMSIZ - 1


def is_network_id(text: str) -> bool:
    """Whether a name could be a network ID (anything else under the overlay
    prefix is another kind of namespace, e.g. the ingress sandbox)."""
    return bool(_ID_RE.match(text))


def mac_from_ip(ip: IPv4Address | str) -> str:
    """The MAC Docker gives an IPv4 endpoint: 02:42 (locally administered,
    unicast) followed by the four address bytes. Deterministic, so every host
    computes a remote task's MAC from its address alone and the controller
    need not allocate MACs."""
    packed = IPv4Address(ip).packed
    return "02:42:" + ":".join(f"{b:02x}" for b in packed)


def normalize_mac(mac: str) -> str:
    value = mac.strip().lower().replace("-", ":")
    if not _MAC_RE.match(value):
        raise ValueError(f"not a MAC address: {mac!r}")
    if int(value[:2], 16) & 1:
        raise ValueError(f"{mac} is a multicast MAC; an endpoint needs a unicast one")
    return value


def check_ifname(name: str) -> str:
    if not _IFNAME_RE.match(name):
        raise ValueError(f"bad interface name {name!r} (1-15 of [A-Za-z0-9_.-])")
    return name


def veth_name(task_netns: str, ifname: str) -> str:
    """The overlay-side name of a task's veth: derived from the task's
    namespace and the interface name in it, so attach and detach find it again
    with no state of our own (an agent restart loses nothing), and 15
    characters at most (the kernel's limit)."""
    digest = hashlib.blake2b(f"{task_netns}\0{ifname}".encode(), digest_size=6).hexdigest()
    return "ve-" + digest


@dataclass(frozen=True)
class OverlayNetwork:
    """What a host needs to know of an overlay network: the controller's
    allocation (agent-side mirror of pb.Network)."""

    network_id: str
    vni: int
    subnet: IPv4Network
    gateway: IPv4Address

    def __post_init__(self) -> None:
        if not _ID_RE.match(self.network_id):
            raise ValueError(f"bad network id {self.network_id!r}")
        if not 1 <= self.vni <= VNI_MAX:
            raise ValueError(f"VNI {self.vni} outside 1..{VNI_MAX}")
        if self.subnet.prefixlen > 30:
            raise ValueError(f"subnet {self.subnet} is too small for a gateway and endpoints")
        if self.gateway not in self.subnet or self.gateway in (
                self.subnet.network_address, self.subnet.broadcast_address):
            raise ValueError(f"gateway {self.gateway} is not a host address of {self.subnet}")

    @classmethod
    def create(cls, network_id: str, vni: int, subnet: str, gateway: str) -> OverlayNetwork:
        return cls(network_id, vni, IPv4Network(subnet), IPv4Address(gateway))

    @classmethod
    def from_proto(cls, network: pb.Network) -> OverlayNetwork:
        return cls.create(network.id, network.vni, network.subnet, network.gateway)

    @property
    def gateway_interface(self) -> IPv4Interface:
        return IPv4Interface(f"{self.gateway}/{self.subnet.prefixlen}")

    def check_endpoint(self, address: IPv4Interface) -> None:
        """An endpoint's address must be a host address of the subnet, with
        the subnet's prefix, and not the gateway."""
        if address.network != self.subnet:
            raise ValueError(f"{address} is not in network {self.network_id}'s subnet {self.subnet}")
        if address.ip in (self.gateway, self.subnet.network_address, self.subnet.broadcast_address):
            raise ValueError(f"{address.ip} is reserved in {self.subnet}")


@dataclass(frozen=True)
class Peer:
    """A remote endpoint on a network: its overlay address and MAC, and the
    underlay address (VTEP) of the host it runs on."""

    ip: IPv4Address
    vtep: IPv4Address
    mac: str = field(default="")

    def __post_init__(self) -> None:
        # frozen: set the normalized or derived MAC through object.__setattr__
        object.__setattr__(self, "mac", normalize_mac(self.mac) if self.mac else mac_from_ip(self.ip))

    @classmethod
    def create(cls, ip: str, vtep: str, mac: str = "") -> Peer:
        return cls(IPv4Address(ip), IPv4Address(vtep), mac)

