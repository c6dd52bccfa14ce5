"""The router as a real process while another process holds ``central.db``'s write lock for
six seconds (longer than the 5 s busy timeout): its event loop never stalls (its proof of
life, beaten from the loop every second, keeps beating), a Telegram message into a known
session is committed and answered during the lock, one that needs a central write (its
session does not exist yet) is committed after the lock, and nothing is lost: every message
is one row and one answer, and Telegram's updates are all confirmed."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.fakes.central_lock import LOCK_S, MAX_BEAT_GAP_S, Beats, CentralLock
from tests.fakes.telegram_api import FakeTelegram
from tests.integration.router.conftest import Delivery, RouterProcess, World, wait_until
from tests.integration.router.standin_agent import StandinAgent

pytestmark = pytest.mark.slow


@pytest.fixture
def lock(world: World) -> Iterator[CentralLock]:
    holder = CentralLock(world.home / "central.db", hold_s=LOCK_S)
    yield holder
    holder.stop()


def answers(telegram: FakeTelegram, chat: str) -> list[str]:
    return [s.text for s in telegram.sent("sendMessage") if s.chat_id == chat]


def test_a_locked_central_db_never_stalls_the_router_and_loses_nothing(
    world: World, router: RouterProcess, telegram: FakeTelegram, lock: CentralLock
) -> None:
    group = world.group()
    known = world.wire("telegram", "-100", group)
    fresh = world.wire("telegram", "-200", group)
    router.env.update(
        {"TELEGRAM_BOT_TOKEN": telegram.token, "TELEGRAM_API_BASE_URL": telegram.base_url}
    )
    agent = StandinAgent(world.home).start()
    delivery = Delivery(world.home, router.env)
    try:
        router.start()
        _, first = telegram.push_message(-100, "before the lock")
        wait_until(lambda: answers(telegram, "-100"), 20, "the first answer")
        beats = Beats(world.home / "run" / "alive" / "router")

        lock.hold()
        assert lock.locked_at is not None
        _, second = telegram.push_message(-100, "during the lock")
        _, third = telegram.push_message(-200, "a new session during the lock")
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
        wait_until(lambda: answers(telegram, "-200"), 30, "the new session's answer")
        wait_until(lambda: telegram.pending_updates() == 0, 10, "every update confirmed")
    finally:
        agent.stop()
        delivery.kill()
    assert router.stop() == 0, router.log()
    assert answers(telegram, "-100") == ["echo: before the lock", "echo: during the lock"]
    assert answers(telegram, "-200") == ["echo: a new session during the lock"]
    rows = sorted(r.id.split(":")[0] for r in world.all_rows())
    assert rows == sorted([f"t-100_{first}", f"t-100_{second}", f"t-200_{third}"]), [
        (s.id, s.messaging_group_id) for s in world.sessions()
    ]
    assert {s.messaging_group_id for s in world.sessions()} == {known.id, fresh.id}
