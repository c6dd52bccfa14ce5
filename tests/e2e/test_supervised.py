"""The whole assistant under real supervisord, as a user runs it: ``nanoclaw init``,
``nanoclaw up``, a terminal chat answered by an agent in a real Podman container (the real
anthropic SDK in it, through the real credential proxy, to a local fake of the Messages
API), one worker restarted on its own, ``nanoclaw down``."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nanoclaw_common.paths import Layout
from nanoclaw_common.sandbox.spec import LABEL_INSTALL
from tests.environ import clean_environ
from tests.fakes.anthropic_api import FakeAnthropic, text

pytestmark = [pytest.mark.podman, pytest.mark.slow]

CHECKOUT = Path(__file__).resolve().parents[2]
NANOCLAW = str(Path(sys.executable).with_name("nanoclaw"))
CANARY_KEY = "sk-ant-api03-NANOCLAW-E2E-CANARY-" + "x9Z" * 10
PROGRAMS = {"podman-api", "proxy", "router", "delivery", "sweeper"}


def echo_reply(body: dict[str, Any]) -> dict[str, Any]:
    """Answer the newest message to whoever sent it: the formatter names the origin chat in
    ``<message from="...">``, which is also its destination name."""
    prompt = json.dumps(body["messages"][-1]["content"])
    origin = re.findall(r'from=\\"([^"\\]+)\\"', prompt)[-1]
    said = re.findall(r">([^<>]*)</message>", prompt)[-1]
    return text(f'<message to="{origin}">echo: {said.strip()}</message>')


@dataclass
class Stack:
    home: Path
    env: dict[str, str]
    install: str

    def nanoclaw(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [NANOCLAW, *args],
            env=self.env,
            cwd=self.home.parent,  # not the checkout: `up` must find its config anyway
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def pid(self, program: str) -> int:
        done = self.nanoclaw("ctl", "pid", program)
        return int(done.stdout.strip())

    def containers(self) -> list[str]:
        done = subprocess.run(
            ["podman", "ps", "-a", "-q", "--filter", f"label={LABEL_INSTALL}={self.install}"],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.split()


@pytest.fixture
def fake_api() -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic(api_key=CANARY_KEY).start()
    yield fake
    fake.stop()


@pytest.fixture
def stack(fake_api: FakeAnthropic) -> Iterator[Stack]:
    # A short folder: supervisord's and the chat's Unix sockets live under it.
    root = Path(tempfile.mkdtemp(prefix="nc-e2e-", dir="/tmp"))
    install = "e2e" + secrets.token_hex(4)
    env = clean_environ("ANTHROPIC_")
    env.update(
        NANOCLAW_HOME=str(root / "data"),
        NANOCLAW_INSTALL_ID=install,
        ANTHROPIC_API_KEY=CANARY_KEY,
        ANTHROPIC_BASE_URL=fake_api.url,
    )
    stack = Stack(root / "data", env, install)
    try:
        yield stack
    finally:
        stack.nanoclaw("down", timeout=180)
        for container in stack.containers():
            subprocess.run(["podman", "rm", "-f", container], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.timeout(600)
def test_the_assistant_runs_under_supervisord(stack: Stack, fake_api: FakeAnthropic) -> None:
    assert stack.nanoclaw("init").returncode == 0
    started = stack.nanoclaw("--json", "up", "--timeout", "120", timeout=180)
    assert started.returncode == 0, started.stderr + started.stdout
    assert json.loads(started.stdout) == dict.fromkeys(PROGRAMS, "RUNNING")
    assert "already running" in stack.nanoclaw("up").stdout

    # A message from the terminal: the router stores it and wakes a container, the agent
    # asks the model through the proxy, delivery brings the answer back.
    fake_api.reply(echo_reply)
    chat = stack.nanoclaw("chat", "--message", "hello there", "--timeout", "120", timeout=180)
    assert chat.returncode == 0, chat.stderr + chat.stdout
    assert "echo: hello there" in chat.stdout
    assert len(stack.containers()) == 1
    [request] = fake_api.message_requests()
    assert request.headers["x-api-key"] == CANARY_KEY  # the proxy put the real key in

    # One worker restarted on its own: the others keep running, the next turn works.
    router, sweeper = stack.pid("router"), stack.pid("sweeper")
    delivery = stack.pid("delivery")
    assert stack.nanoclaw("ctl", "restart", "delivery").returncode == 0
    assert stack.pid("delivery") != delivery
    assert (stack.pid("router"), stack.pid("sweeper")) == (router, sweeper)
    fake_api.reply(echo_reply)
    chat = stack.nanoclaw("chat", "--message", "and again", "--timeout", "120", timeout=180)
    assert chat.returncode == 0, chat.stderr + chat.stdout
    assert "echo: and again" in chat.stdout

    # Each program logs to its own file, and no log holds the key.
    logs = stack.home / "logs"
    for program in PROGRAMS:
        assert (logs / f"{program}.log").is_file()
    assert "router running" in (logs / "router.log").read_text()
    for log_file in logs.iterdir():
        assert CANARY_KEY not in log_file.read_text(errors="replace"), log_file

    # Down: the workers, the agent's container and supervisord itself are gone.
    supervisord = int(Layout(stack.home).supervisor_pid.read_text())
    stopped = stack.nanoclaw("down", timeout=180)
    assert stopped.returncode == 0, stopped.stderr + stopped.stdout
    assert "stopped" in stopped.stdout
    assert stack.containers() == []
    assert not Path(f"/proc/{supervisord}").exists()
    assert "not running" in stack.nanoclaw("down").stdout
