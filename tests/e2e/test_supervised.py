"""The whole assistant under real supervisord, as a user runs it: ``nanoclaw init``,
``nanoclaw up``, a terminal chat answered by an agent in a real Podman container (the real
anthropic SDK in it, through the real credential proxy, to a local fake of the Messages
API), one worker restarted on its own, ``nanoclaw down``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from nanoclaw_common.paths import Layout
from tests.fakes.anthropic_api import FakeAnthropic
from tests.stack import PROGRAMS, Stack, echo_reply

pytestmark = pytest.mark.podman

CANARY_KEY = "sk-ant-api03-NANOCLAW-E2E-CANARY-" + "x9Z" * 10


@pytest.fixture
def fake_api() -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic(api_key=CANARY_KEY).start()
    yield fake
    fake.stop()


@pytest.fixture
def stack(fake_api: FakeAnthropic) -> Iterator[Stack]:
    stack = Stack.create(api_url=fake_api.url, api_key=CANARY_KEY, prefix="nc-e2e-")
    try:
        yield stack
    finally:
        stack.destroy()


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
