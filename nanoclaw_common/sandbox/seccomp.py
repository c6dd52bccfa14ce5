"""The seccomp profile of every agent container: our own allowlist (docs/security.md,
"Container confinement").

``build_profile()`` is the profile; ``seccomp.json`` next to this file is its rendering,
committed and shipped as package data, and ``profile_path()`` is what ``wake`` passes to
Podman (``spec.create_kwargs``) for every container it starts. After changing a list here,
run ``python -m nanoclaw_common.sandbox.seccomp`` to write the file again; a unit test fails
while the two differ.

Why an allowlist, not "allow everything, deny a few": Podman replaces its own default when it
is given a profile, and a denylist lets through every system call we did not think of and
every one a newer kernel adds (io_uring was one such, years of kernel bugs reachable from any
container whose profile did not name it). Here a call is allowed only when it is in
``ALLOWED`` or passes one of the argument filters; everything else fails with ENOSYS, the
answer a program expects from a kernel that lacks a call (glibc and libuv fall back to the
older call). What we deny on purpose fails with EPERM instead (``DENIED``), so a tool that
tries says "Operation not permitted" rather than "not implemented".

Argument filters only ever *allow* exact values or test bits that lie inside the width the
kernel reads: the kernel truncates ``int`` arguments, so a "deny when equal" rule on such an
argument could be dodged by setting the upper bits. The deny rules next to the filters only
choose the error (EPERM) for what the allow rule already refuses.

Only native 64-bit system calls are allowed (x86_64, aarch64): the 32-bit compatibility
entry points (``int 0x80``, AArch32) are not in the profile's architectures at all, so a
process that uses them is killed.
"""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path
from typing import Any, Final

PROFILE_FILE: Final = Path(__file__).with_name("seccomp.json")

ARCHITECTURES: Final = ("SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64")

# <linux/sched.h>. CLONE_NEWTIME shares its bit with the exit signal in clone(2)'s flags, so
# it can only be asked for through unshare(2) (or clone3, which is refused as a whole).
CLONE_NEWTIME: Final = 0x00000080
CLONE_NEWNS: Final = 0x00020000
CLONE_NEWCGROUP: Final = 0x02000000
CLONE_NEWUTS: Final = 0x04000000
CLONE_NEWIPC: Final = 0x08000000
CLONE_NEWUSER: Final = 0x10000000
CLONE_NEWPID: Final = 0x20000000
CLONE_NEWNET: Final = 0x40000000
CLONE_NAMESPACES: Final = (
    CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID
    | CLONE_NEWNET
)  # fmt: skip
UNSHARE_NAMESPACES: Final = CLONE_NAMESPACES | CLONE_NEWTIME

# <sys/stat.h>: the file type field of a mode, and the two values that make a regular file
# (mknod(2) treats 0 as S_IFREG).
S_IFMT: Final = 0o170000
S_IFREG: Final = 0o100000
FILE_TYPE_STEP: Final = 0o010000

# <sys/socket.h>: the address families a tool may open. With --network none, INET sockets
# reach only the loopback of the container's own namespace; UNIX sockets reach the proxy;
# NETLINK (in the container's own network namespace) is how programs list interfaces.
AF_UNIX: Final = 1
AF_INET: Final = 2
AF_INET6: Final = 10
AF_NETLINK: Final = 16
SOCKET_FAMILIES: Final = (AF_UNIX, AF_INET, AF_INET6, AF_NETLINK)

# personality(2) values programs use: PER_LINUX, PER_LINUX32, UNAME26 with each, and
# 0xffffffff (query). Anything else (ADDR_NO_RANDOMIZE above all, which turns ASLR off for
# what the process runs next) is refused.
PERSONALITIES: Final = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

# What an unprivileged program needs, by area. Calls that exist on only one of the two
# architectures (``open`` is x86_64's, aarch64 has only ``openat``) are resolved by
# libseccomp for the architecture at hand and ignored where they do not exist.
ALLOWED: Final[dict[str, tuple[str, ...]]] = {
    "files: open, read, write, seek": (
        "open", "openat", "openat2", "creat", "close", "close_range", "read", "write",
        "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
        "lseek", "sendfile", "splice", "tee", "copy_file_range", "fallocate", "truncate",
        "ftruncate", "fsync", "fdatasync", "sync", "syncfs", "sync_file_range", "fadvise64",
        "readahead", "flock", "fcntl", "ioctl", "dup", "dup2", "dup3", "pipe", "pipe2",
    ),
    "files: names, metadata, folders": (
        "stat", "fstat", "lstat", "newfstatat", "statx", "statfs", "fstatfs", "access",
        "faccessat", "faccessat2", "readlink", "readlinkat", "getdents", "getdents64",
        "mkdir", "mkdirat", "rmdir", "unlink", "unlinkat", "rename", "renameat", "renameat2",
        "link", "linkat", "symlink", "symlinkat", "chmod", "fchmod", "fchmodat", "chown",
        "fchown", "lchown", "fchownat", "utime", "utimes", "utimensat", "futimesat", "umask",
        "chdir", "fchdir", "getcwd", "getxattr", "lgetxattr", "fgetxattr", "setxattr",
        "lsetxattr", "fsetxattr", "listxattr", "llistxattr", "flistxattr", "removexattr",
        "lremovexattr", "fremovexattr",
    ),
    "waiting on descriptors, notifications, asynchronous I/O": (
        "select", "pselect6", "poll", "ppoll", "epoll_create", "epoll_create1", "epoll_ctl",
        "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2", "signalfd",
        "signalfd4", "timerfd_create", "timerfd_settime", "timerfd_gettime", "inotify_init",
        "inotify_init1", "inotify_add_watch", "inotify_rm_watch", "io_setup", "io_destroy",
        "io_submit", "io_cancel", "io_getevents",
    ),
    "memory": (
        "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "mincore", "msync", "mlock",
        "mlock2", "munlock", "mlockall", "munlockall", "membarrier", "memfd_create",
        "pkey_alloc", "pkey_free", "pkey_mprotect", "get_mempolicy", "set_mempolicy", "mbind",
    ),
    "processes and threads (clone: see the namespace filter)": (
        "fork", "vfork", "execve", "execveat", "exit", "exit_group", "wait4", "waitid",
        "set_tid_address", "set_robust_list", "get_robust_list", "futex", "futex_waitv",
        "rseq", "arch_prctl", "prctl", "getpid", "getppid", "gettid", "getpgid", "setpgid",
        "getpgrp", "getsid", "setsid", "sched_yield", "sched_getaffinity",
        "sched_setaffinity", "sched_getparam", "sched_setparam", "sched_getscheduler",
        "sched_setscheduler", "sched_get_priority_max", "sched_get_priority_min",
        "sched_rr_get_interval", "sched_getattr", "sched_setattr", "getpriority",
        "setpriority", "ioprio_get", "ioprio_set", "getcpu", "getrlimit", "setrlimit",
        "prlimit64", "getrusage", "times", "sysinfo", "uname", "getrandom",
        "restart_syscall",
    ),
    "identity (changing it needs capabilities the container does not have)": (
        "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid", "getgroups",
        "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups",
        "setfsuid", "setfsgid", "capget", "capset",
    ),
    "signals": (
        "kill", "tkill", "tgkill", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn",
        "rt_sigpending", "rt_sigtimedwait", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
        "rt_sigsuspend", "sigaltstack", "pause", "pidfd_open", "pidfd_send_signal",
    ),
    "time (reading it; setting it needs CAP_SYS_TIME)": (
        "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday",
        "time", "adjtimex", "alarm", "getitimer", "setitimer", "timer_create",
        "timer_settime", "timer_gettime", "timer_getoverrun", "timer_delete",
    ),
    "sockets (socket: see the family filter)": (
        "socketpair", "bind", "listen", "accept", "accept4", "connect", "getsockname",
        "getpeername", "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg",
        "shutdown", "setsockopt", "getsockopt",
    ),
    "System V and POSIX IPC (the container has an IPC namespace of its own)": (
        "msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop", "semtimedop", "semctl",
        "shmget", "shmat", "shmdt", "shmctl", "mq_open", "mq_unlink", "mq_timedsend",
        "mq_timedreceive", "mq_notify", "mq_getsetattr",
    ),
    "confining oneself further (sandboxes inside the container)": (
        "seccomp", "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
    ),
}  # fmt: skip

# Refused with EPERM, each for its reason. Many also need a capability the container lacks;
# they are named anyway, so that no mistake elsewhere (a capability added, a user namespace
# let through) makes them reachable.
DENIED: Final[dict[str, tuple[str, ...]]] = {
    "namespaces: entering one (unshare and clone are filtered by flag)": ("setns",),
    "mounting and changing the root": (
        "mount", "umount2", "pivot_root", "chroot", "mount_setattr", "move_mount",
        "open_tree", "fsopen", "fsconfig", "fsmount", "fspick",
    ),
    "kernel keyrings: not namespaced per container, and every agent container has the same "
    "uid, so a key one session stores another could read": (
        "keyctl", "add_key", "request_key",
    ),
    "other processes' memory and descriptors (the runner is non-dumpable too)": (
        "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
        "process_madvise", "process_mrelease",
    ),
    "kernel attack surface no agent needs": (
        "bpf", "perf_event_open", "userfaultfd", "fanotify_init", "fanotify_mark",
        "lookup_dcookie", "quotactl", "quotactl_fd", "vmsplice", "migrate_pages", "move_pages",
        "open_by_handle_at", "name_to_handle_at", "modify_ldt", "io_pgetevents",
        "remap_file_pages", "memfd_secret",
    ),
    "the machine itself: modules, kexec, reboot, swap, clock, names, accounting, I/O ports": (
        "init_module", "finit_module", "delete_module", "create_module", "query_module",
        "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "syslog",
        "settimeofday", "clock_settime", "clock_adjtime", "sethostname", "setdomainname",
        "iopl", "ioperm", "vhangup", "nfsservctl", "uselib", "ustat", "sysfs", "_sysctl",
        "get_kernel_syms",
    ),
}  # fmt: skip

# Refused with ENOSYS: callers treat "not implemented" as "use the older call".
# clone3 passes its flags in memory, where seccomp cannot look, so it cannot be filtered like
# clone; glibc then falls back to clone(2), which is. io_uring is a second way into most of
# the kernel's I/O paths, bypassing this very filter (its operations are not system calls);
# libuv and liburing users fall back to epoll and plain calls.
NOT_IMPLEMENTED: Final[tuple[str, ...]] = (
    "clone3",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
)


def _rule(
    names: list[str] | tuple[str, ...],
    action: str,
    comment: str,
    *,
    errno_ret: int | None = None,
    args: list[dict[str, int | str]] | None = None,
) -> dict[str, Any]:
    rule: dict[str, Any] = {"names": list(names), "action": action}
    if errno_ret is not None:
        rule["errnoRet"] = errno_ret
    if args:
        rule["args"] = args
    rule["comment"] = comment
    return rule


def _arg(index: int, value: int, op: str, mask_or_value_two: int = 0) -> dict[str, int | str]:
    return {"index": index, "value": value, "valueTwo": mask_or_value_two, "op": op}


def _masked(index: int, mask: int, value: int) -> dict[str, int | str]:
    """(argument & mask) == value. libseccomp's MASKED_EQ takes the mask in ``value`` and
    the value to compare with in ``valueTwo``."""
    return _arg(index, mask, "SCMP_CMP_MASKED_EQ", value)


def _filtered_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    # Namespaces: clone and unshare only without namespace flags. A user namespace would give
    # the agent every capability inside it (`unshare -Ur` makes it root there), and with them
    # the mount, netfilter and filesystem code the kernel exposes to namespace root.
    rules.append(
        _rule(
            ["clone"],
            "SCMP_ACT_ALLOW",
            "threads and processes, without new namespaces (flags are argument 0 on x86_64"
            " and aarch64)",
            args=[_masked(0, CLONE_NAMESPACES, 0)],
        )
    )
    rules.append(
        _rule(
            ["unshare"],
            "SCMP_ACT_ALLOW",
            "unsharing files, fs attributes or SysV semaphores, never a namespace",
            args=[_masked(0, UNSHARE_NAMESPACES, 0)],
        )
    )
    for name, flags in (("clone", CLONE_NAMESPACES), ("unshare", UNSHARE_NAMESPACES)):
        for bit in _bits(flags):
            rules.append(
                _rule(
                    [name],
                    "SCMP_ACT_ERRNO",
                    f"a new namespace (flag {bit:#x}): refused with EPERM",
                    errno_ret=errno.EPERM,
                    args=[_masked(0, bit, bit)],
                )
            )
    # Device and FIFO nodes. A FIFO in a folder the host reads blocks a careless reader
    # forever; device nodes need CAP_MKNOD anyway. Regular files (type 0 or S_IFREG) only.
    for name, index in (("mknod", 1), ("mknodat", 2)):
        for file_type in range(0, S_IFMT + 1, FILE_TYPE_STEP):
            allowed = file_type in (0, S_IFREG)
            rules.append(
                _rule(
                    [name],
                    "SCMP_ACT_ALLOW" if allowed else "SCMP_ACT_ERRNO",
                    f"file type {file_type:#o}: "
                    + ("a regular file" if allowed else "FIFO, device or other node, refused"),
                    errno_ret=None if allowed else errno.EPERM,
                    args=[_masked(index, S_IFMT, file_type)],
                )
            )
    for family in SOCKET_FAMILIES:
        rules.append(
            _rule(
                ["socket"],
                "SCMP_ACT_ALLOW",
                f"address family {family} (UNIX, INET, INET6, NETLINK only: no AF_VSOCK,"
                " which reaches a virtual machine's host whatever the network namespace)",
                args=[_arg(0, family, "SCMP_CMP_EQ")],
            )
        )
    for value in PERSONALITIES:
        rules.append(
            _rule(
                ["personality"],
                "SCMP_ACT_ALLOW",
                f"personality {value:#x}",
                args=[_arg(0, value, "SCMP_CMP_EQ")],
            )
        )
    return rules


def _bits(flags: int) -> list[int]:
    return [1 << n for n in range(flags.bit_length()) if flags >> n & 1]


def build_profile() -> dict[str, Any]:
    """The profile, in the JSON form Podman reads (containers/common's seccomp format)."""
    syscalls: list[dict[str, Any]] = [
        _rule(names, "SCMP_ACT_ALLOW", area) for area, names in ALLOWED.items()
    ]
    syscalls += _filtered_rules()
    syscalls += [
        _rule(names, "SCMP_ACT_ERRNO", f"refused: {why}", errno_ret=errno.EPERM)
        for why, names in DENIED.items()
    ]
    syscalls.append(
        _rule(
            NOT_IMPLEMENTED,
            "SCMP_ACT_ERRNO",
            "refused as not implemented: clone3 (unfilterable; glibc falls back to clone) and"
            " io_uring (callers fall back to plain calls)",
            errno_ret=errno.ENOSYS,
        )
    )
    return {
        "comment": "NanoClaw's agent containers (nanoclaw_common/sandbox/seccomp.py writes"
        " this file; edit that, not this).",
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.ENOSYS,
        "archMap": [{"architecture": arch, "subArchitectures": []} for arch in ARCHITECTURES],
        "syscalls": syscalls,
    }


def render_profile() -> str:
    return json.dumps(build_profile(), indent=1) + "\n"


def profile_path() -> Path:
    """The shipped profile, for ``security_opt``/``seccomp_profile_path``."""
    return PROFILE_FILE


def main(argv: list[str] | None = None) -> int:
    """Write ``seccomp.json`` from ``build_profile()`` (or print it with ``-``)."""
    args = sys.argv[1:] if argv is None else argv
    text = render_profile()
    if args == ["-"]:
        sys.stdout.write(text)
    else:
        PROFILE_FILE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
