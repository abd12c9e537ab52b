"""Named network namespaces (/run/netns/NAME bind mounts, as `ip netns add`
makes them) through pyroute2, with loopback up inside.

pyroute2's synchronous API runs its own event loop, so the async functions run
it in a worker thread; the `*_blocking` ones are for code that already runs in
one (agent.network does). `ip netns exec` is never used (it breaks runc, see
DESIGN.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from pyroute2 import IPRoute, netns

NETNS_DIR = Path("/run/netns")


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def _new(name: str) -> None:
    netns.create(name)
    try:
        # flags=0: never let pyroute2 create a namespace as a side effect
        with IPRoute(netns=name, flags=0) as ipr:
            (index,) = ipr.link_lookup(ifname="lo")
            ipr.link("set", index=index, state="up")
    except BaseException:
        netns.remove(name)
        raise


def ensure_netns_blocking(name: str) -> bool:
    """Create the namespace unless it exists; True when this call created it
    (so a caller that fails later knows whether to remove it)."""
    if netns_path(name).exists():
        return False
    _new(name)
    return True


def remove_netns_blocking(name: str) -> None:
    """Remove the namespace's name; the kernel destroys it (and the devices
    in it) once no process or open handle keeps it alive."""
    if netns_path(name).exists():
        with contextlib.suppress(FileNotFoundError):
            netns.remove(name)


def _create(name: str) -> None:
    remove_netns_blocking(name)  # a leftover of an interrupted prepare
    _new(name)


async def create_netns(name: str) -> Path:
    """A fresh namespace: a leftover of the same name is replaced."""
    await asyncio.to_thread(_create, name)
    return netns_path(name)


async def remove_netns(name: str) -> None:
    await asyncio.to_thread(remove_netns_blocking, name)
