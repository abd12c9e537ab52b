"""The agent's AppArmor profile for containers, where the node has AppArmor.

At start the agent loads `swarm-default` (a profile in the spirit of
Docker's `docker-default`: files, network and the container's capabilities
allowed; mount, writes under /proc and /sys outside the container's own
cgroup, /proc/kcore, /proc/sysrq-trigger, the firmware and LSM interfaces
denied; signals and ptrace only among the containers' own processes) with
`apparmor_parser -Kr`, and every container gets it unless its service says
`--security-opt apparmor=unconfined`. Where the kernel has no AppArmor (this
project's test machines run lockdown, capability, landlock and bpf only) or
apparmor_parser is missing, containers run without one and the agent logs
the reason once.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

PROFILE_NAME = "swarm-default"
SECURITYFS = Path("/sys/kernel/security")
_LOAD_TIMEOUT = 30.0


def profile_text(name: str = PROFILE_NAME) -> str:
    """The profile's source, for apparmor_parser."""
    return f"""#include <tunables/global>

profile {name} flags=(attach_disconnected,mediate_deleted) {{
  #include <abstractions/base>

  network,
  capability,
  file,
  umount,

  # The host may signal the containers; containers signal only each other.
  signal (receive) peer=unconfined,
  signal (send,receive) peer={name},
  ptrace (trace,read,tracedby,readby) peer={name},

  deny mount,
  deny @{{PROC}}/* w,
  deny @{{PROC}}/{{[^1-9],[^1-9][^0-9],[^1-9s][^0-9y][^0-9s],[^1-9][^0-9][^0-9][^0-9/]*}}/** w,
  deny @{{PROC}}/sys/[^k]** w,
  deny @{{PROC}}/sys/kernel/{{?,??,[^s][^h][^m]**}} w,
  deny @{{PROC}}/sysrq-trigger rwklx,
  deny @{{PROC}}/kcore rwklx,
  deny /sys/[^f]*/** wklx,
  deny /sys/f[^s]*/** wklx,
  deny /sys/fs/[^c]*/** wklx,
  deny /sys/fs/c[^g]*/** wklx,
  deny /sys/fs/cg[^r]*/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/kernel/security/** rwklx,
}}
"""


def unavailable_reason(securityfs: Path, parser: str | None) -> str:
    """Why containers cannot get the profile on this node; "" when they can."""
    if not (securityfs / "apparmor").is_dir():
        lsm = securityfs / "lsm"
        modules = lsm.read_text().strip() if lsm.is_file() else "unknown"
        return (f"the kernel has no AppArmor ({securityfs / 'apparmor'} missing; "
                f"security modules: {modules})")
    if parser is None:
        return "apparmor_parser not found (apt-get install apparmor)"
    return ""


async def load_default(securityfs: Path = SECURITYFS, name: str = PROFILE_NAME) -> str:
    """Load the profile; its name, or "" (with the reason logged) when the
    node cannot have it."""
    parser = shutil.which("apparmor_parser")
    reason = unavailable_reason(securityfs, parser)
    if reason:
        log.info("AppArmor: containers run without a profile: %s", reason)
        return ""
    assert parser is not None
    process = await asyncio.create_subprocess_exec(
        parser, "-Kr", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(process.communicate(profile_text(name).encode()),
                                        _LOAD_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        log.warning("AppArmor: apparmor_parser did not finish in %.0fs: containers run "
                    "without a profile", _LOAD_TIMEOUT)
        return ""
    if process.returncode != 0:
        log.warning("AppArmor: loading %s failed: %s; containers run without a profile", name,
                    err.decode(errors="replace").strip())
        return ""
    log.info("AppArmor: containers run under the %s profile", name)
    return name
