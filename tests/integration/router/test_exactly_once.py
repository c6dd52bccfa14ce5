"""Exactly-once ingest with the router as a real process: SIGKILL between the commit and the
platform's acknowledgement, the platform re-sends, and there is still one row, one wake and
one reply — written by the stand-in agent and sent back to the platform by the real
delivery process.

The crash is the router's test-only fault hook (``NANOCLAW_TEST_CRASH``): ``after_commit``
dies before waking, ``before_ack`` after waking; both before the acknowledgement. The agent
serves only woken sessions and stops after answering, so after ``before_ack`` the re-send
meets a row that was already answered in a stopped session: a wake then would be spurious.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nanoclaw_common.store import InboundReader, OutboundReader
from nanoclaw_common.store.rows import Delivery as DeliveryRow
from nanoclaw_common.store.rows import OutboundRow
from tests.fakes.slack_api import (
    APP_TOKEN,
    BOT_TOKEN,
    SIGNING_SECRET,
    FakeSlack,
    event_body,
    post_event,
)
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.webhook_client import nanoclaw_headers, post
from tests.integration.router.conftest import REPO, Delivery, RouterProcess, World, free_port
from tests.integration.router.standin_agent import StandinAgent
from tests.waiting import wait_until

CRASH_POINTS = ["after_commit", "before_ack"]
NANOCLAW = str(Path(sys.executable).parent / "nanoclaw")
WEBHOOK_SECRET = "ci-webhook-secret-42"


def telegram_env(fake: FakeTelegram) -> dict[str, str]:
    return {"TELEGRAM_BOT_TOKEN": fake.token, "TELEGRAM_API_BASE_URL": fake.base_url}


def slack_env(fake: FakeSlack) -> dict[str, str]:
    return {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_APP_TOKEN": APP_TOKEN,
        "SLACK_API_BASE_URL": fake.api_url,
    }


def replies(world: World) -> list[tuple[OutboundRow, DeliveryRow | None]]:
    """Every row the agent wrote, with its delivery state."""
    found = []
    for session in world.sessions():
        root = world.home / "sessions" / session.agent_group_id / session.id
        if not (root / "agent" / "outbound.db").exists():
            continue
        outbound = OutboundReader(root / "agent" / "outbound.db")
        inbound = InboundReader(root / "inbound.db")
        try:
            found += [(r, inbound.get_delivery(r.id)) for r in outbound.messages_after(0)]
        finally:
            outbound.close()
            inbound.close()
    return found


class Agent:
    """The stand-in agent and the real delivery process, for one test."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.agent = StandinAgent(home, woken_only=True).start()
        self.delivery = Delivery(home, env)

    def stop(self) -> None:
        self.agent.stop()
        code = self.delivery.stop()
        assert code == 0, self.delivery.log()


@pytest.fixture
def agent_factory(short_home: Path) -> Iterator[Callable[[dict[str, str]], Agent]]:
    started: list[Agent] = []

    def start(env: dict[str, str]) -> Agent:
        started.append(Agent(short_home, env))
        return started[-1]

    yield start
    for item in started:
        item.agent.stop()
        item.delivery.kill()


def after_the_crash(point: str, world: World, agent: Agent) -> None:
    """What the crash left: the row, and a wake only if it came after the wake. A woken
    session is answered (and its container stopped) before the router comes back."""
    assert len(world.all_rows()) == 1
    if point == "before_ack":
        assert len(world.wakes()) == 1
        wait_until(
            lambda: agent.agent.answered, timeout_s=15.0, what="the answer to the woken session"
        )
        wait_until(
            lambda: [s.container_status for s in world.sessions()] == ["stopped"],
            timeout_s=15.0,
            what="the run to end",
        )
    else:
        assert world.wakes() == []
        assert agent.agent.answered == []


def exactly_one_of_everything(world: World, agent: Agent, router: RouterProcess) -> None:
    """One message row, one wake by the router, one answer to it and one reply row."""
    # Delivery's own notes to the agent ("could not be delivered") are not messages.
    [row] = [r for r in world.all_rows() if not r.id.startswith("delivery-")]
    assert len(world.wakes()) == 1, router.log()
    assert agent.agent.answered.count(row.id) == 1
    assert [reply.in_reply_to for reply, _ in replies(world)].count(row.id) == 1


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_telegram_update_survives_a_crash_before_its_offset_is_confirmed(
    point: str,
    world: World,
    router: RouterProcess,
    telegram: FakeTelegram,
    agent_factory: Callable[[dict[str, str]], Agent],
) -> None:
    group = world.group()
    world.wire("telegram", "-100", group)
    telegram.push_message(-100, "deploy the thing")
    router.env.update(telegram_env(telegram))
    agent = agent_factory(router.env)
    router.start(NANOCLAW_TEST_CRASH=point)
    assert router.wait_exit() == -9, router.log()
    # Committed, but Telegram still holds the update: its offset was never confirmed.
    assert telegram.pending_updates() == 1
    after_the_crash(point, world, agent)

    router.start()  # no fault this time
    wait_until(
        lambda: telegram.pending_updates() == 0, timeout_s=15.0, what="the update to be confirmed"
    )
    [row] = world.all_rows()
    assert row.id.startswith("t-100_1:")
    wait_until(lambda: telegram.sent("sendMessage"), timeout_s=15.0, what="the reply")
    agent.stop()
    assert router.stop() == 0
    assert "duplicate ignored" in router.log()
    exactly_one_of_everything(world, agent, router)
    [sent] = telegram.sent("sendMessage")
    assert (sent.chat_id, sent.text) == ("-100", "echo: deploy the thing")


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_slack_envelope_is_resent_after_a_crash_and_stored_once(
    point: str,
    world: World,
    router: RouterProcess,
    slack: FakeSlack,
    agent_factory: Callable[[dict[str, str]], Agent],
) -> None:
    group = world.group()
    world.wire("slack", "C1", group)
    router.env.update(slack_env(slack))
    agent = agent_factory(router.env)
    router.start(NANOCLAW_TEST_CRASH=point)
    wait_until(lambda: slack.connections() >= 1, timeout_s=15.0, what="socket mode connection")
    envelope = slack.push_socket_event(slack.message_event("C1", "hello from slack"))
    assert router.wait_exit() == -9, router.log()
    assert slack.unacked() == [envelope]
    after_the_crash(point, world, agent)

    router.start()
    wait_until(
        lambda: slack.unacked() == [], timeout_s=15.0, what="the envelope to be acknowledged"
    )
    wait_until(lambda: slack.calls("chat.postMessage"), timeout_s=15.0, what="the reply")
    agent.stop()
    assert router.stop() == 0
    exactly_one_of_everything(world, agent, router)
    [row] = world.all_rows()
    assert row.id.startswith("C1_")
    [sent] = slack.calls("chat.postMessage")
    # The message was top-level: the reply is in its thread.
    assert sent.params["thread_ts"] == row.thread_id and sent.params["text"].startswith("echo:")


def wait_for_port(port: int) -> None:
    def accepting() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    wait_until(accepting, timeout_s=15.0, what=f"port {port}")


def attempt(send: Callable[[], tuple[int, bytes]]) -> int | None:
    """One HTTP delivery; None when the connection died without an answer (the router was
    killed while handling it)."""
    try:
        return send()[0]
    except (OSError, http.client.HTTPException):
        return None


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_slack_events_api_retry_after_a_crash_is_stored_once(
    point: str,
    world: World,
    router: RouterProcess,
    slack: FakeSlack,
    agent_factory: Callable[[dict[str, str]], Agent],
) -> None:
    group = world.group()
    world.wire("slack", "C2", group)
    port = free_port()
    router.env.update(
        {
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_BASE_URL": slack.api_url,
            "NANOCLAW_SLACK_EVENTS_PORT": str(port),
        }
    )
    agent = agent_factory(router.env)
    url = f"http://127.0.0.1:{port}/slack/events"
    body = event_body(slack.message_event("C2", "over http"))
    router.start(NANOCLAW_TEST_CRASH=point)
    wait_for_port(port)
    # The 200 is the acknowledgement; the router dies before it.
    assert attempt(lambda: post_event(url, body)) is None
    assert router.wait_exit() == -9, router.log()
    after_the_crash(point, world, agent)

    router.start()
    wait_for_port(port)
    # Slack retries the same event, signed afresh.
    assert attempt(lambda: post_event(url, body)) == 200
    wait_until(lambda: slack.calls("chat.postMessage"), timeout_s=15.0, what="the reply")
    agent.stop()
    assert router.stop() == 0
    exactly_one_of_everything(world, agent, router)
    assert len(slack.calls("chat.postMessage")) == 1


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_webhook_retry_after_a_crash_is_stored_once(
    point: str,
    world: World,
    router: RouterProcess,
    agent_factory: Callable[[dict[str, str]], Agent],
) -> None:
    group = world.group()
    world.wire("webhook", "ci", group, is_group=False)
    port = free_port()
    router.env.update(
        {
            "NANOCLAW_WEBHOOK_PORT": str(port),
            "NANOCLAW_WEBHOOK_SECRETS": f"ci={WEBHOOK_SECRET}",
        }
    )
    agent = agent_factory(router.env)
    url = f"http://127.0.0.1:{port}/webhook/ci"
    body = json.dumps({"build": 7, "status": "failed"}).encode()

    def deliver() -> tuple[int, bytes]:
        # A sender's retry keeps the delivery id and signs with a fresh timestamp.
        headers = nanoclaw_headers(WEBHOOK_SECRET, body, event="build", delivery="build-7")
        return post(url, body, headers)

    router.start(NANOCLAW_TEST_CRASH=point)
    wait_for_port(port)
    assert attempt(deliver) is None
    assert router.wait_exit() == -9, router.log()
    after_the_crash(point, world, agent)

    router.start()
    wait_for_port(port)
    assert attempt(deliver) == 200
    # A webhook source cannot receive: the one reply ends as a failed delivery (delivery
    # then tells the agent with a system note, which the agent answers too).
    wait_until(
        lambda: [d.status if d else None for r, d in replies(world) if r.seq == 3] == ["failed"],
        timeout_s=15.0,
        what="the reply's final state",
    )
    agent.stop()
    assert router.stop() == 0
    exactly_one_of_everything(world, agent, router)
    [row] = [r for r in world.all_rows() if not r.id.startswith("delivery-")]
    assert row.id.startswith("wh-ci-build-7:") and row.kind == "webhook"


def test_the_terminal_chat_resends_until_the_router_answers(
    world: World, router: RouterProcess, agent_factory: Callable[[dict[str, str]], Agent]
) -> None:
    group = world.group()
    world.wire("cli", "local", group, is_group=False)
    agent = agent_factory(router.env)
    router.start(NANOCLAW_TEST_CRASH="after_commit")
    client = subprocess.Popen(
        [NANOCLAW, "chat", "--message", "hi", "--timeout", "60"],
        cwd=REPO,
        env=router.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert router.wait_exit() == -9, router.log()
    wait_until(lambda: len(world.all_rows()) == 1, timeout_s=15.0, what="the committed row")
    started = time.monotonic()
    router.start()
    out, err = client.communicate(timeout=60)
    assert client.returncode == 0, err + router.log()
    assert time.monotonic() - started < 30
    assert out.splitlines().count("assistant> echo: hi") == 1
    agent.stop()
    assert router.stop() == 0
    exactly_one_of_everything(world, agent, router)
    [row] = world.all_rows()
    assert row.id.startswith("cli-") and row.id.endswith(f":{group.id}")
    content = json.loads(row.content)
    assert content["text"] == "hi" and content["sender_id"] == "cli:local"


def test_updates_sent_while_the_router_was_down_are_not_dropped(
    world: World, router: RouterProcess, telegram: FakeTelegram
) -> None:
    group = world.group()
    world.wire("telegram", "-100", group)
    for n in range(5):
        telegram.push_message(-100, f"queued {n}")
    router.env.update(telegram_env(telegram))
    router.start()
    wait_until(
        lambda: telegram.pending_updates() == 0, timeout_s=15.0, what="all updates confirmed"
    )
    assert router.stop() == 0
    texts = [json.loads(r.content)["text"] for r in world.all_rows()]
    assert texts == [f"queued {n}" for n in range(5)]
    # The first poll named no offset: nothing pending was skipped or dropped.
    assert telegram.offsets_seen()[0] is None
