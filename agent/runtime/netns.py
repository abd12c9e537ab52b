"""Named network namespaces (/run/netns/NAME bind mounts, as `ip netns add`
makes them), with loopback up inside.

Nothing here forks. pyroute2's netns.create() and IPRoute(netns=...) fork a
helper process, and a fork of the agent -- a process with gRPC's threads --
crashed the child with SIGSEGV (seen here: "child process is dead, status:
-11" from every container prepare inside `swarm-agent`, never in a plain test
process). Instead a short-lived thread of our own unshares its network
namespace (namespaces are per thread), bind-mounts it to /run/netns/NAME,
sets lo up with an ioctl on a socket made inside it, and ends. `ip netns
exec` is never used (it breaks runc, see DESIGN.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import socket
import struct
import threading
from pathlib import Path

NETNS_DIR = Path("/run/netns")

_CLONE_NEWNET = 0x40000000
_MS_BIND = 4096
_MS_REC = 16384
_MS_SHARED = 1 << 20
_MNT_DETACH = 2
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = "16sH14x"  # struct ifreq: name, then ifr_flags (short) in the union


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def _share_netns_dir() -> None:
    """Make /run/netns a shared mount (as iproute2 does), so that the
    namespace mounts below it propagate to mount namespaces made later."""
    NETNS_DIR.mkdir(parents=True, exist_ok=True)
    libc = _libc()
    target = str(NETNS_DIR).encode()
    if libc.mount(b"none", target, b"none", ctypes.c_ulong(_MS_SHARED | _MS_REC), None) == 0:
        return
    # Not a mount point yet: bind it onto itself first.
    _check(libc.mount(target, target, b"none", ctypes.c_ulong(_MS_BIND | _MS_REC), None),
           f"bind {NETNS_DIR}")
    _check(libc.mount(b"none", target, b"none", ctypes.c_ulong(_MS_SHARED | _MS_REC), None),
           f"make {NETNS_DIR} shared")


def _loopback_up() -> None:
    """lo up in the calling thread's network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack(_IFREQ, b"lo", 0)
        flags = struct.unpack(_IFREQ, fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))


def _in_new_netns(path: Path) -> None:
    """Run in a thread of its own: unshare, bind to path, lo up, go back."""
    libc = _libc()
    tid = threading.get_native_id()
    original = os.open(f"/proc/self/task/{tid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(libc.unshare(_CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        try:
            _check(libc.mount(f"/proc/self/task/{tid}/ns/net".encode(), str(path).encode(),
                              b"none", ctypes.c_ulong(_MS_BIND), None),
                   f"bind network namespace to {path}")
            _loopback_up()
        finally:
            # The thread ends right after; going back keeps it harmless anyway.
            _check(libc.setns(original, _CLONE_NEWNET), "setns back")
    finally:
        os.close(original)


def _create(name: str) -> None:
    path = netns_path(name)
    if path.exists():  # a leftover of an interrupted prepare
        _remove(name)
    _share_netns_dir()
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    errors: list[BaseException] = []

    def target() -> None:
        try:
            _in_new_netns(path)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=target, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join()
    if errors:
        _remove(name)
        raise errors[0]


def _remove(name: str) -> None:
    path = netns_path(name)
    result = _libc().umount2(str(path).encode(), _MNT_DETACH)
    if result != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        code = ctypes.get_errno()
        raise OSError(code, f"umount {path}: {os.strerror(code)}")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


async def create_netns(name: str) -> Path:
    await asyncio.to_thread(_create, name)
    return netns_path(name)


async def remove_netns(name: str) -> None:
    await asyncio.to_thread(_remove, name)
