"""Named network namespaces (/run/netns/NAME bind mounts, as `ip netns add`
makes them), with loopback up inside.

Nothing here forks. pyroute2's netns.create() and IPRoute(netns=...) fork a
helper process, and a fork of the agent -- a process with gRPC's threads --
crashed the child with SIGSEGV (seen here: "child process is dead, status:
-11" from every container prepare inside `swarm-agent`, never in a plain test
process). Instead a short-lived thread of our own unshares its network
namespace (namespaces are per thread), bind-mounts it to /run/netns/NAME,
sets lo up with an ioctl on a socket made inside it, and ends. Code that must
work inside an existing namespace (netlink through pyroute2's IPRoute() with
no netns argument, say) runs the same way: `run_in_netns_blocking`.

The async functions run in a worker thread; the `*_blocking` ones are for
code that already runs in one. `ip netns exec` is never used (it breaks
runc, see DESIGN.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .libc import check, libc

T = TypeVar("T")

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


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def _share_netns_dir() -> None:
    """Make /run/netns a shared mount (as iproute2 does), so that the
    namespace mounts below it propagate to mount namespaces made later."""
    NETNS_DIR.mkdir(parents=True, exist_ok=True)
    lib = libc()
    target = str(NETNS_DIR).encode()
    if lib.mount(b"none", target, b"none", ctypes.c_ulong(_MS_SHARED | _MS_REC), None) == 0:
        return
    # Not a mount point yet: bind it onto itself first.
    check(lib.mount(target, target, b"none", ctypes.c_ulong(_MS_BIND | _MS_REC), None),
           f"bind {NETNS_DIR}")
    check(lib.mount(b"none", target, b"none", ctypes.c_ulong(_MS_SHARED | _MS_REC), None),
           f"make {NETNS_DIR} shared")


def _loopback_up() -> None:
    """lo up in the calling thread's network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack(_IFREQ, b"lo", 0)
        flags = struct.unpack(_IFREQ, fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))


def _in_own_thread(name: str, function: Callable[[], T]) -> T:
    """function() in a new thread, which ends with it: a thread whose network
    namespace was changed never runs anything else."""
    results: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            results.append(function())
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]


def _thread_netns() -> str:
    return f"/proc/self/task/{threading.get_native_id()}/ns/net"


def _enter_and_run(target: int, function: Callable[[], T]) -> T:
    lib = libc()
    original = os.open(_thread_netns(), os.O_RDONLY | os.O_CLOEXEC)
    try:
        check(lib.setns(target, _CLONE_NEWNET), "setns")
        try:
            return function()
        finally:
            check(lib.setns(original, _CLONE_NEWNET), "setns back")
    finally:
        os.close(original)


def run_in_netns_blocking(namespace: str, function: Callable[[], T]) -> T:
    """function() run by a thread inside the namespace (a name under
    /run/netns, or a path), without a fork.

    Do ALL of a pyroute2 session inside function: IPRoute opens its netlink
    socket lazily and per thread, so an IPRoute made here and used outside
    talks to the caller's namespace (seen with pyroute2 0.9)."""
    path = namespace if namespace.startswith("/") else str(netns_path(namespace))

    def enter() -> T:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return _enter_and_run(fd, function)
        finally:
            os.close(fd)

    return _in_own_thread(f"in-netns-{os.path.basename(path)}", enter)


def netlink_socket_in(namespace: str) -> socket.socket:
    """A NETLINK_ROUTE socket inside a namespace (name or path), made without a
    fork: a socket belongs to the namespace it was created in, whichever thread
    uses it later. Hand it to pyroute2 as IPRoute(use_socket=...) and use that
    IPRoute from one thread (pyroute2 checks); closing the IPRoute closes it.
    SOCK_DGRAM, not RAW: pyroute2 builds an asyncio datagram endpoint on it."""
    return run_in_netns_blocking(namespace, lambda: socket.socket(
        socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE))


def socket_in(namespace: str | os.PathLike[str], family: int = socket.AF_INET,
              kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket created inside a network namespace (name or path), usable
    from any thread of this process: a socket stays in the namespace it was
    made in (a listener there, an upstream connection from there). Blocking."""
    text = os.fspath(namespace)
    path = text if "/" in text else str(netns_path(text))
    return run_in_netns_blocking(path, lambda: socket.socket(family, kind))


def _unshare_into(path: Path, on_stuck: Callable[[OSError], None] | None = None) -> None:
    """A new namespace, bound to path, lo up; the thread back in its own
    namespace after (on_stuck: called if it cannot get back)."""
    lib = libc()
    original = os.open(_thread_netns(), os.O_RDONLY | os.O_CLOEXEC)
    try:
        check(lib.unshare(_CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        try:
            check(lib.mount(_thread_netns().encode(), str(path).encode(), b"none",
                              ctypes.c_ulong(_MS_BIND), None),
                   f"bind network namespace to {path}")
            _loopback_up()
        finally:
            try:
                check(lib.setns(original, _CLONE_NEWNET), "setns back")
            except OSError as error:
                if on_stuck is None:
                    raise
                on_stuck(error)
    finally:
        os.close(original)


def _new(name: str) -> None:
    path = netns_path(name)
    _share_netns_dir()
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    try:
        _in_own_thread(f"netns-{name}", lambda: _unshare_into(path))
    except BaseException:
        remove_netns_blocking(name)
        raise


def ensure_netns_blocking(name: str) -> bool:
    """Create the namespace unless it exists; True when this call created it
    (so a caller that fails later knows whether to remove it)."""
    if netns_path(name).exists():
        return False
    _new(name)
    return True


def _create(name: str) -> None:
    remove_netns_blocking(name)  # a leftover of an interrupted prepare
    _new(name)


def remove_netns_blocking(name: str) -> None:
    """Remove the namespace's name; the kernel destroys it (and the devices
    in it) once no process or open handle keeps it alive."""
    path = netns_path(name)
    if libc().umount2(str(path).encode(), _MNT_DETACH) != 0:
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOENT):  # not mounted, or no such path
            raise OSError(code, f"umount {path}: {os.strerror(code)}")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


async def create_netns(name: str) -> Path:
    """A fresh namespace: a leftover of the same name is replaced."""
    await asyncio.to_thread(_create, name)
    return netns_path(name)


class NetnsMaker:
    """Makes namespaces in the CALLING thread (an asyncio loop's), for a
    caller that makes many in a burst: about 1 ms of syscalls each (unshare,
    a bind mount, lo up, setns back), where create_netns hands each to a
    worker thread that starts a thread of its own. On a busy 2-core host
    those hand-offs (each waits for the GIL, up to its 5 ms switch interval,
    and for a free worker of the loop's default executor) made the step
    take 340-550 ms (median) of a 50-container burst.

    The thread is back in its own namespace before make() returns, and never
    yields in between (no await), so nothing else runs in the new one. If the
    way back fails (it cannot, short of a kernel bug: the handle is open and
    the process has CAP_SYS_ADMIN), this thread's sockets would open in a
    container's namespace: the process exits at once instead."""

    def __init__(self) -> None:
        self._dir_shared = False

    def make(self, name: str) -> Path:
        """A fresh namespace named `name` with lo up (a leftover replaced)."""
        if not self._dir_shared:  # once: a recursive mount flag change is not free
            _share_netns_dir()
            self._dir_shared = True
        remove_netns_blocking(name)  # a leftover of an interrupted prepare
        path = netns_path(name)
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
        try:
            _unshare_into(path, on_stuck=_stuck_in_netns)
        except BaseException:
            remove_netns_blocking(name)
            raise
        return path


def _stuck_in_netns(error: OSError) -> None:
    os.write(2, f"FATAL: cannot return to this thread's network namespace ({error}); "
                "exiting\n".encode())
    os._exit(70)


async def remove_netns(name: str) -> None:
    await asyncio.to_thread(remove_netns_blocking, name)


# br_netfilter (built into some kernels, this one's included) sends every
# frame a bridge forwards through the iptables/ip6tables/arptables hooks of the
# bridge's namespace. A namespace whose bridge has no rules (the overlays', a
# simulated underlay's switch) pays for nothing: a few per cent of the
# throughput (bench.overlay unshaped, interleaved runs: 13.6-14.1 Gbit/s with
# the hooks, 14.2-14.3 without). The switches are per namespace; a kernel
# without br_netfilter has no files and nothing to do.
_BRIDGE_NETFILTER = tuple(f"/proc/sys/net/bridge/bridge-nf-call-{table}"
                          for table in ("iptables", "ip6tables", "arptables"))


def bridge_without_netfilter_blocking(namespace: str) -> None:
    """Bridges in the namespace (a name or path) skip br_netfilter."""
    def switch_off() -> None:
        for path in _BRIDGE_NETFILTER:
            with contextlib.suppress(FileNotFoundError), open(path, "w") as switch:
                switch.write("0")

    run_in_netns_blocking(namespace, switch_off)
