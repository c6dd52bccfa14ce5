"""The seccomp profile (nanoclaw_common/sandbox/seccomp.py), checked as data: the shipped file
is what the code builds, every name is a real system call of x86_64 or aarch64 (asked of the
machine's own libseccomp, which is what resolves them when Podman loads the profile), and
what must be refused is refused. tests/sandbox/test_confinement.py runs the profile."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
from collections.abc import Iterator
from typing import Any

import pytest

from nanoclaw_common.sandbox import seccomp

# libseccomp's architecture tokens (AUDIT_ARCH_*).
ARCH_TOKENS = {"SCMP_ARCH_X86_64": 0xC000003E, "SCMP_ARCH_AARCH64": 0xC00000B7}

# What Podman's own default profile keeps from a container without capabilities, or that a
# container must never reach: none of it may be allowed, with or without arguments.
MUST_REFUSE = (
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "ptrace",
    "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root", "chroot",
    "move_mount", "open_tree", "fsopen", "fsmount", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "open_by_handle_at", "userfaultfd",
    "setns", "io_uring_setup", "io_uring_enter", "io_uring_register", "clone3", "reboot",
    "swapon", "acct", "settimeofday", "clock_settime", "iopl", "ioperm", "vmsplice",
    "lookup_dcookie", "quotactl", "fanotify_init", "syslog", "kcmp", "pidfd_getfd",
)  # fmt: skip


@pytest.fixture(scope="module")
def libseccomp() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp")
    if name is None:
        pytest.fail("libseccomp is missing (Podman's runtimes need it: apt-get install podman)")
    lib = ctypes.CDLL(name)
    lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    lib.seccomp_syscall_resolve_name_arch.restype = ctypes.c_int
    return lib


def rules(profile: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from profile["syscalls"]


def unconditional(profile: dict[str, Any], action: str) -> set[str]:
    return {
        name
        for rule in rules(profile)
        if rule["action"] == action and not rule.get("args")
        for name in rule["names"]
    }


def test_the_shipped_file_is_the_built_profile() -> None:
    shipped = json.loads(seccomp.profile_path().read_text())
    assert shipped == seccomp.build_profile(), (
        "seccomp.json is stale: run `python -m nanoclaw_common.sandbox.seccomp`"
    )
    assert seccomp.profile_path().read_text() == seccomp.render_profile()


def test_an_allowlist_with_enosys_for_the_rest() -> None:
    profile = seccomp.build_profile()
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["defaultErrnoRet"] == errno.ENOSYS
    # Native 64-bit calls only: no 32-bit compatibility entry points.
    assert profile["archMap"] == [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": []},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": []},
    ]
    for rule in rules(profile):
        assert rule["action"] in ("SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO"), rule
        assert rule["comment"], rule
        assert (rule["action"] == "SCMP_ACT_ERRNO") == ("errnoRet" in rule), rule


def test_every_name_is_a_system_call(libseccomp: ctypes.CDLL) -> None:
    names = {name for rule in rules(seccomp.build_profile()) for name in rule["names"]}
    unknown_on: dict[str, list[str]] = {}
    for name in sorted(names):
        for arch, token in ARCH_TOKENS.items():
            if libseccomp.seccomp_syscall_resolve_name_arch(token, name.encode()) < 0:
                unknown_on.setdefault(name, []).append(arch)
    # A name may be missing on one of the two (aarch64 has no open, fork, mknod...), never
    # on both: that would be a typo, silently ignored when the profile is loaded.
    both = [name for name, arches in unknown_on.items() if len(arches) == len(ARCH_TOKENS)]
    assert both == []
    # The calls every program makes exist on both, so no architecture lacks its basics.
    for name in ("openat", "read", "write", "clone", "execve", "mknodat", "unshare", "socket"):
        assert name not in unknown_on


def test_nothing_is_both_allowed_and_refused() -> None:
    allowed = {name for names in seccomp.ALLOWED.values() for name in names}
    denied = {name for names in seccomp.DENIED.values() for name in names}
    not_implemented = set(seccomp.NOT_IMPLEMENTED)
    filtered = {"clone", "unshare", "mknod", "mknodat", "socket", "personality"}
    groups = [allowed, denied, not_implemented, filtered]
    for i, group in enumerate(groups):
        for other in groups[i + 1 :]:
            assert not group & other, group & other
    listed = [name for names in seccomp.ALLOWED.values() for name in names]
    assert len(listed) == len(set(listed))


def test_what_must_be_refused_is_refused() -> None:
    profile = seccomp.build_profile()
    allowed_by_any_rule = {
        name
        for rule in rules(profile)
        if rule["action"] == "SCMP_ACT_ALLOW"
        for name in rule["names"]
    }
    for name in MUST_REFUSE:
        assert name not in allowed_by_any_rule, name
    refused = unconditional(profile, "SCMP_ACT_ERRNO")
    assert set(MUST_REFUSE) <= refused
    assert {"clone3", "io_uring_setup"} <= set(seccomp.NOT_IMPLEMENTED)


def filter_rules(name: str) -> list[dict[str, Any]]:
    return [rule for rule in rules(seccomp.build_profile()) if rule["names"] == [name]]


def test_namespaces_are_never_allowed() -> None:
    for name, mask in (
        ("clone", seccomp.CLONE_NAMESPACES),
        ("unshare", seccomp.UNSHARE_NAMESPACES),
    ):
        found = filter_rules(name)
        allow = [rule for rule in found if rule["action"] == "SCMP_ACT_ALLOW"]
        # Allowed only when (flags & every namespace flag) == 0.
        assert [rule["args"] for rule in allow] == [
            [{"index": 0, "value": mask, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]
        ]
        deny_bits = sorted(
            rule["args"][0]["value"] for rule in found if rule["action"] == "SCMP_ACT_ERRNO"
        )
        assert deny_bits == [1 << n for n in range(32) if mask >> n & 1]
        assert all(rule.get("errnoRet") in (None, errno.EPERM) for rule in found)
    assert seccomp.CLONE_NAMESPACES & 0xFF == 0  # the exit-signal byte of clone(2)'s flags
    assert seccomp.UNSHARE_NAMESPACES & seccomp.CLONE_NEWUSER


def test_only_regular_files_from_mknod() -> None:
    for name, index in (("mknod", 1), ("mknodat", 2)):
        found = filter_rules(name)
        by_type: dict[int, str] = {}
        for rule in found:
            (arg,) = rule["args"]
            assert arg["index"] == index and arg["op"] == "SCMP_CMP_MASKED_EQ"
            assert arg["value"] == seccomp.S_IFMT
            by_type[arg["valueTwo"]] = rule["action"]
        # Every one of the sixteen values of the file-type field has exactly one rule.
        assert sorted(by_type) == list(range(0, 0o170001, 0o010000))
        assert {t for t, action in by_type.items() if action == "SCMP_ACT_ALLOW"} == {
            0,
            0o100000,
        }
        for fifo_or_device in (0o010000, 0o020000, 0o060000):
            assert by_type[fifo_or_device] == "SCMP_ACT_ERRNO"


def test_sockets_and_personalities_are_exact_values() -> None:
    families = {rule["args"][0]["value"] for rule in filter_rules("socket")}
    assert families == {1, 2, 10, 16}  # no AF_VSOCK (40), AF_ALG (38), AF_PACKET (17)
    personalities = filter_rules("personality")
    assert {rule["args"][0]["value"] for rule in personalities} == set(seccomp.PERSONALITIES)
    assert 0x0040000 not in seccomp.PERSONALITIES  # ADDR_NO_RANDOMIZE
    for rule in filter_rules("socket") + personalities:
        assert rule["action"] == "SCMP_ACT_ALLOW"
        assert [arg["op"] for arg in rule["args"]] == ["SCMP_CMP_EQ"]
