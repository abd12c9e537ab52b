"""Named network namespaces (/run/netns/NAME bind mounts, as `ip netns add`
makes them) through pyroute2, with loopback up inside.

pyroute2's synchronous API runs its own event loop, so these run in a worker
thread; `ip netns exec` is never used (it breaks runc, see DESIGN.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from pyroute2 import IPRoute, netns

NETNS_DIR = Path("/run/netns")


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def _create(name: str) -> None:
    if netns_path(name).exists():  # a leftover of an interrupted prepare
        netns.remove(name)
    netns.create(name)
    try:
        with IPRoute(netns=name) as ipr:
            (index,) = ipr.link_lookup(ifname="lo")
            ipr.link("set", index=index, state="up")
    except BaseException:
        netns.remove(name)
        raise


def _remove(name: str) -> None:
    if netns_path(name).exists():
        with contextlib.suppress(FileNotFoundError):
            netns.remove(name)


async def create_netns(name: str) -> Path:
    await asyncio.to_thread(_create, name)
    return netns_path(name)


async def remove_netns(name: str) -> None:
    await asyncio.to_thread(_remove, name)
