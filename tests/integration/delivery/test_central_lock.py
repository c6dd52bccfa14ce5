"""The real delivery process while another process holds ``central.db``'s write lock for six
seconds (longer than the 5 s busy timeout): its event loop never stalls (its proof of life
keeps beating), it keeps delivering for a session whose row needs no central write (a
reply: the ACL only reads), and a row that needs one (a question card, recorded in
``pending_questions`` before it is sent) goes out once the lock is released."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nanoclaw_common import messages as m
from nanoclaw_common.store import OutboundStore
from nanoclaw_common.store.outbound import NewOutbound
from nanoclaw_common.store.rows import Session
from tests.delivery_world import World
from tests.fakes.central_lock import LOCK_S, MAX_BEAT_GAP_S, Beats, CentralLock
from tests.fakes.telegram_api import FakeTelegram
from tests.integration.delivery.process import DeliveryProcess
from tests.waiting import wait_until


@pytest.fixture
def delivery(world: World, tmp_path: Path) -> Iterator[DeliveryProcess]:
    process = DeliveryProcess(
        world.settings, tmp_path / "delivery.log", {"NANOCLAW_DELIVERY_BACKOFF_BASE_S": "0.5"}
    )
    yield process
    process.stop()


@pytest.fixture
def lock(world: World) -> Iterator[CentralLock]:
    holder = CentralLock(world.layout.central_db, hold_s=LOCK_S)
    yield holder
    holder.stop()


def write(world: World, session: Session, content: m.OutboundContent) -> str:
    store = OutboundStore(world.layout.session(session.agent_group_id, session.id).outbound_db)
    try:
        return store.insert_message(NewOutbound(content=content)).id
    finally:
        store.close()


def texts_to(telegram: FakeTelegram, chat: str) -> list[str]:
    return [s.text for s in telegram.sent("sendMessage") if s.chat_id == chat]


def test_a_locked_central_db_never_stalls_delivery(
    world: World, fake_telegram: FakeTelegram, delivery: DeliveryProcess, lock: CentralLock
) -> None:
    asking = world.new_session(world.group, world.other_chat)  # its own chat: 200
    delivery.start()
    write(world, world.session, m.SendText(text="before the lock"))
    wait_until(
        lambda: texts_to(fake_telegram, "100") == ["before the lock"],
        timeout_s=20.0,
        what="the reply before the lock",
    )
    beats = Beats(world.layout.alive_dir / "delivery")

    lock.hold()
    assert lock.locked_at is not None
    # First the row that needs a central write, then one that does not.
    write(
        world,
        asking,
        m.AskQuestion(
            question_id="q-lock",
            title="Lunch?",
            question="Pizza or pasta?",
            options=[m.QuestionOption(label="Pizza", value="pizza")],
        ),
    )
    write(world, world.session, m.SendText(text="during the lock"))
    delivered_during = False
    asked_during = False
    while lock.holding:
        beats.sample()
        if texts_to(fake_telegram, "100") == ["before the lock", "during the lock"]:
            delivered_during = delivered_during or lock.holding
        if texts_to(fake_telegram, "200") and lock.holding:
            asked_during = True
        assert time.monotonic() - lock.locked_at < LOCK_S + 10, "the lock never ended"
        time.sleep(0.02)
    beats.sample()
    lock.wait_released(10)
    assert delivered_during, "a reply that needs no central write waited for the lock"
    assert not asked_during, "a question card went out before it was recorded?"
    assert beats.seen, "delivery never beat"
    assert beats.largest_gap_s() < MAX_BEAT_GAP_S, (beats.seen, delivery.log())

    # After the lock: the card is recorded, then sent; nothing was lost or sent twice.
    wait_until(lambda: texts_to(fake_telegram, "200"), timeout_s=30.0, what="the question card")
    [question] = world.central.list_pending_questions()
    assert question.session_id == asking.id and question.platform_message_id is not None
    assert len(texts_to(fake_telegram, "200")) == 1
    assert texts_to(fake_telegram, "100") == ["before the lock", "during the lock"]
