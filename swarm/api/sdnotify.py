"""systemd's notify protocol (Type=notify, WatchdogSec=) without a dependency:
a datagram to the socket in $NOTIFY_SOCKET ("@" for the abstract namespace).

READY=1 once the daemon serves, STOPPING=1 when it shuts down, and WATCHDOG=1
every half of $WATCHDOG_USEC from the daemon's event loop, so that a loop
that hangs (not only a process that dies) gets the unit restarted. Without
$NOTIFY_SOCKET (not under systemd, or Type=simple) every call does nothing.
"""

from __future__ import annotations

import asyncio
import os
import socket


def notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """Send one notification; whether it was sent."""
    env = os.environ if environ is None else environ
    path = env.get("NOTIFY_SOCKET", "")
    if not path or path[0] not in "/@":
        return False
    address = "\0" + path[1:] if path[0] == "@" else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError:
            return False
    return True


def watchdog_interval(environ: dict[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half the timeout), or None without a watchdog
    meant for this process."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


async def watchdog() -> None:
    """Ping systemd's watchdog forever (returns at once without one)."""
    interval = watchdog_interval()
    if interval is None:
        return
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
