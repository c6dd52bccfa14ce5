"""Inside a real container started by ``Sandbox.wake`` (the real agent runner, scripted
model): what it can and cannot reach (DESIGN.md §7)."""

from __future__ import annotations

import errno
import hashlib
import json

import podman
import pytest

from nanoclaw_common.paths import Layout
from nanoclaw_common.runner_config import decode_runner_config
from nanoclaw_common.sandbox import Sandbox
from nanoclaw_common.sandbox.ownership import AGENT_UID
from nanoclaw_common.store import CentralStore, OutboundReader, rows
from nanoclaw_common.store.proxy_tokens import ProxyTokens
from tests.sandbox.conftest import CANARY_KEY, FakeProxy, SandboxFactory, SessionFactory, Tokens
from tests.waiting import wait_until

pytestmark = pytest.mark.podman


@pytest.fixture
def running(
    make_sandbox: SandboxFactory, make_session: SessionFactory, layout: Layout
) -> tuple[Sandbox, rows.Session]:
    box = make_sandbox(command=None)  # the image's own command: the agent runner
    session = make_session()
    assert box.wake(session)
    heartbeat = layout.session(session.agent_group_id, session.id).heartbeat
    wait_until(heartbeat.exists, timeout_s=30.0, what="the runner's first heartbeat")
    return box, session


def python(box: Sandbox, session: rows.Session, code: str) -> tuple[int, str, str]:
    return box.exec_in(session.id, ["python3", "-c", code])


def test_inbound_db_cannot_be_written(running: tuple[Sandbox, rows.Session]) -> None:
    box, session = running
    # Two walls: the file is root's (0644), and the whole session folder is a read-only mount.
    code, _, err = python(box, session, "open('/session/inbound.db', 'r+b')")
    assert code != 0 and "Permission denied" in err
    code, out, err = python(
        box,
        session,
        "for line in open('/proc/self/mountinfo'):\n"
        "    fields = line.split()\n"
        "    if fields[4] in ('/session', '/session/agent', '/workspace', '/'):\n"
        "        print(fields[4], fields[5].split(',')[0])\n",
    )
    assert code == 0, err
    assert sorted(out.splitlines()) == [
        "/ ro",
        "/session ro",
        "/session/agent rw",
        "/workspace rw",
    ]
    # Through SQLite, the way a runner bug would try it.
    code, _, err = python(
        box,
        session,
        "import apsw; c = apsw.Connection('/session/inbound.db');"
        " c.execute(\"UPDATE messages_in SET status = 'completed'\")",
    )
    assert code != 0 and "readonly" in err.lower()
    for path in ("/session/runner.json", "/session/new-file", "/session/inbox/x"):
        code, _, err = python(box, session, f"open({path!r}, 'w')")
        assert code != 0, path


def test_what_the_container_may_write(
    running: tuple[Sandbox, rows.Session], layout: Layout
) -> None:
    box, session = running
    code, _, err = python(
        box,
        session,
        "from nanoclaw_common.store import NewOutbound, OutboundStore;"
        "from nanoclaw_common.messages import SendText;"
        "s = OutboundStore('/session/agent/outbound.db');"
        "s.insert_message(NewOutbound(id='o-test', content=SendText(text='hi')));"
        "open('/workspace/AGENT.md', 'a').write('note\\n');"
        "open('/tmp/scratch', 'w').write('x')",
    )
    assert code == 0, err
    paths = layout.session(session.agent_group_id, session.id)
    reader = OutboundReader(paths.outbound_db)
    assert reader.get_message("o-test") is not None  # the host reads what the container wrote
    reader.close()
    code, _, err = python(box, session, "open('/usr/local/x', 'w')")
    assert code != 0 and "Read-only file system" in err


def test_there_is_no_network(running: tuple[Sandbox, rows.Session]) -> None:
    box, session = running
    code, out, err = python(
        box,
        session,
        "import os, socket\n"
        "print(sorted(os.listdir('/sys/class/net')))\n"
        "for host in ('1.1.1.1', '10.255.255.53'):\n"
        "    s = socket.socket(); s.settimeout(3)\n"
        "    try:\n"
        "        s.connect((host, 53)); print('CONNECTED', host)\n"
        "    except OSError as exc:\n"
        "        print('refused', exc.errno)\n"
        "try:\n"
        "    socket.getaddrinfo('pypi.org', 443); print('RESOLVED')\n"
        "except OSError:\n"
        "    print('no dns')\n",
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "['lo']"
    assert "CONNECTED" not in out and "RESOLVED" not in out
    assert lines[-1] == "no dns"


def test_the_process_is_not_root(running: tuple[Sandbox, rows.Session]) -> None:
    box, session = running
    code, out, err = python(
        box,
        session,
        "import os\n"
        "print(os.getuid(), os.geteuid(), os.getgid())\n"
        "for pid in ('1', 'self'):\n"
        "    lines = open(f'/proc/{pid}/status').read().splitlines()\n"
        "    status = dict(l.split(':\\t', 1) for l in lines if ':\\t' in l)\n"
        "    print(status['Uid'].split()[0], status['CapEff'], status['CapBnd'],"
        " status['NoNewPrivs'])\n",
    )
    assert code == 0, err
    ids, init, me = out.splitlines()
    assert ids == f"{AGENT_UID} {AGENT_UID} {AGENT_UID}"
    for line in (init, me):
        uid, cap_eff, cap_bnd, no_new_privs = line.split()
        assert uid == str(AGENT_UID)
        assert int(cap_eff, 16) == 0 and int(cap_bnd, 16) == 0
        assert no_new_privs == "1"
    # The runner itself (not only our exec) runs as the agent user.
    code, out, _ = python(
        box,
        session,
        "import os\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    args = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')\n"
        # The runner, not the init that started it (`podman-init -- <the runner's argv>`).
        "    if args[0] != b'/run/podman-init' and args[-3:-1] == [b'-m', b'agent_runner']:\n"
        "        print(os.stat(f'/proc/{pid}').st_uid)\n",
    )
    assert code == 0 and out.split() == [str(AGENT_UID)]


def test_unmounted_host_paths_cannot_be_read(
    running: tuple[Sandbox, rows.Session], layout: Layout, make_session: SessionFactory
) -> None:
    box, session = running
    other = make_session()  # another session's folder exists on the host
    other_paths = layout.session(other.agent_group_id, other.id)
    secret = layout.home / "nanoclaw.toml"
    secret.write_text(f'anthropic_api_key = "{CANARY_KEY}"\n')
    probes = [
        str(layout.central_db),
        str(secret),
        str(other_paths.inbound_db),
        str(layout.home),
        str(layout.podman_socket.parent),
        "/session/../" + other.id,
        f"/proc/1/root{layout.central_db}",
    ]
    code, out, err = python(
        box,
        session,
        "import json, os\n"
        f"for path in {probes!r}:\n"
        "    try:\n"
        "        open(path, 'rb').read(1); print('READ', path)\n"
        "    except OSError as exc:\n"
        "        print(exc.errno, path)\n"
        "print(json.dumps(sorted(os.listdir('/session'))))\n",
    )
    assert code == 0, err
    assert "READ" not in out
    assert json.loads(out.splitlines()[-1]) == ["agent", "inbound.db", "inbox", "runner.json"]


def test_no_process_environment_holds_the_token_or_the_key(
    running: tuple[Sandbox, rows.Session], tokens: Tokens, central: CentralStore
) -> None:
    """Every /proc/<pid>/environ a process in the container can read: its own (a ``podman
    exec`` gets the container's environment, as PID 1 does), the init's and nothing else (the
    runner is non-dumpable). None holds the run's proxy token or the API key."""
    box, session = running
    assert box.settings.anthropic_api_key == CANARY_KEY
    token = tokens.last
    # The token the runner was given is the one the proxy knows, for this run.
    found = ProxyTokens(central).find(hashlib.sha256(token.encode()).hexdigest())
    fresh = central.get_session(session.id)
    assert found is not None and fresh is not None
    assert (found.session_id, found.run_id) == (session.id, fresh.run_id)
    code, out, err = python(
        box,
        session,
        "import json, os\n"
        "seen = {}\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    cmd = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')\n"
        "    try:\n"
        "        env = open(f'/proc/{pid}/environ', 'rb').read()\n"
        "    except OSError as exc:\n"
        "        seen[pid] = [cmd[-3:-1] == [b'-m', b'agent_runner'], exc.errno]\n"
        "        continue\n"
        "    names = [v.split(b'=', 1)[0].decode() for v in env.split(b'\\0') if v]\n"
        f"    seen[pid] = [{token.encode()!r} in env, {CANARY_KEY.encode()!r} in env, names]\n"
        "print(os.getpid(), json.dumps(seen))\n",
    )
    assert code == 0, err
    me, listing = out.split(" ", 1)
    seen = json.loads(listing)
    readable = {pid: entry for pid, entry in seen.items() if len(entry) == 3}
    assert set(readable) == {"1", me}, seen  # the init and this exec, not the runner
    for pid, (has_token, has_key, names) in readable.items():
        assert not has_token and not has_key, (pid, names)
        assert "NANOCLAW_RUN_ID" in names and "PATH" in names  # a real environment, read
        assert not any(name.startswith("ANTHROPIC_") for name in names), names
        assert "NANOCLAW_PROXY_TOKEN" not in names
    [runner] = [entry for pid, entry in seen.items() if pid not in readable]
    assert runner == [True, errno.EACCES]  # the runner is there; its entries are closed
    # Podman's record of the container holds nothing secret either.
    with podman.PodmanClient(base_url=box.settings.podman_socket_url) as client:
        env = client.containers.get(box.container_name(session.id)).attrs["Config"]["Env"]
    assert not any(token in item or CANARY_KEY in item for item in env), env


def test_no_file_the_container_sees_holds_the_token_or_the_key(
    running: tuple[Sandbox, rows.Session], tokens: Tokens, central: CentralStore, layout: Layout
) -> None:
    """The runner took ``agent/.proxy-token`` and unlinked it: once it has started, the token
    is in no file the container can see (the root filesystem, the mounts, /tmp), and the API
    key never was. A control string the host put in the group folder proves the search does
    find what is there."""
    box, session = running
    token = tokens.last
    paths = layout.session(session.agent_group_id, session.id)
    assert [p.name for p in paths.agent_dir.iterdir() if "proxy-token" in p.name] == []
    control = b"NANOCLAW-CONTROL-" + CANARY_KEY[-8:].encode()[::-1]
    group = central.get_agent_group(session.agent_group_id)
    assert group is not None
    (layout.group_dir(group.folder) / "control.txt").write_bytes(control)
    code, out, err = python(
        box,
        session,
        "import os\n"
        "seen = key = tok = controls = 0\n"
        "for top, dirs, files in os.walk('/'):\n"
        "    if top == '/':\n"
        "        dirs[:] = [d for d in dirs if d not in ('proc', 'sys', 'dev')]\n"
        "    for name in files:\n"
        "        path = os.path.join(top, name)\n"
        "        try:\n"
        "            with open(path, 'rb', opener=lambda p, f: os.open(p, f | os.O_NONBLOCK))"
        " as handle:\n"
        "                data = handle.read()\n"
        f"            key += {CANARY_KEY.encode()!r} in data\n"
        f"            tok += {token.encode()!r} in data\n"
        f"            controls += {control!r} in data\n"
        "            seen += 1\n"
        "        except OSError:\n"
        "            pass\n"
        "print(seen, key, tok, controls)\n",
    )
    assert code == 0, err
    seen, key, tok, controls = map(int, out.split())
    assert seen > 1000 and controls == 1
    assert (key, tok) == (0, 0)
    assert CANARY_KEY not in (paths.root / "runner.json").read_text()
    assert token not in (paths.root / "runner.json").read_text()


def test_limits_apply(running: tuple[Sandbox, rows.Session]) -> None:
    box, session = running
    code, out, err = python(
        box,
        session,
        "import os, resource\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[1])\n"
        "for path in ('/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory/memory.limit_in_bytes',"
        " '/sys/fs/cgroup/pids.max', '/sys/fs/cgroup/pids/pids.max'):\n"
        "    if os.path.exists(path): print(path, open(path).read().strip())\n",
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "4096"
    limits = dict(line.split() for line in lines[1:])
    memory = limits.get("/sys/fs/cgroup/memory.max") or limits.get(
        "/sys/fs/cgroup/memory/memory.limit_in_bytes"
    )
    pids = limits.get("/sys/fs/cgroup/pids.max") or limits.get("/sys/fs/cgroup/pids/pids.max")
    assert memory == str(256 * 1024 * 1024)
    assert pids == "128"


def test_runner_json_and_run_id(
    running: tuple[Sandbox, rows.Session], central: CentralStore
) -> None:
    box, session = running
    code, out, err = python(
        box,
        session,
        "import os; print(os.environ['NANOCLAW_RUN_ID']);"
        " print(open('/session/runner.json').read())",
    )
    assert code == 0, err
    run_id, config_json = out.split("\n", 1)
    fresh = central.get_session(session.id)
    assert fresh is not None and fresh.run_id == run_id and fresh.container_status == "starting"
    config = decode_runner_config(config_json)
    assert (config.session_id, config.provider) == (session.id, "scripted")
    [info] = box.running()
    assert (info.session_id, info.run_id, info.agent_group_id) == (
        session.id,
        run_id,
        session.agent_group_id,
    )


def test_the_proxy_socket_is_the_way_out(
    make_sandbox: SandboxFactory, make_session: SessionFactory, fake_proxy: FakeProxy
) -> None:
    """An anthropic-provider session gets run/proxy/ (the folder) at /run/nanoclaw/, and can
    connect to it with no network at all."""
    box = make_sandbox()
    session = make_session(provider="anthropic")
    assert box.wake(session)
    code, _, err = python(
        box,
        session,
        "import socket; s = socket.socket(socket.AF_UNIX);"
        " s.connect('/run/nanoclaw/proxy.sock'); s.sendall(b'hello proxy')",
    )
    assert code == 0, err
    assert fake_proxy.accept_one() == b"hello proxy"
