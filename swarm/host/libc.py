"""The C library, for the few system calls Python's os module lacks (mount,
umount2, setns, unshare), and their error check: shared by the runtime's
rootfs and network-namespace code."""

from __future__ import annotations

import ctypes
import functools
import os


@functools.cache
def libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def check(result: int, what: str) -> None:
    """OSError with errno and `what` when a libc call returned non-zero."""
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
