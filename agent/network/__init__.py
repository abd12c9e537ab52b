"""The agent's networking: the overlay data plane (a bridge and a VXLAN
device per overlay network, in a namespace of their own, and a veth pair per
task), driven through pyroute2. See overlay.py for the isolation design."""

from .model import VXLAN_OVERHEAD, VXLAN_PORT, OverlayNetwork, Peer, mac_from_ip, veth_name
from .overlay import OverlayError, OverlayManager, OverlaySettings

__all__ = [
    "VXLAN_OVERHEAD",
    "VXLAN_PORT",
    "OverlayError",
    "OverlayManager",
    "OverlayNetwork",
    "OverlaySettings",
    "Peer",
    "mac_from_ip",
    "veth_name",
]
