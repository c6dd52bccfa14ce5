"""The router as a real process while another process holds ``central.db``'s write lock for
six seconds (longer than the 5 s busy timeout): its event loop never stalls (its proof of
life, beaten from the loop every second, keeps beating), a Telegram message into a known
session is committed and answered during the lock and so is a webhook request (its 200
comes after its commit), one that needs a central write (its session does not exist yet) is
committed after the lock, and nothing is lost: every message is one row and one answer, and
Telegram's updates are all confirmed."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from tests.fakes.central_lock import LOCK_S, MAX_BEAT_GAP_S, Beats, CentralLock
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.webhook_client import nanoclaw_headers, post
from tests.integration.router.conftest import Delivery, RouterProcess, World, free_port
from tests.integration.router.standin_agent import StandinAgent
from tests.waiting import wait_until

WEBHOOK_SECRET = "lock-webhook-secret-7"


@pytest.fixture
def lock(world: World) -> Iterator[CentralLock]:
    holder = CentralLock(world.home / "central.db", hold_s=LOCK_S)
    yield holder
    holder.stop()


def answers(telegram: FakeTelegram, chat: str) -> list[str]:
    return [s.text for s in telegram.sent("sendMessage") if s.chat_id == chat]


def webhook(port: int, delivery: str) -> int:
    """One signed webhook delivery to the router; its HTTP status."""
    body = json.dumps({"build": delivery}).encode()
    headers = nanoclaw_headers(WEBHOOK_SECRET, body, event="build", delivery=delivery)
    return post(f"http://127.0.0.1:{port}/webhook/ci", body, headers)[0]


def accepting(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_a_locked_central_db_never_stalls_the_router_and_loses_nothing(
    world: World, router: RouterProcess, telegram: FakeTelegram, lock: CentralLock
) -> None:
    group = world.group()
    known = world.wire("telegram", "-100", group)
    fresh = world.wire("telegram", "-200", group)
    hooks = world.wire("webhook", "ci", group, is_group=False)
    port = free_port()
    router.env.update(
        {
            "TELEGRAM_BOT_TOKEN": telegram.token,
            "TELEGRAM_API_BASE_URL": telegram.base_url,
            "NANOCLAW_WEBHOOK_PORT": str(port),
            "NANOCLAW_WEBHOOK_SECRETS": f"ci={WEBHOOK_SECRET}",
        }
    )
    agent = StandinAgent(world.home).start()
    delivery = Delivery(world.home, router.env)
    try:
        router.start()
        _, first = telegram.push_message(-100, "before the lock")
        wait_until(lambda: answers(telegram, "-100"), timeout_s=20, what="the first answer")
        wait_until(lambda: accepting(port), timeout_s=20, what="the webhook port")
        assert webhook(port, "before") == 200  # its session exists from now on
        beats = Beats(world.home / "run" / "alive" / "router")

        lock.hold()
        assert lock.locked_at is not None
        _, second = telegram.push_message(-100, "during the lock")
        _, third = telegram.push_message(-200, "a new session during the lock")
        # An HTTP request into a known session: answered (committed) while the lock holds.
        assert webhook(port, "during") == 200
        assert lock.holding, "the webhook was answered only after the lock"
        # A known session needs nothing of central.db: committed and answered now.
        answered_during = False
        new_session_during = False
        while lock.holding:
            beats.sample()
            if len(answers(telegram, "-100")) == 2:
                answered_during = answered_during or lock.holding
            sessions = {s.messaging_group_id for s in world.sessions()}
            if fresh.id in sessions and lock.holding:
                new_session_during = True
            assert time.monotonic() - lock.locked_at < LOCK_S + 10, "the lock never ended"
            time.sleep(0.02)
        beats.sample()
        lock.wait_released(10)
        assert answered_during, "the known session's message waited for the lock"
        assert not new_session_during, "a new session was made while central.db was locked?"
        assert beats.seen, "the router never beat"
        assert beats.largest_gap_s() < MAX_BEAT_GAP_S, (beats.seen, router.log())

        # After the lock: the message that needed a central write is committed and answered.
        wait_until(lambda: answers(telegram, "-200"), timeout_s=30, what="the new session's answer")
        wait_until(
            lambda: telegram.pending_updates() == 0, timeout_s=10, what="every update confirmed"
        )
        agent.stop()
        # Stopped, not killed: a write it was making into an inbound.db would be left as a hot
        # journal, and the rows below could not be read.
        assert delivery.stop() == 0, delivery.log()
    finally:
        agent.stop()
        delivery.kill()
    assert router.stop() == 0, router.log()
    assert answers(telegram, "-100") == ["echo: before the lock", "echo: during the lock"]
    assert answers(telegram, "-200") == ["echo: a new session during the lock"]
    rows = world.all_rows()
    chats = sorted(r.id.split(":")[0] for r in rows if r.kind == "chat" and r.id.startswith("t"))
    assert chats == sorted([f"t-100_{first}", f"t-100_{second}", f"t-200_{third}"]), [
        (s.id, s.messaging_group_id) for s in world.sessions()
    ]
    hooked = sorted(r.id.split(":")[0] for r in rows if r.kind == "webhook")
    assert hooked == ["wh-ci-before", "wh-ci-during"]
    assert {s.messaging_group_id for s in world.sessions()} == {known.id, fresh.id, hooks.id}
