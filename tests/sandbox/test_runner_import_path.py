"""Nothing the agent can write is on the runner's import path, at its start or after its
idle re-exec (docs/security.md, "Container confinement"), in a real container started by
``Sandbox.wake``.

Modules are planted wherever the agent can write: the group folder (``/workspace``, once the
runner's working folder), ``/session/agent``, ``/tmp`` (``HOME``, so ``~/.local`` is the user
site-packages), shadows of the stdlib and of the runner's own packages,
``sitecustomize``/``usercustomize`` and a ``.pth`` file, and ``PYTHON*`` variables pointing
at them. Each planted module, if ever imported, leaves a marker in ``/workspace/.planted``.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from nanoclaw_common.paths import Layout
from nanoclaw_common.sandbox import Sandbox, spec
from nanoclaw_common.settings import Settings
from nanoclaw_common.store import CentralStore, rows
from tests.fakes.anthropic_api import FakeAnthropic, text, tool_use
from tests.integration.agents.harness import start_proxy
from tests.sandbox.conftest import CANARY_KEY, SandboxFactory, SessionFactory
from tests.sandbox.test_runner_container import acked, container_log, send
from tests.waiting import wait_until

pytestmark = pytest.mark.podman

MARKERS = "/workspace/.planted"
RESUMED = "agent runner resumed after shedding the model SDK"


def planted_module(label: str, *, shadow: bool = True) -> str:
    """A module that records being imported (with the importing process's command line).
    As a ``shadow`` (a package named like a real module) it then puts the real module in its
    place, so that a runner fooled by it still runs and the marker is the only sign."""
    # os-level calls only: a shadow of `encodings` runs before `open` exists.
    record = (
        "import os, sys\n"
        f"os.makedirs({MARKERS!r}, exist_ok=True)\n"
        "_in = os.open('/proc/self/cmdline', os.O_RDONLY)\n"
        f"_out = os.open({MARKERS!r} + '/' + {label!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND)\n"
        "os.write(_out, os.read(_in, 4096).replace(b'\\0', b' ') + b'\\n')\n"
        "os.close(_in)\n"
        "os.close(_out)\n"
    )
    if not shadow:
        return record
    return record + (
        "import importlib\n"
        "_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))\n"
        "_saved = sys.path[:]\n"
        "sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') != _root]\n"
        "del sys.modules[__name__]\n"
        "try:\n"
        "    sys.modules[__name__] = importlib.import_module(__name__)\n"
        "finally:\n"
        "    sys.path[:] = _saved\n"
    )


def plants(root: str, label: str) -> dict[str, str]:
    """Path (under the container folder ``root``) -> content: every kind of planted code."""
    shadowed = ("agent_runner", "nanoclaw_common", "json", "encodings", "loguru", "msgspec")
    return {
        **{f"{root}/{name}/__init__.py": planted_module(f"{label}-{name}") for name in shadowed},
        f"{root}/sitecustomize.py": planted_module(f"{label}-sitecustomize", shadow=False),
        f"{root}/usercustomize.py": planted_module(f"{label}-usercustomize", shadow=False),
    }


def user_site_plants(home: str, version: str, label: str) -> dict[str, str]:
    """The user site-packages of ``home`` (``~/.local/lib/pythonX.Y/site-packages``)."""
    site = f"{home}/.local/lib/python{version}/site-packages"
    return {
        f"{site}/usercustomize.py": planted_module(f"{label}-usercustomize", shadow=False),
        f"{site}/planted.pth": f"import os; exec(open({site + '/pth_payload.py'!r}).read())\n",
        f"{site}/pth_payload.py": planted_module(f"{label}-pth", shadow=False),
        f"{site}/agent_runner/__init__.py": planted_module(f"{label}-agent_runner"),
    }


def write_on_host(plan: dict[str, str], container_root: str, host_root: Path) -> None:
    for path, content in plan.items():
        target = host_root / Path(path).relative_to(container_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)


def markers(layout: Layout, central: CentralStore, session: rows.Session) -> dict[str, str]:
    group = central.get_agent_group(session.agent_group_id)
    assert group is not None
    folder = layout.group_dir(group.folder) / ".planted"
    if not folder.exists():
        return {}
    return {entry.name: entry.read_text() for entry in folder.iterdir()}


def runner_command(box: Sandbox, session: rows.Session) -> list[str]:
    # -I: this probe itself must not import what was planted.
    code, out, err = box.exec_in(
        session.id,
        [
            "python3",
            "-I",
            "-c",
            "import os\n"
            "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
            "    args = open(f'/proc/{pid}/cmdline', 'rb').read().decode().split('\\0')\n"
            "    if args[0] != '/run/podman-init' and args[-3:-1] == ['-m', 'agent_runner']:\n"
            "        print(' '.join(args[:-1]))\n",
        ],
    )
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    return lines[0].split()


@pytest.fixture
def fake_api(home: Path, central: CentralStore) -> Iterator[FakeAnthropic]:
    api = FakeAnthropic(api_key=CANARY_KEY).start()
    proxy = start_proxy(home, CANARY_KEY, api.url)
    yield api
    proxy.stop()
    api.stop()


def test_nothing_planted_is_imported_when_the_runner_starts(
    make_sandbox: SandboxFactory,
    make_session: SessionFactory,
    layout: Layout,
    central: CentralStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    box = make_sandbox(command=None)  # the image's own command: the agent runner
    session = make_session()  # the scripted model: the runner answers without the SDK
    group = central.get_agent_group(session.agent_group_id)
    assert group is not None
    paths = layout.session(session.agent_group_id, session.id)
    # Left by an earlier session of the group (every session of a group shares /workspace)
    # or an earlier run of this one (agent/ persists).
    write_on_host(plants("/workspace", "workspace"), "/workspace", layout.group_dir(group.folder))
    write_on_host(plants("/session/agent", "agent"), "/session/agent", paths.agent_dir)
    for python in ("3.11", "3.12", "3.13"):
        write_on_host(
            user_site_plants("/workspace", python, "userbase"),
            "/workspace",
            layout.group_dir(group.folder),
        )
    # And PYTHON* variables naming them, as if they had reached the container's environment.
    base_env = spec.run_env

    def hostile_env(run_id: str, tz: str, *, test_faults: bool = False) -> dict[str, str]:
        return {
            **base_env(run_id, tz, test_faults=test_faults),
            "PYTHONPATH": "/workspace:/session/agent",
            "PYTHONUSERBASE": "/workspace/.local",
            "PYTHONSTARTUP": "/workspace/sitecustomize.py",
        }

    monkeypatch.setattr(spec, "run_env", hostile_env)
    assert box.wake(session)
    try:
        wait_until(paths.heartbeat.exists, timeout_s=30, what="the runner's first heartbeat")
        message_id = send(layout, session, central, "hello")
        wait_until(
            lambda: acked(layout, session, message_id) == "completed", timeout_s=60, what="the ack"
        )
    except AssertionError as exc:
        found = markers(layout, central, session)
        raise AssertionError(f"{exc}\nmarkers: {found}\n{container_log(box, session)}") from None
    assert markers(layout, central, session) == {}, container_log(box, session)
    command = runner_command(box, session)
    assert command[:2] == ["/opt/venv/bin/python", "-I"], command


def test_nothing_planted_is_imported_after_the_reexec(
    make_sandbox: SandboxFactory,
    make_session: SessionFactory,
    box_settings: Settings,
    central: CentralStore,
    fake_api: FakeAnthropic,
) -> None:
    """The agent plants everything during the run; the idle runner then re-execs itself
    (shed.py), and the fresh process must import none of it."""
    box = make_sandbox(
        command=None, settings=msgspec.structs.replace(box_settings, runner_shed_after_s=1.0)
    )
    layout = box.layout
    session = make_session(provider="anthropic")
    plan = {
        **plants("/workspace", "workspace"),
        **plants("/session/agent", "agent"),
        **plants("/tmp", "tmp"),
    }
    for python in ("3.11", "3.12", "3.13"):
        plan.update(user_site_plants("/tmp", python, "home"))  # HOME=/tmp
    planter = (
        "import json, os, sys\n"
        f"for path, content in json.loads({json.dumps(plan)!r}).items():\n"
        "    os.makedirs(os.path.dirname(path), exist_ok=True)\n"
        "    open(path, 'w').write(content)\n"
        "print('planted', len(sys.argv))\n"
    )
    seen: dict[str, Any] = {}

    def record(body: dict[str, Any]) -> dict[str, Any]:
        seen["planted"] = body["messages"][-1]["content"][0]["content"]
        return text("<internal>planted</internal>")

    fake_api.reply(
        # -I: the planting command itself must not run what it plants.
        tool_use("bash", {"command": f"python3 -I -c {shlex.quote(planter)}"}),
        record,
        tool_use("send_message", {"text": "still here"}),
        text("<internal>answered</internal>"),
    )
    assert box.wake(session)
    first = send(layout, session, central, "plant it all")
    wait_until(
        lambda: acked(layout, session, first) == "completed", timeout_s=60, what="the first ack"
    )
    assert seen["planted"] == "planted 1", seen
    wait_until(lambda: RESUMED in container_log(box, session), timeout_s=60, what="the re-exec")
    second = send(layout, session, central, "are you there?")
    try:
        wait_until(
            lambda: acked(layout, session, second) == "completed",
            timeout_s=60,
            what="the second ack",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{container_log(box, session)}") from None
    assert markers(layout, central, session) == {}, container_log(box, session)
    command = runner_command(box, session)
    assert "-I" in command, command
    assert len(fake_api.message_requests()) == 4
