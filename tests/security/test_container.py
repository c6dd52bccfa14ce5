"""Container confinement (issue 8 §2, §3; docs/security.md, "Container confinement"): from
inside the real container of the real stack, the agent plants code on the runner's import
path, makes FIFOs and device nodes where the host reads, tries user namespaces and the
kernel's wider surface, and looks for setuid files and device nodes that mean something.
Each test asserts the refusal the agent gets, that the assistant still answers, and that no
program was restarted. The refusals happen in the kernel and the interpreter, so no host
program sees them; what reports them is ``nanoclaw doctor`` (the last test), which the
operator runs."""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.sandbox.test_confinement import PRELUDE
from tests.sandbox.test_runner_import_path import plants, user_site_plants
from tests.security.conftest import AGENT_PYTHON, STACK_POLL_S, Agent, HostileStack
from tests.stack import echo_reply
from tests.waiting import wait_until

pytestmark = pytest.mark.podman

RESUMED = "agent runner resumed after shedding the model SDK"
PYTHONS = ("3.11", "3.12", "3.13")


def group_dir(stack: HostileStack) -> Path:
    return stack.layout.group_dir(stack.group.folder)


def markers(stack: HostileStack) -> dict[str, str]:
    """What planted modules recorded (tests/sandbox/test_runner_import_path.py)."""
    folder = group_dir(stack) / ".planted"
    if not folder.exists():
        return {}
    return {entry.name: entry.read_text() for entry in folder.iterdir()}


@pytest.fixture
def planted(hostile: HostileStack) -> Iterator[HostileStack]:
    """After the test, what was planted leaves the folders that carry over to the module's
    next tests (the agent's own commands there run the image's Python from /workspace)."""
    yield hostile
    paths = hostile.layout.session(hostile.session.agent_group_id, hostile.session.id)
    for root in (group_dir(hostile), paths.agent_dir):
        for name in (*PLANTED_NAMES, ".planted", ".local"):
            target = root / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()


PLANTED_NAMES = {
    Path(path).relative_to("/workspace").parts[0] for path in plants("/workspace", "x")
}


def plant(agent: Agent, plan: dict[str, str]) -> None:
    """The agent writes every planted file itself (its own Python, isolated so that the
    planting does not run what it plants)."""
    code = (
        "import json, os\n"
        f"for path, content in json.loads({json.dumps(plan)!r}).items():\n"
        "    os.makedirs(os.path.dirname(path), exist_ok=True)\n"
        "    with open(path, 'w') as handle:\n"
        "        handle.write(content)\n"
        "print(len(os.listdir('/workspace')))\n"
    )
    agent.exec([AGENT_PYTHON, "-I", "-c", code])


def runner_argv(agent: Agent) -> list[str]:
    done = agent.exec(
        [
            AGENT_PYTHON,
            "-I",
            "-c",
            "import os\n"
            "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
            "    args = open(f'/proc/{pid}/cmdline', 'rb').read().decode().split('\\0')\n"
            "    if args[0] != '/run/podman-init' and args[-3:-1] == ['-m', 'agent_runner']:\n"
            "        print(' '.join(args[:-1]))\n",
        ]
    )
    (line,) = done.stdout.strip().splitlines()
    return line.split()


def probe(agent: Agent, code: str) -> dict[str, Any]:
    """``code`` after the sandbox tests' PRELUDE (``call``, ``libc_call``, ``outcome``,
    ``command``), filling ``found``; run by the agent's Python."""
    done = agent.py(PRELUDE + code + "\nprint(json.dumps(found))\n")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_planted_runner_code_is_not_imported_when_the_runner_starts(planted: HostileStack) -> None:
    """Code planted in the group folder (shared by every session of the group) and in
    ``agent/`` (kept from run to run) waits for the next start of the runner."""
    stack = planted
    pids = stack.pids()
    agent = stack.agent()
    plan = {**plants("/workspace", "workspace"), **plants("/session/agent", "agent")}
    for python in PYTHONS:
        plan.update(user_site_plants("/workspace", python, "workspace-userbase"))
    plant(agent, plan)
    stack.stop_agent()

    agent = stack.agent()  # a fresh run, everything planted in place
    stack.fake_api.reply(echo_reply)
    assert stack.chat("are you yourself?") == ["echo: are you yourself?"]
    assert markers(stack) == {}
    assert runner_argv(agent)[:2] == [AGENT_PYTHON, "-I"]
    stack.assert_up(pids)


def test_planted_runner_code_is_not_imported_after_the_reexec(
    planted: HostileStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The idle runner re-execs itself to shed the model SDK (shed.py); what the agent
    planted during the run, in every folder it can write and in ``~/.local`` (HOME is
    /tmp), must not ride into the new process."""
    stack = planted
    monkeypatch.setattr(
        stack, "settings", msgspec.structs.replace(stack.settings, runner_shed_after_s=1.0)
    )
    pids = stack.pids()
    agent = stack.agent()
    plan = {
        **plants("/workspace", "workspace"),
        **plants("/session/agent", "agent"),
        **plants("/tmp", "tmp"),
    }
    for python in PYTHONS:
        plan.update(user_site_plants("/tmp", python, "home"))
    plant(agent, plan)
    stack.fake_api.reply(echo_reply, echo_reply)
    assert stack.chat("load the model SDK") == ["echo: load the model SDK"]

    def reexecuted() -> bool:
        return RESUMED in stack.podman("logs", agent.container).stderr

    wait_until(reexecuted, timeout_s=60, what="the runner's re-exec", poll_s=STACK_POLL_S)
    assert stack.chat("still yourself?") == ["echo: still yourself?"]
    assert markers(stack) == {}
    assert "-I" in runner_argv(agent)
    stack.assert_up(pids)


def test_no_fifo_or_device_node_where_the_host_reads(hostile: HostileStack) -> None:
    """A FIFO where a host program opens files (the DB journal, the outbox, the heartbeat,
    the group's memory) would block a careless reader for good; device nodes are refused
    whatever the capabilities."""
    stack = hostile
    pids = stack.pids()
    agent = stack.agent()
    targets = [
        "/session/agent/outbound.db-journal",
        "/session/agent/heartbeat.new",
        "/session/agent/outbox/planted",
        "/workspace/AGENT.md.new",
        "/tmp/pipe",
    ]
    found = probe(
        agent,
        "os.makedirs('/session/agent/outbox', exist_ok=True)\n"
        f"for path in {targets!r}:\n"
        "    found['fifo ' + path] = outcome(lambda: os.mkfifo(path))\n"
        "    found['char ' + path] = outcome(lambda: os.mknod(path + 'c', 0o666 | 0o020000,"
        " os.makedev(1, 3)))\n"
        "    found['block ' + path] = outcome(lambda: os.mknod(path + 'b', 0o666 | 0o060000,"
        " os.makedev(7, 0)))\n"
        "found['mkfifo'] = command('mkfifo', '/session/agent/outbox/pipe')\n",
    )
    for path in targets:
        for kind in ("fifo", "char", "block"):
            assert found[f"{kind} {path}"] == "EPERM", (kind, path, found)
    assert found["mkfifo"][0] != 0 and "Operation not permitted" in found["mkfifo"][1]
    stack.fake_api.reply(echo_reply)
    assert stack.chat("nothing blocks") == ["echo: nothing blocks"]
    stack.assert_up(pids)


def test_no_user_namespace(hostile: HostileStack) -> None:
    """`unshare -Ur` would make the agent root of a namespace of its own, with every
    capability there and the kernel code they reach (mounts, netfilter, filesystems)."""
    stack = hostile
    pids = stack.pids()
    agent = stack.agent()
    found = probe(
        agent,
        "for flags in (['-Ur'], ['-U'], ['-Urm'], ['-Urn']):\n"
        "    found['unshare ' + ' '.join(flags)] = command("
        "'unshare', *flags, 'sh', '-c', 'id -u; mount -t tmpfs none /workspace')\n"
        "found['unshare(NEWUSER)'] = libc_call('unshare', 0x10000000)\n"
        "pid = libc.syscall(ctypes.c_long(NUMBERS['clone']), ctypes.c_long(0x10000000 | 17),"
        " *[ctypes.c_long(0)] * 4)\n"
        "if pid == 0:\n"
        "    os._exit(0)\n"
        "found['clone(NEWUSER)'] = 'ok' if pid > 0 else name_of(ctypes.get_errno())\n"
        "found['clone3'] = call('clone3', 0, 0)\n"
        "found['setns'] = call('setns', 0, 0x10000000)\n",
    )
    for flags in ("-Ur", "-U", "-Urm", "-Urn"):
        code, text = found[f"unshare {flags}"]
        assert code != 0 and "unshare failed: Operation not permitted" in text, (flags, found)
    assert found["unshare(NEWUSER)"] == "EPERM" and found["clone(NEWUSER)"] == "EPERM"
    assert found["clone3"] == "ENOSYS" and found["setns"] == "EPERM"
    # Nothing got mounted over the group folder.
    assert (
        agent.sh("grep -c ' /workspace tmpfs' /proc/self/mounts", check=False).stdout.strip() == "0"
    )
    stack.fake_api.reply(echo_reply)
    assert stack.chat("still confined") == ["echo: still confined"]
    stack.assert_up(pids)


def test_the_kernel_surface_no_agent_needs_is_refused(hostile: HostileStack) -> None:
    """Keyrings (every agent container has the same uid, so the user keyring would be a
    channel between sessions), other processes' memory (the runner's above all), io_uring,
    BPF, perf, userfaultfd, a socket to the virtual machine's host (AF_VSOCK ignores the
    network namespace), and on x86_64 the 32-bit system call entry."""
    stack = hostile
    pids = stack.pids()
    agent = stack.agent()
    found = probe(
        agent,
        "KEY_SPEC_USER_KEYRING = -4\n"
        "r = libc.syscall(ctypes.c_long(NUMBERS['add_key']), b'user', b'left-for-another',"
        " b'secret', ctypes.c_long(6), ctypes.c_long(KEY_SPEC_USER_KEYRING))\n"
        "found['add_key'] = 'ok' if r >= 0 else name_of(ctypes.get_errno())\n"
        "found['keyctl'] = call('keyctl', 0, KEY_SPEC_USER_KEYRING)\n"  # GET_KEYRING_ID
        "runner = [p for p in os.listdir('/proc') if p.isdigit() and open(f'/proc/{p}/cmdline',"
        " 'rb').read().split(b'\\0')[-3:-1] == [b'-m', b'agent_runner']"
        " and not open(f'/proc/{p}/cmdline', 'rb').read().startswith(b'/run/podman-init')]\n"
        "found['runners'] = len(runner)\n"
        "target = int(runner[0])\n"
        "found['ptrace attach'] = libc_call('ptrace', 16, target, 0, 0)\n"  # PTRACE_ATTACH
        "found['ptrace traceme'] = libc_call('ptrace', 0, 0, 0, 0)\n"
        "found['process_vm_readv'] = call('process_vm_readv', target, 0, 0, 0, 0, 0)\n"
        "found['io_uring_setup'] = call('io_uring_setup', 1, 0)\n"
        "found['bpf'] = call('bpf', 0, 0, 0)\n"
        "found['perf_event_open'] = call('perf_event_open', 0, 0, -1, -1, 0)\n"
        "found['userfaultfd'] = call('userfaultfd', 0)\n"
        "found['mount'] = libc_call('mount', b'none', b'/workspace', b'tmpfs', 0, None)\n"
        "found['vsock'] = outcome(lambda: socket.socket(40, socket.SOCK_STREAM).close())\n",
    )
    assert found["runners"] == 1
    for name in (
        "add_key", "keyctl", "ptrace attach", "ptrace traceme", "process_vm_readv", "bpf",
        "perf_event_open", "userfaultfd", "mount",
    ):  # fmt: skip
        assert found[name] == "EPERM", (name, found)
    assert found["io_uring_setup"] == "ENOSYS" and found["vsock"] == "ENOSYS"
    if platform.machine() == "x86_64":
        i386 = (
            "import ctypes, mmap\n"
            "page = mmap.mmap(-1, mmap.PAGESIZE, prot=7)\n"
            "page.write(bytes([0xB8, 0x14, 0, 0, 0, 0xCD, 0x80, 0xC3]))\n"  # i386 getpid
            "address = ctypes.addressof(ctypes.c_char.from_buffer(page))\n"
            "print('i386', ctypes.CFUNCTYPE(ctypes.c_int)(address)(), flush=True)\n"
        )
        done = agent.sh(f"{AGENT_PYTHON} -c {shlex.quote(i386)}; echo exit=$?")
        assert "i386" not in done.stdout and done.stdout.strip().endswith("exit=159")  # SIGSYS
    stack.fake_api.reply(echo_reply)
    assert stack.chat("the runner is fine") == ["echo: the runner is fine"]
    stack.assert_up(pids)


def test_setuid_files_and_device_nodes_mean_nothing(hostile: HostileStack) -> None:
    """No setuid or setgid file anywhere in the container, and a device node reaching it
    through a host folder (here one the host made in the session's inbox, as an allowlisted
    extra folder could bring one) cannot be opened: every bind mount is nosuid,nodev."""
    stack = hostile
    pids = stack.pids()
    paths = stack.layout.session(stack.session.agent_group_id, stack.session.id)
    node = paths.inbox / "null-device"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    try:
        agent = stack.agent()
        setid = agent.sh(
            "find / -xdev -perm /6000 -type f 2>/dev/null;"
            " for m in /session /session/agent /workspace /run/nanoclaw /tmp; do"
            "  find $m -xdev -perm /6000 -type f 2>/dev/null; done",
            check=False,
        )
        assert setid.stdout.strip() == ""
        found = probe(
            agent,
            "found['open'] = outcome(lambda: open('/session/inbox/null-device', 'rb').close())\n"
            "lines = open('/proc/self/mountinfo').read().splitlines()\n"
            "found['mounts'] = {f[4]: f[5] for f in (line.split() for line in lines)}\n",
        )
        assert found["open"] == "EACCES", found
        for target in ("/session", "/session/agent", "/workspace", "/run/nanoclaw"):
            assert {"nosuid", "nodev"} <= set(found["mounts"][target].split(",")), found
    finally:
        node.unlink()
    stack.fake_api.reply(echo_reply)
    assert stack.chat("no device") == ["echo: no device"]
    stack.assert_up(pids)


def test_the_doctor_reports_the_confinement_in_force(hostile: HostileStack) -> None:
    """What reports all of the above: the doctor's probe container goes through the stack's
    own Podman service, started as wake starts one."""
    stack = hostile
    pids = stack.pids()
    done = stack.base.nanoclaw("doctor", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["api_answering"] is True and report["ok"] is True
    confinement = report["confinement"]
    assert confinement["in_force"] is True, confinement
    assert all(check["ok"] for check in confinement["checks"])
    assert len(confinement["checks"]) == 6
    stack.assert_up(pids)
