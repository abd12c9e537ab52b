"""The default seccomp profile of every container, and the resolution of a
profile (this default or a service's own) into the OCI `linux.seccomp`
object runc takes.

The profile is written here, group by group, from the documented behaviour
of Docker's default profile (docs.docker.com "Seccomp security profiles";
moby profiles/seccomp): an allow-list. Anything not listed fails with EPERM
(`defaultAction: SCMP_ACT_ERRNO`). Notably never allowed without the
matching capability: the keyring (add_key, keyctl, request_key), mounting
(mount, umount2, fsopen, ...), namespaces (unshare, setns, clone with
CLONE_NEW* flags), kernel modules, kexec, reboot, bpf, perf_event_open,
userfaultfd, io_uring, swap, open_by_handle_at, the clock setters; the
unprivileged user namespaces behind CVE-2022-0185 are the headline.

The profile format is Docker's (a superset of the OCI one), so a service can
bring Docker-format profiles as they are:

    {"defaultAction": ..., "defaultErrnoRet": 1,
     "archMap": [{"architecture": A, "subArchitectures": [...]}],
     "syscalls": [{"names": [...], "action": ..., "errnoRet": N, "args": [...],
                   "includes": {"caps": [...], "arches": [...], "minKernel": "4.8"},
                   "excludes": {"caps": [...], "arches": [...]}}]}

`resolve` keeps a rule when every capability of `includes.caps` is in the
container's bounding set and none of `excludes.caps` is, when the host's
architecture is (or is not) among `arches`, and when the kernel is at least
`minKernel`, as Docker decides. Syscall names libseccomp does not know
(newer than the host's library) are skipped by runc, so the list can name
calls of newer kernels.

Unlike Docker's, the default filter covers the native ABI only (no 32-bit
x86 or x32 calls on x86_64; see _ARCH_MAP for why).

Why the conditional rules:
- clone: allowed only without the CLONE_NEW* namespace flags (masked-equal
  test on the flags argument; it is the second argument on s390).
- clone3: its flags live in a struct the filter cannot read, so without
  CAP_SYS_ADMIN it fails with ENOSYS and the C library falls back to clone.
- personality: only the harmless domains (Linux, 32-bit Linux, UNAME26, and
  the query value), each its own rule since arguments are ANDed.
- socket: every family but AF_VSOCK (40), which reaches the hypervisor host.
- ptrace and the process_vm_* family: from kernel 4.8 on (earlier kernels
  let a traced process escape the filter), or with CAP_SYS_PTRACE.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Collection, Mapping, Sequence
from typing import Any

ALLOW = "SCMP_ACT_ALLOW"
ERRNO = "SCMP_ACT_ERRNO"
EPERM = 1
ENOSYS = 38

_CLONE_NAMESPACE_FLAGS = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
_AF_VSOCK = 40

# platform.machine() -> libseccomp's native architecture.
NATIVE_ARCHES: Mapping[str, str] = {
    "x86_64": "SCMP_ARCH_X86_64",
    "amd64": "SCMP_ARCH_X86_64",
    "i386": "SCMP_ARCH_X86",
    "i686": "SCMP_ARCH_X86",
    "aarch64": "SCMP_ARCH_AARCH64",
    "arm64": "SCMP_ARCH_AARCH64",
    "armv7l": "SCMP_ARCH_ARM",
    "ppc64le": "SCMP_ARCH_PPC64LE",
    "s390x": "SCMP_ARCH_S390X",
    "riscv64": "SCMP_ARCH_RISCV64",
}

# ---------------------------------------------------------------- the allow-list, by purpose

_FILES = """
access chdir chmod chown chown32 close close_range copy_file_range creat dup dup2 dup3
faccessat faccessat2 fadvise64 fadvise64_64 fallocate fchdir fchmod fchmodat fchmodat2
fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock fremovexattr
fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64 futimesat
getcwd getdents getdents64 getxattr lchown lchown32 lgetxattr link linkat listxattr
llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64 mkdir mkdirat mknod mknodat
name_to_handle_at newfstatat open openat openat2 pread64 preadv preadv2 pwrite64 pwritev
pwritev2 read readahead readlink readlinkat readv removexattr rename renameat renameat2
rmdir sendfile sendfile64 setxattr splice stat stat64 statfs statfs64 statx symlink
symlinkat sync sync_file_range syncfs tee truncate truncate64 umask unlink unlinkat utime
utimensat utimensat_time64 utimes vmsplice write writev cachestat
fanotify_mark inotify_add_watch inotify_init inotify_init1 inotify_rm_watch
io_cancel io_destroy io_getevents io_pgetevents io_pgetevents_time64 io_setup io_submit
ioprio_get ioprio_set ioctl
"""

_MEMORY = """
brk madvise membarrier memfd_create memfd_secret mincore mlock mlock2 mlockall mmap mmap2
mprotect mremap msync munlock munlockall munmap pkey_alloc pkey_free pkey_mprotect
remap_file_pages map_shadow_stack
"""

_PROCESSES = """
capget capset execve execveat exit exit_group fork vfork wait4 waitid waitpid
getcpu getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32 getpgid
getpgrp getpid getppid getpriority getresgid getresgid32 getresuid getresuid32 getrlimit
get_robust_list getrusage getsid gettid getuid getuid32 get_thread_area
prctl prlimit64 rseq setrlimit ugetrlimit set_robust_list set_tid_address set_thread_area
setpgid setpriority setsid
setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setregid
setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32 setuid setuid32
sched_getaffinity sched_getattr sched_getparam sched_get_priority_max
sched_get_priority_min sched_getscheduler sched_rr_get_interval
sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam
sched_setscheduler sched_yield
kill tgkill tkill pidfd_open pidfd_send_signal process_mrelease restart_syscall
seccomp landlock_add_rule landlock_create_ruleset landlock_restrict_self
uname sysinfo times
"""

_SIGNALS_AND_WAITING = """
alarm pause sigaltstack signalfd signalfd4 sigprocmask sigreturn rt_sigaction
rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait
rt_sigtimedwait_time64 rt_tgsigqueueinfo
futex futex_requeue futex_time64 futex_wait futex_waitv futex_wake
epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait
epoll_wait_old eventfd eventfd2 poll ppoll ppoll_time64 pselect6 pselect6_time64 select
_newselect pipe pipe2
"""

_TIME = """
adjtimex clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime
clock_gettime64 clock_nanosleep clock_nanosleep_time64 gettimeofday nanosleep time
getitimer setitimer timer_create timer_delete timer_getoverrun timer_gettime
timer_gettime64 timer_settime timer_settime64 timerfd_create timerfd_gettime
timerfd_gettime64 timerfd_settime timerfd_settime64
"""

_IPC = """
ipc mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend
mq_timedsend_time64 mq_unlink msgctl msgget msgrcv msgsnd semctl semget semop semtimedop
semtimedop_time64 shmat shmctl shmdt shmget
"""

_NETWORK = """
accept accept4 bind connect getpeername getsockname getsockopt listen recv recvfrom
recvmmsg recvmmsg_time64 recvmsg send sendmmsg sendmsg sendto setsockopt shutdown
socketcall socketpair
"""

# Calls gated by a capability of the container's bounding set (as the kernel
# would gate them anyway; the filter keeps the code paths out of reach).
_BY_CAPABILITY: tuple[tuple[str, str], ...] = (
    ("CAP_SYS_ADMIN", """bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick
        lookup_dcookie mount mount_setattr move_mount open_tree perf_event_open quotactl
        quotactl_fd setdomainname sethostname setns syslog umount umount2 unshare"""),
    ("CAP_SYS_BOOT", "reboot"),
    ("CAP_SYS_CHROOT", "chroot"),
    ("CAP_SYS_MODULE", "delete_module init_module finit_module"),
    ("CAP_SYS_PACCT", "acct"),
    ("CAP_SYS_PTRACE", "kcmp pidfd_getfd process_madvise process_vm_readv "
                       "process_vm_writev ptrace"),
    ("CAP_SYS_RAWIO", "iopl ioperm"),
    ("CAP_SYS_TIME", "settimeofday stime clock_settime clock_settime64"),
    ("CAP_SYS_TTY_CONFIG", "vhangup"),
    ("CAP_SYS_NICE", "get_mempolicy mbind set_mempolicy set_mempolicy_home_node"),
    ("CAP_SYSLOG", "syslog"),
    ("CAP_BPF", "bpf"),
    ("CAP_PERFMON", "perf_event_open"),
    ("CAP_DAC_READ_SEARCH", "open_by_handle_at"),
)

# Calls of one architecture family.
_BY_ARCH: tuple[tuple[tuple[str, ...], str], ...] = (
    (("SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_X86"), "arch_prctl modify_ldt"),
    (("SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64"),
     "arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls"),
    (("SCMP_ARCH_PPC64LE",), "sync_file_range2"),
    (("SCMP_ARCH_S390", "SCMP_ARCH_S390X"),
     "s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr"),
    (("SCMP_ARCH_RISCV64",), "riscv_flush_icache"),
)

# Native system calls only: unlike Docker's, the default profile lists no
# sub-architectures (x86 and x32 beside x86_64, arm beside aarch64, ...), so
# the 32-bit and x32 compat entry points -- a long-standing source of kernel
# bugs -- are refused. Each extra ABI also costs runc about 10 ms per
# container start on this machine (libseccomp compiles the filter once per
# architecture): with all three on x86_64 the profile cost a quarter of a
# container's start, with the native one alone it is within noise. A service
# that runs 32-bit binaries brings a profile with an archMap listing them.
_ARCH_MAP: tuple[str, ...] = ("SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64", "SCMP_ARCH_PPC64LE",
                              "SCMP_ARCH_S390X", "SCMP_ARCH_RISCV64")

# personality(2) values allowed: PER_LINUX, PER_LINUX32, UNAME26,
# PER_LINUX32|UNAME26, and 0xffffffff (query the current one).
_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)


def _names(text: str) -> list[str]:
    return sorted(set(text.split()))


def _rule(names: Sequence[str], action: str = ALLOW, **extra: Any) -> dict[str, Any]:
    return {"names": list(names), "action": action, **extra}


@functools.cache
def default_profile() -> Mapping[str, Any]:
    """The default profile, in the Docker format (see the module doc); built
    once, shared: never modify it."""
    plain = _names(" ".join((_FILES, _MEMORY, _PROCESSES, _SIGNALS_AND_WAITING, _TIME, _IPC,
                              _NETWORK)))
    no_admin = {"caps": ["CAP_SYS_ADMIN"]}
    s390 = ["SCMP_ARCH_S390", "SCMP_ARCH_S390X"]

    def clone_flags(index: int) -> list[dict[str, Any]]:
        return [{"index": index, "value": _CLONE_NAMESPACE_FLAGS, "valueTwo": 0,
                 "op": "SCMP_CMP_MASKED_EQ"}]

    syscalls: list[dict[str, Any]] = [
        _rule(plain),
        *(_rule(["personality"], args=[{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}])
          for value in _PERSONALITIES),
        _rule(["socket"], args=[{"index": 0, "value": _AF_VSOCK, "op": "SCMP_CMP_NE"}]),
        _rule(_names("kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev "
                     "ptrace"), includes={"minKernel": "4.8"}),
        *(_rule(_names(names), includes={"arches": list(arches)})
          for arches, names in _BY_ARCH),
        *(_rule(_names(names), includes={"caps": [cap]}) for cap, names in _BY_CAPABILITY),
        _rule(["clone"], args=clone_flags(0), excludes={**no_admin, "arches": s390}),
        _rule(["clone"], args=clone_flags(1),
              includes={"arches": s390}, excludes=no_admin),
        _rule(["clone3"], ERRNO, errnoRet=ENOSYS, excludes=no_admin),
    ]
    return {
        "defaultAction": ERRNO,
        "defaultErrnoRet": EPERM,
        "archMap": [{"architecture": arch, "subArchitectures": []} for arch in _ARCH_MAP],
        "syscalls": syscalls,
    }


# ---------------------------------------------------------------- resolution


def native_arch(machine: str | None = None) -> str:
    return NATIVE_ARCHES.get((machine or platform.machine()).lower(), "")


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """'6.1.0-18-amd64' -> (6, 1)."""
    text = release or platform.release()
    parts = text.split("-", 1)[0].split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return 0, 0


def _applies(rule: Mapping[str, Any], capabilities: Collection[str], arch: str,
             kernel: tuple[int, int]) -> bool:
    includes: Mapping[str, Any] = rule.get("includes") or {}
    excludes: Mapping[str, Any] = rule.get("excludes") or {}
    if any(cap not in capabilities for cap in includes.get("caps") or ()):
        return False
    if any(cap in capabilities for cap in excludes.get("caps") or ()):
        return False
    if includes.get("arches") and arch not in includes["arches"]:
        return False
    if excludes.get("arches") and arch in excludes["arches"]:
        return False
    min_kernel = includes.get("minKernel")
    return not (min_kernel and kernel < kernel_version(str(min_kernel)))


def resolve(profile: Mapping[str, Any], capabilities: Collection[str], *, arch: str,
            kernel: tuple[int, int]) -> dict[str, Any]:
    """The OCI linux.seccomp of a (checked) profile for a container with these
    bounding capabilities, on this architecture and kernel."""
    seccomp: dict[str, Any] = {"defaultAction": profile["defaultAction"]}
    if "defaultErrnoRet" in profile:
        seccomp["defaultErrnoRet"] = profile["defaultErrnoRet"]
    if profile.get("architectures"):
        seccomp["architectures"] = list(profile["architectures"])
    else:
        for entry in profile.get("archMap") or ():
            if entry.get("architecture") == arch:
                seccomp["architectures"] = [arch, *entry.get("subArchitectures", ())]
    if profile.get("flags"):
        seccomp["flags"] = list(profile["flags"])
    rules = []
    for rule in profile.get("syscalls") or ():
        if not _applies(rule, capabilities, arch, kernel):
            continue
        names = list(rule.get("names") or ()) or [rule["name"]]
        resolved: dict[str, Any] = {"names": names, "action": rule["action"]}
        for key in ("errnoRet", "args"):
            if rule.get(key) is not None:
                resolved[key] = rule[key]
        rules.append(resolved)
    seccomp["syscalls"] = rules
    return seccomp
