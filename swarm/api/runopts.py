"""Runtime options of a task (issue 13 item 2): what the words mean and
which values are acceptable, for every side that handles them.

swarmctl parses its flags with these functions (a bad value is exit 2
before anything is sent), the compose loader parses its keys with them, the
controller's validation (validation.py) checks a ContainerSpec with the
`*_problem` functions, and the agent (agent/runtime/spec.py) computes a
container's capability set with `effective_capabilities`. Pure: no host is
looked at here (whether a device exists is the node's to say, at prepare).

The rules follow docker's:

- capabilities: the kernel's names (linux/capability.h, up to
  CAP_CHECKPOINT_RESTORE, 40, the last one of Linux 5.9 to 6.x), with or
  without the CAP_ prefix, any case, and ALL; canonical form CAP_X.
- sysctls: only those a container's own namespaces hold (moby's
  ValidateSysctl): the network ones (net.*) and the IPC ones (kernel.msgmax,
  msgmnb, msgmni, sem, shmall, shmmax, shmmni, shm_rmid_forced, fs.mqueue.*).
  Anything else (kernel.panic, vm.*) would change the whole node, and runc
  refuses it anyway, later and less clearly.
- ulimits: NAME=SOFT[:HARD] with the names of `ulimit`/setrlimit (docker's
  go-units list); -1 is unlimited.
- devices: HOST[:CONTAINER[:PERMS]] with absolute paths and PERMS some of rwm.
- extra hosts: docker's HOST:IP (`--host`), kept as SwarmKit keeps them,
  "IP HOST".
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

# Index = capability number (linux/capability.h).
CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
ALL = "ALL"
_KNOWN_CAPABILITIES = frozenset(CAPABILITIES)

# moby opts.ValidateSysctl: the IPC namespace's sysctls, and two prefixes.
IPC_SYSCTLS = frozenset({
    "kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
    "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced",
})
SYSCTL_PREFIXES = ("net.", "fs.mqueue.")
_SYSCTL_NAME_RE = re.compile(r"[a-z0-9_]+(?:[./][a-zA-Z0-9_-]+)+")

# The names setrlimit knows (docker's go-units ulimitNameMapping).
ULIMITS: dict[str, str] = {
    "as": "RLIMIT_AS", "core": "RLIMIT_CORE", "cpu": "RLIMIT_CPU", "data": "RLIMIT_DATA",
    "fsize": "RLIMIT_FSIZE", "locks": "RLIMIT_LOCKS", "memlock": "RLIMIT_MEMLOCK",
    "msgqueue": "RLIMIT_MSGQUEUE", "nice": "RLIMIT_NICE", "nofile": "RLIMIT_NOFILE",
    "nproc": "RLIMIT_NPROC", "rss": "RLIMIT_RSS", "rtprio": "RLIMIT_RTPRIO",
    "rttime": "RLIMIT_RTTIME", "sigpending": "RLIMIT_SIGPENDING", "stack": "RLIMIT_STACK",
}
UNLIMITED = -1
_INT64_MAX = 2**63 - 1

DEVICE_PERMISSIONS = "rwm"
_HOSTNAME_RE = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9_.-]{0,252})")
_DNS_OPTION_RE = re.compile(r"[a-z][a-z0-9_-]*(?::[0-9]{1,4})?")
_SEARCH_RE = re.compile(r"[a-zA-Z0-9_](?:[a-zA-Z0-9_.-]{0,252})|\.")
_GROUP_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.-]{0,31}\$?|[0-9]{1,10}")
MAX_NAMESERVERS = 3  # what the C library reads
MAX_SEARCH_DOMAINS = 6


def _show(text: str, limit: int = 64) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


# ---------------------------------------------------------------- capabilities


def capability_name(text: str) -> str:
    """'net_admin', 'NET_ADMIN' or 'CAP_NET_ADMIN' -> 'CAP_NET_ADMIN'; 'all' -> 'ALL'.
    ValueError when the kernel has no such capability."""
    name = text.strip().upper()
    if name == ALL:
        return ALL
    canonical = name if name.startswith("CAP_") else "CAP_" + name
    if canonical not in _KNOWN_CAPABILITIES:
        raise ValueError(f"unknown capability {_show(text)} (expected a Linux capability such "
                         "as NET_ADMIN or SYS_PTRACE, or ALL)")
    return canonical


def capability_problem(name: str) -> str | None:
    """Why a stored name is not canonical (CAP_X or ALL), or None."""
    try:
        canonical = capability_name(name)
    except ValueError as error:
        return str(error)
    if canonical != name:
        return f"{_show(name)} is not in canonical form (expected {canonical})"
    return None


def effective_capabilities(defaults: Sequence[str], add: Sequence[str],
                           drop: Sequence[str]) -> list[str]:
    """moby's TweakCapabilities: ALL in add is every capability but the dropped
    ones; else ALL in drop is only the added ones; else the defaults without
    the dropped ones, then the added ones (an add wins over a drop of the same
    name)."""
    adds = [name for name in add if name != ALL]
    if ALL in add:
        caps = [name for name in CAPABILITIES if name not in drop]
    elif ALL in drop:
        caps = adds
    else:
        caps = [name for name in defaults if name not in drop] + adds
    return list(dict.fromkeys(caps))


# ---------------------------------------------------------------- sysctls


def sysctl_problem(name: str, value: str) -> str | None:
    """Why this sysctl cannot be given to a container, or None."""
    if not name:
        return "a sysctl needs a name, e.g. net.ipv4.ip_forward=1"
    if not _SYSCTL_NAME_RE.fullmatch(name):
        return f"invalid sysctl name {_show(name)} (expected e.g. net.core.somaxconn)"
    if not (name in IPC_SYSCTLS or name.startswith(SYSCTL_PREFIXES)):
        return (f"sysctl {_show(name)} is not namespaced: it would change the whole node "
                "(allowed: net.*, fs.mqueue.*, kernel.msgmax, kernel.msgmnb, kernel.msgmni, "
                "kernel.sem, kernel.shmall, kernel.shmmax, kernel.shmmni, "
                "kernel.shm_rmid_forced)")
    if not value.strip() or "\n" in value or "\0" in value:
        return f"sysctl {name} needs a value on one line (got {_show(value)})"
    return None


def parse_sysctl(text: str) -> tuple[str, str]:
    """'net.core.somaxconn=1024' -> (name, value); ValueError naming the problem."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep:
        raise ValueError(f"invalid sysctl {_show(text)} (expected NAME=VALUE, e.g. "
                         "net.ipv4.ip_unprivileged_port_start=0)")
    problem = sysctl_problem(name, value)
    if problem is not None:
        raise ValueError(problem)
    return name, value.strip()


# ---------------------------------------------------------------- ulimits


def ulimit_problem(name: str, soft: int, hard: int) -> str | None:
    if name not in ULIMITS:
        return (f"unknown ulimit {_show(name)} (expected one of "
                f"{', '.join(sorted(ULIMITS))})")
    for which, value in (("soft", soft), ("hard", hard)):
        if value < UNLIMITED or value > _INT64_MAX:
            return f"ulimit {name}: the {which} limit must be -1 (unlimited) or more (got {value})"
    if hard != UNLIMITED and (soft == UNLIMITED or soft > hard):
        return (f"ulimit {name}: the soft limit ({soft}) must not be above the hard limit "
                f"({hard})")
    return None


def _limit(text: str, whole: str) -> int:
    text = text.strip()
    if text.lower() == "unlimited":
        return UNLIMITED
    if not re.fullmatch(r"-?[0-9]{1,19}", text):
        raise ValueError(f"invalid ulimit {_show(whole)} (expected NAME=SOFT[:HARD] with whole "
                         "numbers, e.g. nofile=1024:2048)")
    return int(text)


def parse_ulimit(text: str) -> tuple[str, int, int]:
    """'nofile=1024:2048' -> ('nofile', 1024, 2048); 'nofile=1024' is soft = hard."""
    name, sep, limits = text.partition("=")
    name = name.strip().lower()
    if not sep or not name or not limits.strip():
        raise ValueError(f"invalid ulimit {_show(text)} (expected NAME=SOFT[:HARD], e.g. "
                         "nofile=1024:2048)")
    soft_text, colon, hard_text = limits.partition(":")
    soft = _limit(soft_text, text)
    hard = _limit(hard_text, text) if colon else soft
    problem = ulimit_problem(name, soft, hard)
    if problem is not None:
        raise ValueError(problem)
    return name, soft, hard


def format_ulimit(name: str, soft: int, hard: int) -> str:
    return f"{name}={soft}" if soft == hard else f"{name}={soft}:{hard}"


# ---------------------------------------------------------------- devices


def device_problem(host: str, container: str, permissions: str) -> str | None:
    if not host.startswith("/"):
        return f"the device path on the host must be absolute (got {_show(host)})"
    if container and not container.startswith("/"):
        return f"the device path in the container must be absolute (got {_show(container)})"
    if any(part == ".." for part in (host + "/" + container).split("/")):
        return f"device paths must not contain '..' (got {_show(host)})"
    if not permissions or set(permissions) - set(DEVICE_PERMISSIONS) or len(
            set(permissions)) != len(permissions):
        return (f"invalid device permissions {_show(permissions)} (expected some of r, w and m, "
                "e.g. rwm)")
    return None


def parse_device(text: str) -> tuple[str, str, str]:
    """'/dev/fuse', '/dev/x:/dev/y' or '/dev/x:/dev/y:rw' -> (host, container, perms)."""
    parts = text.strip().split(":")
    if len(parts) > 3 or not parts[0]:
        raise ValueError(f"invalid device {_show(text)} (expected HOST[:CONTAINER[:PERMS]], "
                         "e.g. /dev/fuse:/dev/fuse:rwm)")
    host = parts[0]
    container, permissions = host, DEVICE_PERMISSIONS
    if len(parts) == 2:
        # docker: /dev/x:rw is the host path with permissions.
        if parts[1] and not parts[1].startswith("/") and not set(parts[1]) - set("rwm"):
            permissions = parts[1]
        else:
            container = parts[1]
    elif len(parts) == 3:
        container, permissions = parts[1] or host, parts[2]
    problem = device_problem(host, container, permissions)
    if problem is not None:
        raise ValueError(problem)
    return host, container, permissions


# ---------------------------------------------------------------- groups, DNS, hosts


def group_problem(group: str) -> str | None:
    if not _GROUP_RE.fullmatch(group):
        return (f"invalid group {_show(group)} (expected a group name or a numeric GID)")
    if group.isdigit() and int(group) > 2**32 - 2:
        return f"GID {group} is out of range"
    return None


def nameserver_problem(address: str) -> str | None:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return f"invalid DNS server {_show(address)} (expected an IP address, e.g. 10.0.0.2)"
    return None


def search_domain_problem(domain: str) -> str | None:
    if not _SEARCH_RE.fullmatch(domain):
        return f"invalid DNS search domain {_show(domain)} (expected e.g. example.com)"
    return None


def dns_option_problem(option: str) -> str | None:
    if not _DNS_OPTION_RE.fullmatch(option):
        return (f"invalid DNS option {_show(option)} (expected a resolv.conf option such as "
                "ndots:2, timeout:1, edns0 or rotate)")
    return None


def hostname_problem(name: str) -> str | None:
    if not _HOSTNAME_RE.fullmatch(name) or name.endswith(("-", ".")) or ".." in name:
        return f"invalid host name {_show(name)} (expected e.g. db.internal)"
    return None


def parse_extra_host(text: str) -> str:
    """docker's 'HOST:IP' (also 'HOST=IP'; IPv6 allowed after the first ':')
    -> the stored line 'IP HOST'."""
    text = text.strip()
    separator = "=" if "=" in text else ":"
    name, sep, address = text.partition(separator)
    name, address = name.strip(), address.strip().removeprefix("[").removesuffix("]")
    if not sep or not name or not address:
        raise ValueError(f"invalid extra host {_show(text)} (expected HOST:IP, e.g. "
                         "db.internal:10.0.0.5)")
    problem = hostname_problem(name)
    if problem is None:
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            problem = (f"invalid extra host {_show(text)}: {_show(address)} is not an IP "
                       "address (expected HOST:IP)")
    if problem is not None:
        raise ValueError(problem)
    return f"{address} {name}"


def host_entry_problem(line: str) -> str | None:
    """Why a stored /etc/hosts line ('IP HOST [ALIAS...]') is not one, or None."""
    fields = line.split()
    if len(fields) < 2:
        return f"invalid hosts entry {_show(line)} (expected 'IP HOST [ALIAS...]')"
    try:
        ipaddress.ip_address(fields[0])
    except ValueError:
        return f"invalid hosts entry {_show(line)}: {_show(fields[0])} is not an IP address"
    for name in fields[1:]:
        problem = hostname_problem(name)
        if problem is not None:
            return problem
    return None
