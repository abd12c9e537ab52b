"""Named network namespaces made without a fork (pyroute2's forking helpers
crashed inside the gRPC agent), and code run inside them by a thread."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import uuid
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute

from swarm.host import netns
from swarm.host.mounts import mount_points

pytestmark = pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"),
                                reason="network namespaces need root (CI runs it as root)")


@pytest.fixture
def name() -> Iterator[str]:
    value = f"swnt-{uuid.uuid4().hex[:10]}"
    try:
        yield value
    finally:
        netns.remove_netns_blocking(value)


def _loopback_flags() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        reply = fcntl.ioctl(sock, 0x8913, struct.pack("16sH14x", b"lo", 0))  # SIOCGIFFLAGS
        return int(struct.unpack("16sH14x", reply)[1])


def _links() -> list[str]:
    with IPRoute() as ipr:
        return sorted(str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links())


async def test_create_enter_and_remove(name: str) -> None:
    path = await netns.create_netns(name)
    assert path == netns.NETNS_DIR / name
    ours = os.stat("/proc/self/ns/net").st_ino
    assert os.stat(path).st_ino != ours
    inside = netns.run_in_netns_blocking(name, lambda: os.stat("/proc/thread-self/ns/net").st_ino)
    assert inside == os.stat(path).st_ino
    assert netns.run_in_netns_blocking(name, _loopback_flags) & 1  # IFF_UP
    # pyroute2 without its netns= argument (which forks) works inside, on lo only.
    assert netns.run_in_netns_blocking(name, _links) == ["lo"]
    assert netns.run_in_netns_blocking(str(path), _links) == ["lo"]  # by path too
    assert os.stat("/proc/thread-self/ns/net").st_ino == ours  # this thread never moved

    await netns.create_netns(name)  # a leftover is replaced by a fresh namespace
    assert os.stat(path).st_ino != inside
    await netns.remove_netns(name)
    assert not path.exists()
    await netns.remove_netns(name)  # idempotent


def test_ensure_creates_once(name: str) -> None:
    assert netns.ensure_netns_blocking(name) is True
    assert netns.ensure_netns_blocking(name) is False
    netns.remove_netns_blocking(name)
    assert not netns.netns_path(name).exists()


def test_errors_inside_come_out(name: str) -> None:
    netns.ensure_netns_blocking(name)

    def fail() -> None:
        raise ValueError("inside")

    with pytest.raises(ValueError, match="inside"):
        netns.run_in_netns_blocking(name, fail)
    with pytest.raises(FileNotFoundError):
        netns.run_in_netns_blocking(name + "-missing", lambda: None)


def test_netns_maker_makes_them_in_the_calling_thread_and_returns(name: str) -> None:
    """NetnsMaker (the runtime's, in the asyncio loop's thread): a fresh
    namespace with lo up, and the calling thread back where it was."""
    maker = netns.NetnsMaker()
    ours = os.stat("/proc/thread-self/ns/net").st_ino
    path = maker.make(name)
    assert path == netns.NETNS_DIR / name
    assert os.stat("/proc/thread-self/ns/net").st_ino == ours
    first = os.stat(path).st_ino
    assert first != ours
    assert netns.run_in_netns_blocking(name, _loopback_flags) & 1  # IFF_UP
    assert netns.run_in_netns_blocking(name, _links) == ["lo"]
    assert maker.make(name) == path  # a leftover of the same name: replaced
    assert os.stat(path).st_ino != first
    assert os.stat("/proc/thread-self/ns/net").st_ino == ours
    netns.remove_netns_blocking(name)
    assert not path.exists()
    assert not any(point == str(path) for point in mount_points())
