"""No single session's files can stall delivery (issue 8 §1): a real FIFO planted as
``outbound.db-journal`` or as an outbox file costs that session alone, which is quarantined
and logged once, while another session's replies keep reaching the platform within a
bound. With the VFS's defences switched off, the stall backstop cuts the stuck call off."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Iterator

import pytest

from nanoclaw_common import messages as m
from nanoclaw_common.stall import StallGuard
from nanoclaw_common.store import OutboundStore
from nanoclaw_common.store.outbound import NewOutbound
from nanoclaw_common.store.quarantine import Quarantine
from nanoclaw_common.store.rows import Session
from nanoclaw_common.store.session_vfs import LAYERS
from nanoclaw_delivery.service import DeliveryService
from tests.delivery_world import World, run
from tests.waiting import wait_until_async

LIMIT_S = 0.5  # the stall limit for these tests (production: settings.session_io_limit_s)
BOUND_S = 5.0  # other sessions are served within this, whatever the attacked one does


@pytest.fixture
def guarded(world: World) -> Iterator[World]:
    """The world with a real stall guard (the unit world runs everything inline)."""
    world.deps.session_io = StallGuard(LIMIT_S, name="test-io")
    yield world
    world.deps.session_io.close()


@pytest.fixture
def old_vfs() -> Iterator[None]:
    """Guarded connections on SQLite's own unix VFS: the old code's blocking opens."""
    LAYERS.vfs = False
    yield
    LAYERS.vfs = True


def attacked_session(world: World) -> tuple[Session, OutboundStore]:
    session = world.new_session(world.group, world.home_chat)
    paths = world.layout.session(world.group.id, session.id)
    store = OutboundStore(paths.outbound_db)
    store.insert_message(NewOutbound(content=m.SendText(text="from the attacker")))
    return session, store


def sent_more_than(world: World, count: int) -> bool:
    return len(world.telegram.texts()) > count


def served_while_attacked(world: World, attacked: Session) -> DeliveryService:
    async def scenario() -> DeliveryService:
        service = DeliveryService(world.deps)
        runner = asyncio.create_task(service.run())
        for n in range(3):
            world.text(f"reply {n}")
            await wait_until_async(
                functools.partial(sent_more_than, world, n),
                timeout_s=BOUND_S,
                what=f"more than {n} sends",
            )
        await wait_until_async(
            lambda: attacked.id in Quarantine(world.central).ids(),
            timeout_s=BOUND_S,
            what="the attacked session quarantined",
        )
        await wait_until_async(
            lambda: attacked.id not in service.sessions,
            timeout_s=BOUND_S,
            what="the attacked session's worker gone",
        )
        world.text("after the quarantine")
        await wait_until_async(
            lambda: "after the quarantine" in world.telegram.texts(),
            timeout_s=BOUND_S,
            what="the text 'after the quarantine'",
        )
        service.request_stop()
        await runner
        return service

    return run(scenario())


def test_a_fifo_journal_quarantines_its_session_and_delivery_serves_the_others(
    guarded: World, log_lines: list[str]
) -> None:
    world = guarded
    attacked, store = attacked_session(world)
    os.mkfifo(f"{store.db.path}-journal")
    served_while_attacked(world, attacked)
    store.close()
    assert world.telegram.texts() == ["reply 0", "reply 1", "reply 2", "after the quarantine"]
    (entry,) = Quarantine(world.central).list()
    assert (entry.session_id, entry.program) == (attacked.id, "delivery")
    assert "FIFO" in entry.reason
    assert sum("SESSION QUARANTINED" in line for line in log_lines) == 1


def test_the_stall_backstop_cuts_a_blocked_call_off(guarded: World, old_vfs: None) -> None:
    """The session VFS off: SQLite's hot-journal open really blocks on the FIFO (the old
    code's hang). The call is cut off after the limit, the session quarantined, the stuck
    thread freed, and the other session served throughout."""
    world = guarded
    attacked, store = attacked_session(world)
    os.mkfifo(f"{store.db.path}-journal")
    served_while_attacked(world, attacked)
    store.close()
    (entry,) = Quarantine(world.central).list()
    assert entry.session_id == attacked.id and "took longer than" in entry.reason
    assert world.deps.session_io.is_cut_off(attacked.id)

    async def freed() -> None:
        await wait_until_async(
            lambda: world.deps.session_io.in_flight == 0,
            timeout_s=BOUND_S,
            what="no session read in flight",
        )

    run(freed())  # released: the FIFO's reader got its end-of-file


def test_a_fifo_in_the_outbox_is_refused_and_the_next_row_goes_out(guarded: World) -> None:
    world = guarded
    first = world.write(m.SendText(text="with a file", files=["f"]))
    folder = world.paths.outbox / first.id
    folder.mkdir(parents=True)
    os.mkfifo(folder / "f")

    async def scenario() -> None:
        service = DeliveryService(world.deps)
        runner = asyncio.create_task(service.run())
        await wait_until_async(
            lambda: getattr(world.delivery(first.id), "status", None) == "denied",
            timeout_s=BOUND_S,
            what="first denied",
        )
        world.text("next")
        await wait_until_async(
            lambda: world.telegram.texts() == ["next"],
            timeout_s=BOUND_S,
            what='only the text "next"',
        )
        service.request_stop()
        await runner

    run(scenario())
    assert "not a regular file" in (world.delivery(first.id).last_error or "")
    assert Quarantine(world.central).ids() == set()  # a refused file costs the row, not the session
