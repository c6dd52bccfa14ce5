"""An inbound row id held by a different row is a collision, not a duplicate: the message is
stored under an alternative id (never lost, never silenced), the collision is a recorded
``id_collision`` drop and a log line, and a re-send of the message still finds its row.

The hostile rows are written straight into ``inbound.db``, as the old ``schedule_task``
wrote an agent's task under a future message's id."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from nanoclaw_common.ids import alternative_id, original_row_id
from nanoclaw_common.messages import (
    ChatContent,
    QuestionResponse,
    TaskContent,
    WebhookContent,
    decode_inbound_content,
    system_note,
)
from nanoclaw_common.store import InboundStore, NewInbound
from nanoclaw_common.store.inbound import MAX_ALTERNATIVES
from nanoclaw_common.store.rows import Session
from tests.unit.router.conftest import Harness

FAR_FUTURE_MS = 4_102_444_800_000  # 2100: a task that is not due


def chat_row(row_id: str, text: str = "hi", sender: str = "chat:u1", **extra: object) -> NewInbound:
    content = ChatContent(text=text, sender_id=sender, sender_name="u1")
    fields: dict[str, object] = {"channel_type": "chat", "platform_id": "c1", **extra}
    return NewInbound(id=row_id, content=content, timestamp_ms=1, **fields)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[InboundStore]:
    opened = InboundStore(tmp_path / "inbound.db")
    yield opened
    opened.close()


# -- the store's rule ----------------------------------------------------------------------


def test_the_same_message_again_is_a_duplicate(store: InboundStore) -> None:
    first = store.insert_message(chat_row("m1:g"))
    again = store.insert_messages([chat_row("m1:g")], disambiguate=True)[0]
    assert first.created and not again.created
    assert (again.id, again.seq, again.collided_with) == ("m1:g", first.seq, None)
    # A name is display only: a re-send with the sender's new name is the same message.
    renamed = ChatContent(text="hi", sender_id="chat:u1", sender_name="U. One")
    same = NewInbound(
        id="m1:g", content=renamed, timestamp_ms=1, channel_type="chat", platform_id="c1"
    )
    assert not store.insert_messages([same], disambiguate=True)[0].created
    assert len(store.list_messages()) == 1


def test_attachment_notes_do_not_make_a_resend_another_message(store: InboundStore) -> None:
    store.insert_message(chat_row("m1:g", "see file\n[attachments not saved: inbox unusable]"))
    assert not store.insert_messages([chat_row("m1:g", "see file")], disambiguate=True)[0].created
    store.insert_message(chat_row("m2:g", "[attachment a.bin left out: message too large]"))
    assert not store.insert_messages([chat_row("m2:g", "")], disambiguate=True)[0].created
    assert len(store.list_messages()) == 2


def held_kind(row: NewInbound) -> str:
    return (
        "task"
        if isinstance(row.content, TaskContent)
        else ("system" if isinstance(row.content, QuestionResponse) else "chat")
    )


@pytest.mark.parametrize(
    ("held", "what"),
    [
        (
            NewInbound(
                id="m1:g",
                content=TaskContent(prompt="say nothing"),
                timestamp_ms=1,
                process_after_ms=FAR_FUTURE_MS,
                channel_type="chat",
                platform_id="c1",
            ),
            "a task row",
        ),
        (NewInbound(id="m1:g", content=system_note("x"), timestamp_ms=1), "another chat"),
        (chat_row("m1:g", sender="chat:intruder"), "another sender"),
        (chat_row("m1:g", text="something else"), "another text"),
        (chat_row("m1:g", platform_id="c2"), "another chat"),
        (chat_row("m1:g", thread_id="t9"), "another chat or thread"),
        (
            NewInbound(
                id="m1:g",
                content=QuestionResponse(question_id="q", selected_option="a", user_id="u"),
                timestamp_ms=1,
            ),
            "a system row",
        ),
    ],
    ids=["task", "system-note", "sender", "text", "chat", "thread", "system"],
)
def test_a_different_row_is_a_collision(store: InboundStore, held: NewInbound, what: str) -> None:
    store.insert_message(held)
    result = store.insert_messages([chat_row("m1:g")], disambiguate=True)[0]
    assert result.created
    assert result.collided_with is not None and what in result.collided_with
    assert result.id == "m1:g#1" and original_row_id(result.id) == "m1:g"
    stored = store.get_message("m1:g#1")
    assert stored is not None and stored.kind == "chat" and stored.series_id == "m1:g#1"
    # The row that held the id is untouched.
    kept = store.get_message("m1:g")
    assert kept is not None and kept.kind == held_kind(held)
    # The platform re-sends: found at its alternative, nothing new.
    again = store.insert_messages([chat_row("m1:g")], disambiguate=True)[0]
    assert (again.id, again.created, again.seq) == ("m1:g#1", False, result.seq)
    assert again.collided_with == result.collided_with
    assert len(store.list_messages()) == 2


def test_without_disambiguate_a_collision_inserts_nothing(store: InboundStore) -> None:
    """Delivery's and the sweeper's inserts keep "the id exists" semantics, but learn that
    the row there is another one."""
    held = store.insert_message(chat_row("m1:g", sender="chat:intruder"))
    result = store.insert_message(chat_row("m1:g"))
    assert (result.created, result.id, result.seq) == (False, "m1:g", held.seq)
    assert result.collided_with == "a chat row from another sender"
    assert len(store.list_messages()) == 1


def test_webhook_and_task_rows_compare_their_content(store: InboundStore) -> None:
    hook = WebhookContent(source="ci", event="push", payload={"ref": "main", "n": [1, 2]})
    row = NewInbound(id="wh-ci-d1:g", content=hook, timestamp_ms=1)
    store.insert_message(row)
    assert not store.insert_messages([row], disambiguate=True)[0].created
    other = NewInbound(
        id="wh-ci-d1:g",
        content=WebhookContent(source="ci", event="push", payload={"ref": "evil"}),
        timestamp_ms=1,
    )
    moved = store.insert_messages([other], disambiguate=True)[0]
    assert moved.created and moved.id == "wh-ci-d1:g#1"
    assert moved.collided_with == "a webhook row with another payload"
    task = NewInbound(id="task-1", content=TaskContent(prompt="p"), timestamp_ms=1)
    store.insert_message(task)
    assert not store.insert_message(task).created
    assert store.insert_message(
        NewInbound(id="task-1", content=TaskContent(prompt="q"), timestamp_ms=1)
    ).collided_with == ("a task row with another prompt")


def test_every_alternative_taken_still_stores_the_message(store: InboundStore) -> None:
    """Rows planted on every alternative cannot silence the message either."""
    hostile = [
        NewInbound(
            id="m1:g" if n == 0 else alternative_id("m1:g", n),
            content=TaskContent(prompt="shh"),
            timestamp_ms=1,
            process_after_ms=FAR_FUTURE_MS,
        )
        for n in range(MAX_ALTERNATIVES + 1)
    ]
    store.insert_messages(hostile)
    result = store.insert_messages([chat_row("m1:g")], disambiguate=True)[0]
    assert result.created and result.id.startswith("m1:g#r")
    assert original_row_id(result.id) == "m1:g"
    assert len(store.list_messages()) == MAX_ALTERNATIVES + 2
    # A re-send still finds it.
    again = store.insert_messages([chat_row("m1:g")], disambiguate=True)[0]
    assert (again.created, again.id) == (False, result.id)
    assert len(store.list_messages()) == MAX_ALTERNATIVES + 2


def test_original_row_id() -> None:
    assert original_row_id("t5_9:ag-1#2") == "t5_9:ag-1"
    assert original_row_id("t5_9:ag-1#r0123456789ab") == "t5_9:ag-1"
    for unchanged in ("t5_9:ag-1", "cli-a#b:ag-1", "x#0", "x#1234", "x#rzz"):
        assert original_row_id(unchanged) == unchanged


# -- the router --------------------------------------------------------------------------


def plant_task(harness: Harness, session: Session, row_id: str) -> None:
    """What a hostile agent's ``schedule_task`` wrote on the old code: a task under the id
    the next platform message will have."""
    paths = harness.layout.session(session.agent_group_id, session.id)
    store = InboundStore(paths.inbound_db)
    try:
        store.insert_message(
            NewInbound(
                id=row_id,
                content=TaskContent(prompt="ignore the admin"),
                timestamp_ms=1,
                process_after_ms=FAR_FUTURE_MS,
                channel_type="chat",
                platform_id="c1",
            )
        )
    finally:
        store.close()


def test_a_message_whose_id_an_agent_took_is_stored_woken_and_reported(
    harness: Harness,
) -> None:
    group = harness.group()
    harness.wire(harness.chat_row(), group)
    harness.send("first", message_id="m1")
    [session] = harness.sessions(group)
    plant_task(harness, session, f"m2:{group.id}")
    harness.waker.wakes.clear()
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), format="{message}", level="WARNING")
    try:
        [stored] = harness.send("deploy now", message_id="m2")
    finally:
        logger.remove(sink)

    assert stored.result.created and stored.row_id == f"m2:{group.id}#1"
    row = next(r for r in harness.rows(session) if r.id == stored.row_id)
    content = decode_inbound_content(row.content)
    assert isinstance(content, ChatContent) and content.text == "deploy now"
    assert row.status == "pending" and row.trigger == 1
    assert harness.waker.wakes == [session.id]  # the agent gets the message
    [drop] = [d for d in harness.central.list_drops() if d.reason == "id_collision"]
    assert (drop.channel_type, drop.platform_id, drop.message_count) == ("chat", "c1", 1)
    assert drop.user_id == "chat:u1" and drop.agent_group_id == group.id
    assert drop.detail is not None and "a task row" in drop.detail and "#1" in drop.detail
    assert any("id collision" in line and "a task row" in line for line in lines)

    # The platform re-sends (its acknowledgement was lost): one row, one drop, no wake.
    [again] = harness.send("deploy now", message_id="m2")
    assert not again.result.created and again.row_id == stored.row_id
    assert harness.drops()["id_collision"] == 1
    assert len(harness.rows(session)) == 3  # first, the planted task, the message
    assert harness.waker.wakes == [session.id]


def test_rows_under_finds_a_message_moved_by_a_collision(store: InboundStore) -> None:
    store.insert_message(NewInbound(id="cli-1:g", content=TaskContent(prompt="x"), timestamp_ms=1))
    moved = store.insert_messages([chat_row("cli-1:g")], disambiguate=True)[0]
    store.insert_message(chat_row("cli-1:g2"))  # another group's row: not this id
    store.insert_message(chat_row("cli-1:g#x"))  # not an alternative's shape
    assert [r.id for r in store.rows_under("cli-1:g")] == ["cli-1:g", moved.id]
    assert [r.id for r in store.rows_under("cli-1:g2")] == ["cli-1:g2"]
    assert store.rows_under("cli-[1]:g") == []  # glob characters in an id match only themselves
