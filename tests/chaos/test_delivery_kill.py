"""SIGKILL the real delivery process again and again while agents keep writing, and check the
outcome against docs/delivery.md: nothing lost, nothing failed, and a message appears twice
only if it was in flight when delivery died (at most one such row per session per kill; a
row is never sent more times than its recorded attempts)."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from nanoclaw_common import messages as m
from nanoclaw_common.channels import cli_protocol as wire
from nanoclaw_common.states import EngageMode
from nanoclaw_common.store import OutboundStore
from nanoclaw_common.store.outbound import NewOutbound
from nanoclaw_common.store.rows import Session
from tests.conftest import SettingsFactory
from tests.delivery_world import World, opened_world
from tests.integration.delivery.process import DeliveryProcess
from tests.integration.delivery.terminal import FakeTerminal
from tests.waiting import wait_until

SESSIONS = 3
MESSAGES_PER_SESSION = 25
KILLS = 5
SEED = 20261124


@pytest.fixture
def world(make_settings: SettingsFactory) -> Iterator[World]:
    with opened_world(
        make_settings(delivery_backoff_base_s=0.05, delivery_max_attempts=20)
    ) as world:
        yield world


def cli_sessions(world: World) -> list[Session]:
    chat = world.central.create_messaging_group("cli", "local", name="terminal")
    sessions = []
    for n in range(SESSIONS):
        group = world.central.create_agent_group(f"Agent {n}", f"agent-{n}")
        world.central.create_wiring(chat.id, group.id, engage_mode=EngageMode.PATTERN)
        sessions.append(world.new_session(group, chat))
    return sessions


def writer(world: World, session: Session, rng: random.Random, written: list[str]) -> None:
    store = OutboundStore(world.layout.session(session.agent_group_id, session.id).outbound_db)
    try:
        for n in range(MESSAGES_PER_SESSION):
            text = f"{session.id} #{n}"
            store.insert_message(NewOutbound(content=m.SendText(text=text)))
            written.append(text)
            time.sleep(rng.uniform(0.005, 0.04))
    finally:
        store.close()


def records(world: World, session: Session) -> dict[str, tuple[str, int]]:
    """text -> (status, attempts) for every outbound row of the session."""
    paths = world.layout.session(session.agent_group_id, session.id)
    store = OutboundStore(paths.outbound_db)
    inbound = world.inbound(session)
    try:
        found = {}
        for row in store.messages_after(0, limit=10_000):
            content = m.decode_outbound_content(row.content)
            assert isinstance(content, m.SendText)
            delivery = inbound.get_delivery(row.id)
            found[content.text] = (delivery.status, delivery.attempts) if delivery else ("", 0)
        return found
    finally:
        store.close()
        inbound.close()


def test_repeated_sigkill_loses_nothing(world: World, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    sessions = cli_sessions(world)
    terminal = FakeTerminal(wire.chat_socket(world.layout)).start()
    terminal.answer_delay_s = 0.01  # widens the window in which a kill lands mid-send
    delivery = DeliveryProcess(world.settings, tmp_path / "delivery.log").start()
    written: list[str] = []
    writers = [
        threading.Thread(target=writer, args=(world, s, random.Random(rng.random()), written))
        for s in sessions
    ]
    try:
        for thread in writers:
            thread.start()
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.1, 0.4))
            delivery.kill()
            time.sleep(rng.uniform(0.0, 0.1))
            delivery.start()
        for thread in writers:
            thread.join(60)
        total = SESSIONS * MESSAGES_PER_SESSION

        def row_states() -> dict[str, tuple[str, int]]:
            return {t: r for s in sessions for t, r in records(world, s).items()}

        def all_delivered() -> dict[str, tuple[str, int]] | None:
            found = row_states()
            done = len(found) == total and all(st == "delivered" for st, _a in found.values())
            return found if done else None

        states = wait_until(
            all_delivered, timeout_s=60, what="every row delivered", poll_s=0.05, detail=row_states
        )
    finally:
        delivery.stop()
        terminal.stop()

    received = Counter(terminal.texts())
    assert len(written) == SESSIONS * MESSAGES_PER_SESSION
    # Nothing lost.
    assert set(received) == set(written)
    # A row is never shown more often than it was attempted; every extra copy belongs to a
    # row that was interrupted (attempts > 1), and each kill interrupts at most one row per
    # session (one task per session, rows in order).
    duplicates = 0
    for text, (_status, attempts) in states.items():
        assert received[text] <= attempts, (text, received[text], attempts)
        duplicates += received[text] - 1
    assert duplicates <= KILLS * SESSIONS
    # Order within each session is kept (first appearance).
    first_seen = list(dict.fromkeys(terminal.texts()))
    for session in sessions:
        mine = [t for t in first_seen if t.startswith(session.id)]
        assert mine == [f"{session.id} #{n}" for n in range(MESSAGES_PER_SESSION)]
    assert delivery.log().count("delivery started") == 1  # the last start's log
