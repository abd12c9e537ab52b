"""Inode flags of directories (what `chattr` sets), through the
FS_IOC_GETFLAGS / FS_IOC_SETFLAGS ioctls.

Why the agent needs one: ext4 keeps a freed inode out of reuse for a while
(about a minute; five if its inode-table block is not written back yet) when
it runs without a journal, as the root filesystems of some VMs do (this
machine's: /proc/fs/jbd2 is empty). Each new file or directory then scans its
block group's free inodes past every recently freed one, looking each one's
inode-table block up (find_inode_bit -> recently_deleted), and ext4 puts new
files and subdirectories in their parent's group. So a directory where
containers' bundles come and go, tens of inodes each, makes every later
creation in it slower, burst after burst: in a burst of 50 container starts
measured here, __ext4_new_inode took 17 % of all the CPU the starts caused
(agent, conmon, runc), most of it in that scan.

The TOPDIR flag (`chattr +T`) makes ext4's Orlov allocator treat the
directory's subdirectories as tops of hierarchies and spread them over the
groups, so each bundle (and each runc state directory) lands in a group of
its own with its files, and a scan meets only its own few recently freed
inodes. Filesystems without the flag (tmpfs, overlayfs, ...) refuse it;
nothing is lost there.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os

# <linux/fs.h>: _IOR('f', 1, long) and _IOW('f', 2, long) on 64-bit Linux;
# the kernel reads and writes an int through them all the same.
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_TOPDIR_FL = 0x00020000

# What a filesystem without these flags (or without this one) answers.
_UNSUPPORTED = (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)


def get_flags(path: str | os.PathLike[str]) -> int | None:
    """The directory's inode flags (None: the filesystem has none)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        flags = array.array("i", [0])
        try:
            fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
        except OSError as error:
            if error.errno in _UNSUPPORTED:
                return None
            raise
        return flags[0]
    finally:
        os.close(fd)


def spread_subdirectories(path: str | os.PathLike[str]) -> bool:
    """Set the TOPDIR flag on a directory (see module doc); False where the
    filesystem has no such flag. Needs the directory's owner or CAP_FOWNER."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        flags = array.array("i", [0])
        try:
            fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
            if flags[0] & FS_TOPDIR_FL:
                return True
            flags[0] |= FS_TOPDIR_FL
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, flags, True)
        except OSError as error:
            if error.errno in _UNSUPPORTED:
                return False
            raise
        return True
    finally:
        os.close(fd)
