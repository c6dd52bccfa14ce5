"""Exactly-once ingest with the router as a real process: SIGKILL between the commit and the
platform's acknowledgement, the platform re-sends, and there is still one row and one wake.

The crash is the router's test-only fault hook (``NANOCLAW_TEST_CRASH``): ``after_commit``
dies before waking, ``before_ack`` after waking; both before the acknowledgement."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.slack_api import APP_TOKEN, BOT_TOKEN, FakeSlack
from tests.fakes.telegram_api import FakeTelegram
from tests.integration.router.conftest import REPO, RouterProcess, World, wait_until

CRASH_POINTS = ["after_commit", "before_ack"]
NANOCLAW = str(Path(sys.executable).parent / "nanoclaw")


def telegram_env(fake: FakeTelegram) -> dict[str, str]:
    return {"TELEGRAM_BOT_TOKEN": fake.token, "TELEGRAM_API_BASE_URL": fake.base_url}


def slack_env(fake: FakeSlack) -> dict[str, str]:
    return {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_APP_TOKEN": APP_TOKEN,
        "SLACK_API_BASE_URL": fake.api_url,
    }


@pytest.mark.slow
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_telegram_update_survives_a_crash_before_its_offset_is_confirmed(
    point: str, world: World, router: RouterProcess, telegram: FakeTelegram
) -> None:
    group = world.group()
    world.wire("telegram", "-100", group)
    telegram.push_message(-100, "deploy the thing")
    router.env.update(telegram_env(telegram))
    router.start(NANOCLAW_TEST_CRASH=point)
    assert router.wait_exit() == -9, router.log()
    # Committed, but Telegram still holds the update: its offset was never confirmed.
    assert len(world.all_rows()) == 1
    assert telegram.pending_updates() == 1
    wakes_before = len(world.wakes())
    assert wakes_before == (1 if point == "before_ack" else 0)

    router.start()  # no fault this time
    wait_until(lambda: telegram.pending_updates() == 0, what="the update to be confirmed")
    [row] = world.all_rows()
    assert row.id.startswith("t-100_1:")
    wait_until(lambda: len(world.wakes()) == 1, what="one wake")
    assert router.stop() == 0
    assert len(world.all_rows()) == 1
    assert len(world.wakes()) == 1
    assert "duplicate ignored" in router.log()


@pytest.mark.slow
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_slack_envelope_is_resent_after_a_crash_and_stored_once(
    point: str, world: World, router: RouterProcess, slack: FakeSlack
) -> None:
    group = world.group()
    world.wire("slack", "C1", group)
    router.env.update(slack_env(slack))
    router.start(NANOCLAW_TEST_CRASH=point)
    wait_until(lambda: slack.connections() >= 1, what="socket mode connection")
    envelope = slack.push_socket_event(slack.message_event("C1", "hello from slack"))
    assert router.wait_exit() == -9, router.log()
    assert slack.unacked() == [envelope]
    assert len(world.all_rows()) == 1

    router.start()
    wait_until(lambda: slack.unacked() == [], what="the envelope to be acknowledged")
    wait_until(lambda: len(world.wakes()) == 1, what="one wake")
    assert router.stop() == 0
    [row] = world.all_rows()
    assert row.id.startswith("C1_")
    assert len(world.wakes()) == 1


@pytest.mark.slow
def test_the_terminal_chat_resends_until_the_router_answers(
    world: World, router: RouterProcess
) -> None:
    group = world.group()
    world.wire("cli", "local", group, is_group=False)
    router.start(NANOCLAW_TEST_CRASH="after_commit")
    client = subprocess.Popen(
        [NANOCLAW, "chat", "--message", "hi", "--timeout", "60"],
        cwd=REPO,
        env=router.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert router.wait_exit() == -9, router.log()
    wait_until(lambda: len(world.all_rows()) == 1, what="the committed row")
    router.start()
    wait_until(lambda: len(world.wakes()) == 1, what="one wake")
    client.kill()
    client.communicate(timeout=10)
    assert router.stop() == 0
    [row] = world.all_rows()
    assert row.id.startswith("cli-") and row.id.endswith(f":{group.id}")
    content = json.loads(row.content)
    assert content["text"] == "hi" and content["sender_id"] == "cli:local"


@pytest.mark.slow
def test_updates_sent_while_the_router_was_down_are_not_dropped(
    world: World, router: RouterProcess, telegram: FakeTelegram
) -> None:
    group = world.group()
    world.wire("telegram", "-100", group)
    for n in range(5):
        telegram.push_message(-100, f"queued {n}")
    router.env.update(telegram_env(telegram))
    router.start()
    wait_until(lambda: telegram.pending_updates() == 0, what="all updates confirmed")
    assert router.stop() == 0
    texts = [json.loads(r.content)["text"] for r in world.all_rows()]
    assert texts == [f"queued {n}" for n in range(5)]
    # The first poll named no offset: nothing pending was skipped or dropped.
    assert telegram.offsets_seen()[0] is None
