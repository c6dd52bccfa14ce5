"""The confinement of a container started by ``Sandbox.wake`` (docs/security.md, "Container
confinement"): inside it, as the agent user, the attacks the seccomp profile, the mount
options and the image refuse. Each names what Podman's own defaults let through."""

from __future__ import annotations

import json
import platform
import shlex
from pathlib import Path
from typing import Any

import msgspec
import podman
import pytest

from nanoclaw_common.sandbox import Sandbox
from nanoclaw_common.settings import Settings
from nanoclaw_common.store import CentralStore, rows
from tests.sandbox.conftest import SandboxFactory, SessionFactory

pytestmark = pytest.mark.podman

# System call numbers the C library has no wrapper for (or whose wrapper hides the call).
SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {
        "clone": 56, "clone3": 435, "keyctl": 250, "add_key": 248, "bpf": 321,
        "perf_event_open": 298, "userfaultfd": 323, "io_uring_setup": 425, "setns": 308,
        "personality": 135, "process_vm_readv": 310, "open_by_handle_at": 304,
    },
    "aarch64": {
        "clone": 220, "clone3": 435, "keyctl": 219, "add_key": 217, "bpf": 280,
        "perf_event_open": 241, "userfaultfd": 282, "io_uring_setup": 425, "setns": 268,
        "personality": 92, "process_vm_readv": 270, "open_by_handle_at": 265,
    },
}  # fmt: skip

# Shared by the probes below: `call(name, *args)` makes a raw system call and returns
# "ok" or the errno's name.
PRELUDE = f"""
import ctypes, errno, json, os, platform, socket, subprocess
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NUMBERS = {SYSCALLS!r}[platform.machine()]
def name_of(code):
    return errno.errorcode.get(code, str(code))
def call(syscall, *args):
    result = libc.syscall(ctypes.c_long(NUMBERS[syscall]), *[ctypes.c_long(a) for a in args])
    return "ok" if result >= 0 else name_of(ctypes.get_errno())
def libc_call(function, *args):
    return "ok" if getattr(libc, function)(*args) == 0 else name_of(ctypes.get_errno())
def outcome(action):
    try:
        action()
    except OSError as exc:
        return name_of(exc.errno)
    return "ok"
def command(*argv):
    done = subprocess.run(list(argv), capture_output=True, text=True)
    return [done.returncode, (done.stdout + done.stderr).strip()]
found = {{}}
"""


@pytest.fixture
def sleeping(
    make_sandbox: SandboxFactory, make_session: SessionFactory
) -> tuple[Sandbox, rows.Session]:
    box = make_sandbox()  # a process that stays up; the confinement is the container's
    session = make_session()
    assert box.wake(session)
    return box, session


def probe(box: Sandbox, session: rows.Session, code: str) -> dict[str, Any]:
    """Run ``code`` (after ``PRELUDE``) inside as the agent user; it fills ``found``."""
    code_, out, err = box.exec_in(
        session.id, ["python3", "-c", PRELUDE + code + "\nprint(json.dumps(found))\n"]
    )
    assert code_ == 0, err
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def test_no_fifo_or_device_node_can_be_made(sleeping: tuple[Sandbox, rows.Session]) -> None:
    box, session = sleeping
    found = probe(
        box,
        session,
        "for folder in ('/tmp', '/workspace', '/session/agent'):\n"
        "    found['mkfifo ' + folder] = outcome(lambda: os.mkfifo(folder + '/pipe'))\n"
        "    found['mknod fifo ' + folder] = outcome(\n"
        "        lambda: os.mknod(folder + '/pipe2', 0o600 | 0o010000))\n"
        "    found['mknod socket ' + folder] = outcome(\n"
        "        lambda: os.mknod(folder + '/sock', 0o600 | 0o140000))\n"
        "    found['mknod regular ' + folder] = outcome(\n"
        "        lambda: os.mknod(folder + '/plain', 0o600 | 0o100000))\n"
        "found['mkfifo command'] = command('mkfifo', '/tmp/p')\n"
        "found['mknod c'] = command('mknod', '/tmp/null', 'c', '1', '3')\n"
        "found['mknod b'] = command('mknod', '/tmp/loop', 'b', '7', '0')\n"
        # The file-type bits the filter looks at, with the upper bits of the argument set
        # (the kernel reads a 16-bit mode): still refused.
        "libc.mknodat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_ulong]\n"
        "found['mknodat high bits'] = libc_call(\n"
        "    'mknodat', -100, b'/tmp/high', (1 << 40) | 0o010000 | 0o600, 0)\n",
    )
    for folder in ("/tmp", "/workspace", "/session/agent"):
        # Podman's default profile allows both: mkfifo works there.
        assert found[f"mkfifo {folder}"] == "EPERM", found
        assert found[f"mknod fifo {folder}"] == "EPERM", found
        assert found[f"mknod socket {folder}"] == "EPERM", found
        assert found[f"mknod regular {folder}"] == "ok", found  # the filter is exact
    assert (
        found["mkfifo command"][0] != 0 and "Operation not permitted" in found["mkfifo command"][1]
    )
    # Device nodes: refused by the profile (and by the missing CAP_MKNOD, as before).
    for kind in ("mknod c", "mknod b"):
        assert found[kind][0] != 0 and "Operation not permitted" in found[kind][1], found
    assert found["mknodat high bits"] == "EPERM"


def test_no_namespace_can_be_made(sleeping: tuple[Sandbox, rows.Session]) -> None:
    box, session = sleeping
    found = probe(
        box,
        session,
        "for flags in (['-Ur'], ['-U'], ['-m'], ['-n'], ['-p', '-f'], ['-T']):\n"
        "    found['unshare ' + ' '.join(flags)] = command('unshare', *flags, 'id', '-u')\n"
        "CLONE_NEWUSER, CLONE_NEWNS, SIGCHLD = 0x10000000, 0x20000, 17\n"
        "found['unshare(NEWUSER)'] = libc_call('unshare', CLONE_NEWUSER)\n"
        "found['unshare(NEWTIME)'] = libc_call('unshare', 0x80)\n"
        "found['unshare(FILES)'] = libc_call('unshare', 0x400)\n"
        "for name, flags in (('clone(NEWUSER)', CLONE_NEWUSER), ('clone(NEWNS)', CLONE_NEWNS)):\n"
        "    pid = libc.syscall(ctypes.c_long(NUMBERS['clone']), ctypes.c_long(flags | SIGCHLD),"
        " *[ctypes.c_long(0)] * 4)\n"
        "    if pid == 0:\n"
        "        os._exit(0)\n"
        "    found[name] = 'ok' if pid > 0 else name_of(ctypes.get_errno())\n"
        "    if pid > 0:\n"
        "        os.waitpid(pid, 0)\n"
        "found['clone3'] = call('clone3', 0, 0)\n"
        "found['setns'] = call('setns', 0, 0)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(7)\n"
        "found['fork'] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])\n"
        "import threading\n"
        "thread = threading.Thread(target=lambda: found.__setitem__('thread', 'ran'))\n"
        "thread.start(); thread.join()\n",
    )
    # Podman's default profile lets `unshare -Ur` make the agent root in a namespace of its
    # own (uid 0 there, and every capability).
    for flags in ("-Ur", "-U", "-m", "-n", "-p -f", "-T"):
        code, text = found[f"unshare {flags}"]
        assert code != 0 and "Operation not permitted" in text, (flags, found)
    for name in ("unshare(NEWUSER)", "unshare(NEWTIME)", "clone(NEWUSER)", "clone(NEWNS)"):
        assert found[name] == "EPERM", (name, found)
    assert found["setns"] == "EPERM"
    # clone3 cannot be filtered on its flags: "not implemented", so glibc uses clone...
    assert found["clone3"] == "ENOSYS"
    # ...and processes, threads and harmless unsharing still work.
    assert found["fork"] == 7 and found["thread"] == "ran"
    assert found["unshare(FILES)"] == "ok"


def test_the_kernel_surface_no_agent_needs_is_refused(
    sleeping: tuple[Sandbox, rows.Session],
) -> None:
    box, session = sleeping
    found = probe(
        box,
        session,
        "found['keyctl'] = call('keyctl', 1, 0)\n"  # KEYCTL_JOIN_SESSION_KEYRING
        "found['add_key'] = call('add_key', 0, 0, 0, 0, 0)\n"
        "found['ptrace'] = libc_call('ptrace', 0, 0, 0, 0)\n"  # PTRACE_TRACEME
        "found['process_vm_readv'] = call('process_vm_readv', 1, 0, 0, 0, 0, 0)\n"
        "found['mount'] = libc_call('mount', b'none', b'/tmp', b'tmpfs', 0, None)\n"
        "found['bpf'] = call('bpf', 0, 0, 0)\n"
        "found['perf_event_open'] = call('perf_event_open', 0, 0, -1, -1, 0)\n"
        "found['userfaultfd'] = call('userfaultfd', 0)\n"
        "found['open_by_handle_at'] = call('open_by_handle_at', 0, 0, 0)\n"
        "found['io_uring_setup'] = call('io_uring_setup', 1, 0)\n"
        "found['personality(ADDR_NO_RANDOMIZE)'] = call('personality', 0x0040000)\n"
        "found['personality(PER_LINUX)'] = call('personality', 0)\n"
        "for family in (socket.AF_UNIX, socket.AF_INET, 40, 38):\n"  # 40 VSOCK, 38 ALG
        "    found[f'socket {family}'] = outcome(\n"
        "        lambda: socket.socket(family, socket.SOCK_SEQPACKET if family == 38"
        " else socket.SOCK_STREAM).close())\n",
    )
    # keyctl and ptrace are allowed by Podman's default profile.
    for name in (
        "keyctl", "add_key", "ptrace", "process_vm_readv", "mount", "bpf", "perf_event_open",
        "userfaultfd", "open_by_handle_at",
    ):  # fmt: skip
        assert found[name] == "EPERM", (name, found)
    assert found["io_uring_setup"] == "ENOSYS"  # callers fall back to plain calls
    assert found["personality(ADDR_NO_RANDOMIZE)"] == "ENOSYS"
    assert found["personality(PER_LINUX)"] == "ok"
    assert found["socket 1"] == "ok" and found["socket 2"] == "ok"
    assert found["socket 40"] == "ENOSYS" and found["socket 38"] == "ENOSYS"


@pytest.mark.skipif(platform.machine() != "x86_64", reason="int 0x80 is x86's")
def test_32_bit_system_calls_kill_the_process(sleeping: tuple[Sandbox, rows.Session]) -> None:
    """The compatibility entry points are not in the profile at all: a process using one is
    killed (Podman's default profile allows the i386 calls)."""
    box, session = sleeping
    code = (
        "import ctypes, mmap, os\n"
        # mov eax, 20 (i386 getpid); int 0x80; ret
        "machine = bytes([0xB8, 0x14, 0, 0, 0, 0xCD, 0x80, 0xC3])\n"
        "page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE"
        " | mmap.PROT_EXEC)\n"
        "page.write(machine)\n"
        "address = ctypes.addressof(ctypes.c_char.from_buffer(page))\n"
        "print('i386 getpid', ctypes.CFUNCTYPE(ctypes.c_int)(address)(), flush=True)\n"
    )
    script = f"python3 -c {shlex.quote(code)}; echo exit=$?"
    status, out, err = box.exec_in(session.id, ["sh", "-c", script])
    assert status == 0, err
    assert "i386 getpid" not in out
    assert out.strip().splitlines()[-1] == "exit=159", out  # 128 + SIGSYS


def mount_options(box: Sandbox, session: rows.Session) -> dict[str, set[str]]:
    code, out, err = box.exec_in(
        session.id,
        [
            "python3",
            "-c",
            "for line in open('/proc/self/mountinfo'):\n"
            "    fields = line.split()\n"
            "    print(fields[4], fields[5])\n",
        ],
    )
    assert code == 0, err
    options: dict[str, set[str]] = {}
    for line in out.splitlines():
        target, flags = line.split()
        options[target] = set(flags.split(","))
    return options


@pytest.mark.usefixtures("fake_proxy")  # so that /run/nanoclaw is mounted too
def test_every_bind_mount_is_nosuid_nodev(
    make_sandbox: SandboxFactory,
    make_session: SessionFactory,
    central: CentralStore,
    box_settings: Settings,
    tmp_path: Path,
) -> None:
    root = tmp_path / "projects"
    (root / "docs").mkdir(parents=True)
    allowlist = tmp_path / "config" / "mount-allowlist.json"
    allowlist.parent.mkdir()
    allowlist.write_text(json.dumps({"allowedRoots": [{"path": str(root)}]}))
    box = make_sandbox(
        settings=msgspec.structs.replace(box_settings, mount_allowlist=str(allowlist))
    )
    session = make_session()
    central.update_container_config(
        session.agent_group_id,
        additional_mounts=json.dumps([{"hostPath": str(root / "docs")}]),
    )
    assert box.wake(session)
    options = mount_options(box, session)
    binds = ["/session", "/session/agent", "/workspace", "/run/nanoclaw", "/workspace/extra/docs"]
    for target in [*binds, "/tmp"]:
        assert target in options, (target, sorted(options))
        # Podman's binds have neither: a setuid file or a device node in a host folder
        # would count inside.
        assert {"nosuid", "nodev"} <= options[target], (target, options[target])
    # The modes are as before.
    assert "ro" in options["/session"] and "rw" in options["/session/agent"]
    assert "ro" in options["/run/nanoclaw"] and "ro" in options["/workspace/extra/docs"]


def test_the_image_has_no_setuid_or_setgid_file(agent_image: str, box_settings: Settings) -> None:
    """Looked for as root, so no folder is out of sight (the base ships su, mount...)."""
    with podman.PodmanClient(base_url=box_settings.podman_socket_url) as client:
        container = client.containers.create(
            agent_image,
            ["find", "/", "-xdev", "-perm", "/6000", "-type", "f"],
            user="0:0",
            network_mode="none",
        )
        try:
            container.start()
            assert container.wait() == 0
            chunks = container.logs(stdout=True, stderr=True)
            assert not isinstance(chunks, bytes)  # without stream=True: an iterator all the same
            text = b"".join(chunks).decode()
        finally:
            container.remove(force=True)
    assert text.strip() == "", text
