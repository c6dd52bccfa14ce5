"""The router's ingest path end to end in one process: real central and session DBs."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

import msgspec

from nanoclaw_common.channels.common import make_action
from nanoclaw_common.ids import new_id
from nanoclaw_common.messages import (
    ChatContent,
    QuestionOption,
    decode_inbound_content,
    encode_text,
)
from nanoclaw_common.paths import Layout
from nanoclaw_common.settings import Settings
from nanoclaw_common.store import CentralStore, InboundReader
from nanoclaw_common.store.rows import PendingChannelApproval, PendingQuestion
from tests.unit.router.conftest import Harness


def test_wired_message_becomes_one_row_and_one_wake(harness: Harness) -> None:
    group = harness.group()
    chat = harness.chat_row(name="team")
    harness.wire(chat, group)
    stored = harness.send("hi there", message_id="m42", thread=None)
    assert len(stored) == 1
    [session] = harness.sessions(group)
    [row] = harness.rows(session)
    assert row.id == f"m42:{group.id}"
    assert row.seq % 2 == 0 and row.kind == "chat" and row.trigger == 1
    assert (row.channel_type, row.platform_id) == ("chat", "c1")
    content = decode_inbound_content(row.content)
    assert isinstance(content, ChatContent)
    assert content.text == "hi there" and content.sender_id == "chat:u1"
    assert harness.waker.wakes == [session.id]
    # The projections were refreshed before the wake.
    paths = harness.layout.session(group.id, session.id)
    reader = InboundReader(paths.inbound_db)
    try:
        assert [d.platform_id for d in reader.destinations()] == ["c1"]
        assert reader.routing().platform_id == "c1"
    finally:
        reader.close()


def test_a_resent_event_is_one_row_and_one_wake(harness: Harness) -> None:
    group = harness.group()
    harness.wire(harness.chat_row(), group)
    event = harness.event("once", message_id="dup1")
    first = harness.route(event)
    second = harness.route(event)
    assert first[0].result.created and not second[0].result.created
    [session] = harness.sessions(group)
    assert len(harness.rows(session)) == 1
    assert harness.waker.wakes == [session.id]


def test_a_resent_event_wakes_when_the_first_attempt_never_did(harness: Harness) -> None:
    group = harness.group()
    harness.wire(harness.chat_row(), group)
    harness.waker.fail = True  # the first attempt's wake did not happen
    event = harness.event("once", message_id="dup2")
    harness.route(event)
    harness.waker.fail = False
    harness.route(event)
    [session] = harness.sessions(group)
    assert len(harness.rows(session)) == 1
    assert harness.waker.wakes == [session.id]


def test_a_resent_event_after_the_run_answered_it_wakes_nothing(harness: Harness) -> None:
    """The first attempt woke the session, the run answered the row and stopped; then the
    platform re-sends (its acknowledgement was lost). The container is ``stopped`` again,
    but the row is settled: waking would start a run with nothing to do."""
    from nanoclaw_common.states import ContainerStatus
    from nanoclaw_common.store import OutboundStore

    group = harness.group()
    harness.wire(harness.chat_row(), group)
    event = harness.event("once", message_id="dup3")
    [stored] = harness.route(event)
    [session] = harness.sessions(group)
    assert harness.waker.wakes == [session.id]
    paths = harness.layout.session(group.id, session.id)
    outbound = OutboundStore(paths.outbound_db)
    try:
        outbound.claim([stored.row_id], "run-1")
        outbound.complete([stored.row_id], "run-1")  # messages_in still says pending
    finally:
        outbound.close()
    harness.central.set_container_status(session.id, ContainerStatus.STOPPED)
    [again] = harness.route(event)
    assert not again.result.created
    assert harness.waker.wakes == [session.id]  # still one
    # A re-sent row that still waits for the agent does wake a stopped session (the first
    # attempt died before its wake).
    second = harness.event("twice", message_id="dup4")
    harness.route(second)
    harness.central.set_container_status(session.id, ContainerStatus.STOPPED)
    harness.route(second)
    assert harness.waker.wakes == [session.id] * 3


def test_chatter_in_an_unknown_chat_leaves_no_trace(harness: Harness) -> None:
    harness.group()
    harness.owner()
    assert harness.send("just talking", chat="nobody") == []
    assert harness.central.find_messaging_group("chat", "nobody") is None
    assert harness.drops() == {}
    assert harness.central.get_user("chat:u1") is None


def test_rows_of_one_session_get_increasing_seqs_in_arrival_order(harness: Harness) -> None:
    group = harness.group()
    harness.wire(harness.chat_row(), group)

    async def burst() -> None:
        await asyncio.gather(
            *(
                harness.router.ingest.route(harness.event(f"n{i}", message_id=f"b{i}"))
                for i in range(50)
            )
        )

    harness.run(burst())
    [session] = harness.sessions(group)
    rows = harness.rows(session)
    assert [r.id.split(":")[0] for r in rows] == [f"b{i}" for i in range(50)]
    assert all(b.seq > a.seq for a, b in itertools.pairwise(rows))


def test_a_chat_keeps_its_order_when_its_first_lookup_is_slow(harness: Harness) -> None:
    """The first of two messages of a direct chat waits for a slow central read (a busy
    reader thread); the second, which arrived after it, must not overtake it: the chat's
    place is taken on arrival, before any await. (The split router first took it after a
    DM's lookup of registrations waiting for a name: the message whose lookup ended first
    went first.)"""
    group = harness.group()
    harness.wire(harness.chat_row(is_group=False), group)
    facts = harness.router.facts
    lookup = facts.awaiting_names
    slow = asyncio.Event()
    lookups = 0

    async def slow_first_lookup() -> list[PendingChannelApproval]:
        nonlocal lookups
        lookups += 1
        if lookups == 1:
            await slow.wait()
        return await lookup()

    facts.awaiting_names = slow_first_lookup  # type: ignore[method-assign]
    route = harness.router.ingest.route

    async def two() -> None:
        first = asyncio.create_task(route(harness.event("first", group=False, message_id="o1")))
        await asyncio.sleep(0)  # the first has arrived (and waits for its lookup)
        second = asyncio.create_task(route(harness.event("second", group=False, message_id="o2")))
        deadline = time.monotonic() + 10
        # The second goes as far as it can: to the chat's lock, or (overtaking) to the end.
        while not second.done() and harness.router.ingest.chat_locks.users(("chat", "c1")) < 2:
            assert time.monotonic() < deadline, "the second message went nowhere"
            await asyncio.sleep(0.001)
        slow.set()
        await asyncio.gather(first, second)

    harness.run(two())
    [session] = harness.sessions(group)
    assert [r.id.split(":")[0] for r in harness.rows(session)] == ["o1", "o2"]


def test_invalid_input_is_a_recorded_drop(harness: Harness) -> None:
    harness.run(harness.router.on_invalid("chat", "c9", "invalid telegram message: boom"))
    [drop] = harness.central.list_drops()
    assert (drop.reason, drop.platform_id) == ("invalid_input", "c9")
    assert drop.detail is not None and "boom" in drop.detail


def test_attachments_are_saved_under_the_inbox_with_safe_names(harness: Harness) -> None:
    group = harness.group()
    harness.wire(harness.chat_row(), group)
    event = harness.event(
        "see files",
        message_id="att1",
        attachments=[
            {"name": "../../etc/passwd", "data": b"root", "kind": "file"},
            {
                "name": "photo.jpg",
                "data": b"\xff\xd8jpeg",
                "kind": "image",
                "mime_type": "image/jpeg",
            },
            {"name": "..", "data": b"x", "kind": "image", "mime_type": "image/png"},
        ],
    )
    harness.route(event)
    [session] = harness.sessions(group)
    [row] = harness.rows(session)
    content = decode_inbound_content(row.content)
    assert isinstance(content, ChatContent)
    names = [a.name for a in content.attachments]
    assert names == ["passwd", "photo.jpg", "attachment-3.png"]
    root = harness.layout.session(group.id, session.id).root
    for attachment in content.attachments:
        assert attachment.local_path is not None
        path = root / attachment.local_path
        assert path.is_file() and not path.is_symlink()
        assert path.resolve().is_relative_to((root / "inbox").resolve())
    first = content.attachments[0].local_path
    assert first is not None
    assert (root / first).read_bytes() == b"root"


def test_an_inbox_folder_planted_as_a_symlink_is_refused(harness: Harness, tmp_path: Path) -> None:
    group = harness.group()
    harness.wire(harness.chat_row(), group)
    harness.send("first", message_id="warmup")  # creates the session folder
    [session] = harness.sessions(group)
    paths = harness.layout.session(group.id, session.id)
    outside = tmp_path / "outside"
    outside.mkdir()
    (paths.inbox / f"evil:{group.id}").symlink_to(outside)
    harness.route(
        harness.event("payload", message_id="evil", attachments=[{"name": "x.txt", "data": b"pwn"}])
    )
    row = next(r for r in harness.rows(session) if r.id.startswith("evil:"))
    content = decode_inbound_content(row.content)
    assert isinstance(content, ChatContent)
    assert content.attachments == []
    assert "not saved" in content.text
    assert list(outside.iterdir()) == []


def test_webhook_events_become_webhook_rows(harness: Harness) -> None:
    from nanoclaw_common.channels.common import webhook_text
    from nanoclaw_common.messages import WebhookContent

    group = harness.group()
    chat = harness.central.create_messaging_group(
        "webhook", "github", unknown_sender_policy="public"
    )
    harness.central.create_wiring(chat.id, group.id, engage_mode="pattern", engage_pattern=".")
    harness.send(
        webhook_text("push", {"ref": "main"}),
        channel="webhook",
        chat="github",
        sender="webhook:github",
        group=False,
    )
    [session] = harness.sessions(group)
    [row] = harness.rows(session)
    assert row.kind == "webhook"
    content = decode_inbound_content(row.content)
    assert isinstance(content, WebhookContent)
    assert (content.source, content.event, content.payload) == ("github", "push", {"ref": "main"})
    assert msgspec.json.decode(row.content)["type"] == "webhook"


def test_typing_shows_while_the_session_works_and_stops_when_acked(harness: Harness) -> None:
    from nanoclaw_common.store import OutboundStore

    group = harness.group()
    harness.wire(harness.chat_row(), group)
    [stored] = harness.send("think hard", message_id="typ1")
    assert harness.run(harness.router.typing.tick()) == 1
    [typing] = harness.chat.of_kind("typing")
    assert typing.platform_id == "c1"
    # Not again within the refresh interval.
    assert harness.run(harness.router.typing.tick()) == 0
    paths = harness.layout.session(group.id, stored.session.id)
    outbound = OutboundStore(paths.outbound_db)
    try:
        outbound.complete([stored.row_id], "run-x")
    finally:
        outbound.close()
    harness.run(harness.router.typing.tick())
    assert harness.router.typing.active == {}


def test_accumulated_context_shows_no_typing(harness: Harness) -> None:
    group = harness.group()
    harness.wire(
        harness.chat_row(), group, engage_mode="mention", ignored_message_policy="accumulate"
    )
    harness.send("just context")
    assert harness.run(harness.router.typing.tick()) == 0


def test_the_side_loops_end_when_cancelled_even_as_they_are_kicked(harness: Harness) -> None:
    """``Router.stop`` cancels the typing and outbox loops and waits for them. A kick (a new
    typing indicator, a queued card) in the same loop iteration as the cancellation must not
    swallow it: ``asyncio.wait_for`` does on Python 3.11, and the loop (and a SIGTERM'd
    router) then never ends."""
    router = harness.router

    async def cancel_while_kicked(run: Any, kick: Any, ticks: int) -> bool:
        task = asyncio.ensure_future(run())
        for _ in range(3):
            await asyncio.sleep(0)  # now waiting for a kick
        kick().set()
        for _ in range(ticks):
            await asyncio.sleep(0)
        task.cancel()
        # The guard only matters if it hangs; a correct loop ends at once.
        done, _ = await asyncio.wait({task}, timeout=5)
        return task in done and task.cancelled()

    async def check() -> None:
        for ticks in range(6):  # every interleaving of the kick's wake-ups and the cancel
            assert await cancel_while_kicked(router.typing.run, lambda: router.typing._kick, ticks)
            assert await cancel_while_kicked(router.outbox.run, lambda: router.outbox._kick, ticks)

    harness.run(check())


def test_stop_ends_a_task_that_lost_its_cancellation(harness: Harness) -> None:
    """Whatever loses a cancellation (the 3.11 ``wait_for`` race, a library), ``stop``
    cancels again until the task has ended instead of waiting for it forever."""
    router = harness.router
    router.recancel_s = 0.01
    ignored: list[int] = []

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                if len(ignored) < 3:  # swallowed, as the race does
                    ignored.append(1)
                    continue
                raise

    async def check() -> None:
        await router.start()
        router._tasks.append(asyncio.ensure_future(stubborn()))
        await asyncio.sleep(0)
        await asyncio.wait_for(router.stop(), 10)

    harness.run(check())
    assert len(ignored) == 3


def test_stop_settles_card_edits_before_closing_the_adapters(
    settings: Settings, central: CentralStore, layout: Layout
) -> None:
    """A click's card edit runs in the background. ``stop`` lets it finish (or, past a
    grace period, cancels it) before the adapters close: a request cancelled after its HTTP
    client closed leaves its socket open."""
    from nanoclaw_common.store.async_central import AsyncCentral
    from nanoclaw_router.app import Router
    from tests.fakes.recording import MemoryWaker, RecordingAdapter

    class SlowEdits(RecordingAdapter):
        def __init__(self) -> None:
            super().__init__("chat", message_ids="m{n}", dm_prefix="")
            self.edits_released = asyncio.Event()
            self.order: list[str] = []

        async def edit_text(
            self, platform_id: str, thread_id: str | None, message_id: str, text: str
        ) -> None:
            try:
                await self.edits_released.wait()
            except asyncio.CancelledError:
                self.order.append("edit cancelled")
                raise
            self.order.append("edited")

        async def close(self) -> None:
            self.order.append("closed")

    def outcome(open_gate: bool) -> list[str]:
        adapter = SlowEdits()
        doors = AsyncCentral(layout.central_db)
        router = Router(settings, doors, {"chat": adapter}, MemoryWaker(layout.central_db))
        router.background_grace_s = 0.05  # only reached when the gate stays shut
        question = new_id("q")
        central.create_pending_question(
            PendingQuestion(
                question_id=question,
                session_id=session.id,
                message_out_id="out-1",
                channel_type="chat",
                platform_id="c1",
                thread_id=None,
                platform_message_id=None,
                target_user_id=None,
                title="Pick",
                options_json=encode_text([QuestionOption(label="Yes", value="yes")]),
                created_at_ms=1,
                expires_at_ms=None,
            )
        )
        click = make_action(
            channel_type="chat",
            platform_id="c1",
            user_id="chat:u1",
            question_id=question,
            value="0",
            platform_message_id="m9",
        )

        async def run() -> None:
            await router.start()
            assert await router.clicks.handle_action(click) == "answered"
            stopping = asyncio.ensure_future(router.stop())
            for _ in range(5):
                await asyncio.sleep(0)
            if open_gate:
                adapter.edits_released.set()
            await stopping

        asyncio.run(run())
        doors.close()
        return adapter.order

    group = central.create_agent_group("Main", central.unique_folder("Main"))
    chat = central.create_messaging_group("chat", "c1", unknown_sender_policy="public")
    central.create_wiring(chat.id, group.id, engage_mode="pattern", engage_pattern=".")
    session, _ = central.resolve_session(group.id, chat.id, None, "shared")
    assert outcome(open_gate=True) == ["edited", "closed"]
    assert outcome(open_gate=False) == ["edit cancelled", "closed"]
