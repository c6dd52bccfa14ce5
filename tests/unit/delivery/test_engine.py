"""The delivery engine on real session files with a recording adapter: every operation, the
ACL, the durable states, retries with injected time, poison rows, crash recovery, ordering,
the leak guard and the reports (agent note, owner notice, log)."""

from __future__ import annotations

import os

from nanoclaw_common import messages as m
from nanoclaw_common.errors import PermanentFailure, RetryLater
from nanoclaw_common.states import DestinationType
from nanoclaw_common.store import InboundStore
from tests.unit.delivery.helpers import SECRET, World

# -- text -----------------------------------------------------------------------------------


def test_text_to_origin_chat_is_delivered(world: World) -> None:
    out = world.text("hello")
    assert world.drain() is None
    assert world.telegram.calls == [("text", "100", "", "hello")]
    row = world.delivery(out.id)
    assert (row.status, row.attempts, row.platform_message_id) == ("delivered", 1, "telegram-1")
    assert world.deps.counters.delivered == 1


def test_rows_go_out_in_seq_order_once(world: World) -> None:
    for n in range(5):
        world.text(f"m{n}")
    world.drain()
    world.drain()  # nothing new: nothing sent twice
    assert world.telegram.texts() == [f"m{n}" for n in range(5)]


def test_long_text_is_split_and_files_ride_on_the_first_chunk(world: World) -> None:
    world.adapters["telegram"] = type(world.telegram)("telegram", text_limit=20)
    body = "first paragraph.\n\nsecond one is here\nthird line words go on"
    out = world.write(m.SendText(text=body, files=["a.txt"]))
    folder = world.paths.outbox / out.id
    folder.mkdir(parents=True)
    (folder / "a.txt").write_bytes(b"data")
    world.drain()
    assert world.telegram.texts() == [
        "first paragraph.",
        "second one is here",
        "third line words go",
        "on",
    ]
    assert world.telegram.files[0] == [("a.txt", b"data")]
    assert all(not f for f in world.telegram.files[1:])
    assert world.delivery(out.id).platform_message_id == "telegram-1"
    assert not folder.exists()  # removed after success


def test_files_only_message(world: World) -> None:
    out = world.write(m.SendText(text="", files=["pic.png"]))
    (world.paths.outbox / out.id).mkdir(parents=True)
    (world.paths.outbox / out.id / "pic.png").write_bytes(b"\x89PNG")
    world.drain()
    assert world.telegram.calls == [("text", "100", "", "")]
    assert world.telegram.files == [[("pic.png", b"\x89PNG")]]


def test_symlinked_file_refuses_the_row_and_keeps_the_outbox(world: World) -> None:
    out = world.write(m.SendText(text="see", files=["x"]))
    folder = world.paths.outbox / out.id
    folder.mkdir(parents=True)
    os.symlink("/etc/hostname", folder / "x")
    world.drain()
    assert world.telegram.chat_calls() == []
    row = world.delivery(out.id)
    assert row.status == "denied"
    assert "symlink" in row.last_error
    assert (folder / "x").is_symlink()  # nothing removed or followed


def test_empty_message_is_refused(world: World) -> None:
    out = world.text("   ")
    world.drain()
    assert world.delivery(out.id).status == "denied"


# -- edit, reaction -------------------------------------------------------------------------


def test_edit_and_reaction_use_the_platform_message_id(world: World) -> None:
    first = world.text("draft")
    world.drain()
    world.write(m.EditMessage(message_id=first.id, text="final"))
    world.write(m.AddReaction(message_id="telegram-77", emoji="👍"))
    world.drain()
    assert world.telegram.calls[1:] == [
        ("edit", "100", "", "telegram-1", "final"),
        ("reaction", "100", "", "telegram-77", "👍"),
    ]


def test_edit_of_a_message_not_delivered_yet_waits(world: World) -> None:
    world.telegram.failures.append(RetryLater("down"))
    first = world.text("draft")
    edit = world.write(m.EditMessage(message_id=first.id, text="final"))
    world.drain()
    # The edit is held behind the first message (same chat), not attempted.
    assert world.delivery(edit.id).status == "pending"
    world.clock.advance(2_000)
    world.drain()
    assert [c[0] for c in world.telegram.calls] == ["text", "edit"]


# -- question and display cards ------------------------------------------------------------


def question(qid: str = "q1") -> m.AskQuestion:
    return m.AskQuestion(
        question_id=qid,
        title="Pick",
        question="Which one?",
        options=[m.QuestionOption(label="A", value="a"), m.QuestionOption(label="B", value="b")],
        timeout_s=60,
    )


def test_question_card_records_the_pending_question_for_the_asker(world: World) -> None:
    asked = world.user_message("u1:main", "telegram:55")
    world.write(question(), in_reply_to=asked)
    world.drain()
    assert world.telegram.calls == [("question", "100", "", "q1", "Pick", "a,b")]
    pending = world.central.get_pending_question("q1")
    assert pending is not None
    assert pending.session_id == world.session.id
    assert pending.target_user_id == "telegram:55"  # only this user's click counts
    assert pending.platform_message_id == "telegram-1"
    assert pending.expires_at_ms == world.clock() + 60_000


def test_question_without_a_person_to_answer_is_open_to_the_chat(world: World) -> None:
    world.write(question())
    world.drain()
    pending = world.central.get_pending_question("q1")
    assert pending is not None
    assert pending.target_user_id is None


def test_question_id_of_another_session_is_refused(world: World) -> None:
    other = world.new_session(world.group, world.home_chat)
    world.write(question())
    world.drain()
    theirs = world.outbound  # reuse the writer API for the other session
    from nanoclaw_common.store import OutboundStore

    their_out = OutboundStore(world.layout.session(other.agent_group_id, other.id).outbound_db)
    from nanoclaw_common.store.outbound import NewOutbound

    written = their_out.insert_message(NewOutbound(content=question()), now=world.clock())
    their_out.close()
    world.drain(other)
    store = world.inbound(other)
    assert store.get_delivery(written.id).status == "denied"  # type: ignore[union-attr]
    store.close()
    assert theirs is world.outbound
    assert world.central.get_pending_question("q1").session_id == world.session.id  # type: ignore[union-attr]


def test_display_card_falls_back_to_text(world: World) -> None:
    card = m.SendCard(
        card=m.Card(
            title="Weather",
            description="Sunny",
            actions=[m.CardAction(label="More", url="https://example.org")],
        )
    )
    world.write(card)
    world.drain()
    assert world.telegram.texts() == ["Weather\n\nSunny\n\nMore: https://example.org"]


def test_display_card_on_a_platform_with_cards(world: World) -> None:
    world.adapters["telegram"] = type(world.telegram)("telegram", supports_cards=True)
    world.write(m.SendCard(card=m.Card(title="Weather"), fallback_text="Weather"))
    world.drain()
    assert world.telegram.calls == [("card", "100", "", "Weather")]


# -- ACL ----------------------------------------------------------------------------------


def test_denied_destination_is_reported_everywhere(world: World, log_lines: list[str]) -> None:
    out = world.text("psst", channel_type="telegram", platform_id="200")
    world.drain()
    row = world.delivery(out.id)
    assert row.status == "denied"
    assert "no destination grants" in row.last_error
    # not sent to chat 200; the owner got one notice in their DM
    assert world.telegram.calls[0][1] == "dm-owner"
    assert "denied" in world.telegram.calls[0][3]
    assert len(world.telegram.calls) == 1
    notes = world.notes()
    assert len(notes) == 1 and "refused" in notes[0][0] and notes[0][1] == 1
    assert any("MESSAGE DROPPED" in line and out.id not in line for line in log_lines)
    # the note is due: the sweeper wakes a stopped session for it (delivery never wakes)
    assert world.due() == [f"delivery-{out.seq}-denied"]
    assert world.deps.counters.denied == 1


def test_destination_row_allows_another_chat(world: World) -> None:
    world.central.add_destination(
        world.group.id, "other", DestinationType.CHANNEL, world.other_chat.id
    )
    world.text("hi there", channel_type="telegram", platform_id="200")
    world.drain()
    assert world.telegram.calls == [("text", "200", "", "hi there")]


def test_unknown_chat_is_denied(world: World) -> None:
    out = world.text("x", channel_type="telegram", platform_id="999")
    world.drain()
    assert "unknown chat" in world.delivery(out.id).last_error


def test_a_session_without_a_chat_cannot_send_unaddressed(world: World) -> None:
    lonely = world.new_session(world.group, None)
    from nanoclaw_common.store import OutboundStore
    from nanoclaw_common.store.outbound import NewOutbound

    store = OutboundStore(world.layout.session(world.group.id, lonely.id).outbound_db)
    out = store.insert_message(NewOutbound(content=m.SendText(text="hi")), now=world.clock())
    store.close()
    world.drain(lonely)
    inbound = world.inbound(lonely)
    row = inbound.get_delivery(out.id)
    inbound.close()
    assert row is not None and row.status == "denied"
    assert "no destination" in (row.last_error or "")


def test_refusal_notes_are_rate_limited_triggers(world: World) -> None:
    for _ in range(3):
        world.text("psst", channel_type="telegram", platform_id="200")
    world.drain()
    assert [trigger for _text, trigger, _w in world.notes()] == [1, 0, 0]
    # one owner notice for the group within the interval
    assert sum(1 for c in world.telegram.calls if c[1] == "dm-owner") == 1


# -- retries, failures --------------------------------------------------------------------


def test_missing_adapter_retries_then_fails(world: World) -> None:
    out = world.text("to slack", channel_type="discord", platform_id="1")
    world.central.create_messaging_group("discord", "1", now=world.clock())
    chat = world.central.find_messaging_group("discord", "1")
    assert chat is not None
    world.central.add_destination(world.group.id, "disc", DestinationType.CHANNEL, chat.id)
    due = world.drain()
    row = world.delivery(out.id)
    assert (row.status, row.attempts) == ("retry", 1)
    assert "no discord adapter" in row.last_error
    assert due == world.clock() + 2_000
    for wait in (2_000, 4_000, 8_000):
        assert world.drain() == due  # not due yet: nothing happens
        world.clock.advance(wait)
        due = world.drain() or 0
    row = world.delivery(out.id)
    assert (row.status, row.attempts) == ("failed", 4)
    assert "gave up after 4 attempts" in row.last_error
    assert world.deps.counters.failed == 1
    assert any("could not be delivered" in text for text, _t, _w in world.notes())


def test_disconnected_adapter_is_never_delivered(world: World) -> None:
    world.telegram.connected = False
    out = world.text("hello")
    world.drain()
    assert world.delivery(out.id).status == "retry"
    world.telegram.connected = True
    world.clock.advance(2_000)
    world.drain()
    assert world.delivery(out.id).status == "delivered"


def test_adapter_down_for_a_minute_then_back(make_settings: object) -> None:
    """A platform refusing for 60 s of (injected) time, with the default attempt budget:
    the message arrives once, when it comes back, and nothing is lost."""
    from tests.unit.delivery.helpers import make_world

    world = make_world(make_settings())  # type: ignore[operator]
    try:
        down_until = world.clock() + 60_000
        world.adapters["telegram"] = flaky = type(world.telegram)("telegram")
        out = world.text("are you there?")
        attempts = 0
        while (row := world.delivery(out.id)) is None or row.status != "delivered":
            if world.clock() < down_until:
                flaky.failures.append(RetryLater("502 Bad Gateway"))
            due = world.drain()
            attempts += 1
            if due is not None:
                world.clock.value = due
            assert attempts < 20
        row = world.delivery(out.id)
        assert row.attempts == 6 and row.status == "delivered"
        assert flaky.texts() == ["are you there?"]
    finally:
        world.close()
        world.central.close()


def test_retry_later_delay_is_honoured(world: World) -> None:
    world.telegram.failures.append(RetryLater("429", delay_s=7))
    assert world.drain() is None  # nothing yet
    out = world.text("x")
    world.telegram.failures.append(RetryLater("429", delay_s=7))
    assert world.drain() == world.clock() + 7_000
    assert world.delivery(out.id).status == "retry"


def test_permanent_failure_fails_at_once(world: World) -> None:
    world.telegram.failures.append(PermanentFailure("chat not found"))
    out = world.text("x")
    world.drain()
    row = world.delivery(out.id)
    assert (row.status, row.attempts, row.last_error) == ("failed", 1, "chat not found")


def test_unexpected_exception_is_retryable(world: World) -> None:
    world.telegram.failures.append(ValueError("adapter bug"))
    out = world.text("x")
    world.drain()
    assert world.delivery(out.id).status == "retry"


def test_poison_row_fails_at_once_without_an_attempt(world: World) -> None:
    out = world.text("placeholder")
    world.outbound.db.execute(
        "UPDATE messages_out SET content = ? WHERE id = ?", ('{"type":"text","text":5}', out.id)
    )
    world.drain()
    row = world.delivery(out.id)
    assert (row.status, row.attempts) == ("failed", 0)
    assert "invalid outbound content" in row.last_error
    world.clock.advance(10_000_000)
    world.drain()
    assert world.telegram.texts() == []  # never retried


def test_a_row_left_in_sending_is_sent_again(world: World) -> None:
    out = world.text("interrupted")
    store = InboundStore(world.paths.inbound_db)
    store.record_outbound(out.id, out.seq, now=world.clock())
    store.begin_attempt(out.id, now=world.clock())  # the crash happened here
    store.close()
    world.drain()
    row = world.delivery(out.id)
    assert (row.status, row.attempts) == ("delivered", 2)
    assert world.telegram.texts() == ["interrupted"]
    assert world.deps.counters.resent_after_restart == 1


def test_a_crash_on_the_last_attempt_fails_the_row(world: World) -> None:
    out = world.text("interrupted")
    store = InboundStore(world.paths.inbound_db)
    store.record_outbound(out.id, out.seq, now=world.clock())
    for _ in range(4):
        store.begin_attempt(out.id, now=world.clock())
    store.close()
    world.drain()
    row = world.delivery(out.id)
    assert row.status == "failed" and "interrupted by a restart" in row.last_error
    assert world.telegram.texts() == []


def test_a_retrying_row_holds_back_its_chat_but_not_others(world: World) -> None:
    world.central.add_destination(
        world.group.id, "other", DestinationType.CHANNEL, world.other_chat.id
    )
    world.telegram.failures.append(RetryLater("flaky"))
    first = world.text("one")
    second = world.text("two")
    elsewhere = world.text("three", channel_type="telegram", platform_id="200")
    world.drain()
    assert world.delivery(first.id).status == "retry"
    assert world.delivery(second.id).status == "pending"
    assert world.delivery(elsewhere.id).status == "delivered"
    world.clock.advance(2_000)
    world.drain()
    assert world.telegram.texts() == ["three", "one", "two"]


def test_deliver_after_defers_without_holding_others(world: World) -> None:
    later = world.write(m.SendText(text="later"), deliver_after_ms=world.clock() + 5_000)
    world.text("now")
    assert world.drain() == world.clock() + 5_000
    assert world.telegram.texts() == ["now"]
    assert world.delivery(later.id).attempts == 0
    world.clock.advance(5_000)
    world.drain()
    assert world.telegram.texts() == ["now", "later"]


# -- leak guard ---------------------------------------------------------------------------


def test_leak_guard_blocks_a_secret_in_text(world: World) -> None:
    out = world.text(f"the key is {SECRET}")
    world.drain()
    row = world.delivery(out.id)
    assert row.status == "denied" and "leak guard" in row.last_error
    assert world.telegram.texts() == []
    assert all(SECRET not in " ".join(c) for c in world.telegram.calls)
    assert all(SECRET not in text for text, _t, _w in world.notes())


def test_leak_guard_blocks_a_secret_in_a_file(world: World) -> None:
    out = world.write(m.SendText(text="report", files=["env.txt"]))
    (world.paths.outbox / out.id).mkdir(parents=True)
    (world.paths.outbox / out.id / "env.txt").write_text(f"KEY={SECRET}\n")
    world.drain()
    assert world.delivery(out.id).status == "denied"
    assert world.telegram.texts() == []


def test_leak_guard_covers_cards_and_questions(world: World) -> None:
    a = world.write(m.SendCard(card=m.Card(title="t", description=SECRET)))
    b = world.write(
        m.AskQuestion(
            question_id="q",
            title="t",
            question=SECRET,
            options=[m.QuestionOption(label="x", value="x")],
        )
    )
    world.drain()
    assert world.delivery(a.id).status == "denied"
    assert world.delivery(b.id).status == "denied"
    assert world.central.get_pending_question("q") is None


def test_outbox_left_by_a_crash_after_delivery_is_swept(world: World) -> None:
    out = world.write(m.SendText(text="with file", files=["f.txt"]))
    folder = world.paths.outbox / out.id
    folder.mkdir(parents=True)
    (folder / "f.txt").write_text("x")
    world.drain()
    assert not folder.exists()
    # as if the process died between "delivered" and the cleanup
    folder.mkdir()
    (folder / "f.txt").write_text("x")
    failed = world.write(m.SendText(text="keep my file", files=["g.txt"]))
    kept = world.paths.outbox / failed.id
    kept.mkdir()
    (kept / "g.txt").write_text("y")
    world.telegram.failures.append(PermanentFailure("chat not found"))
    world.drain()  # a fresh worker: a restarted delivery
    assert not folder.exists()
    assert world.delivery(failed.id).status == "failed"
    assert (kept / "g.txt").exists()  # an operator retry still has it
    assert world.telegram.texts() == ["with file"]


def test_a_refused_row_interrupted_after_its_note_is_noted_once(world: World) -> None:
    out = world.text("psst", channel_type="telegram", platform_id="200")
    world.drain()
    store = InboundStore(world.paths.inbound_db)
    # the crash point: note written, row not yet settled
    store.db.execute("UPDATE deliveries SET status = 'sending' WHERE message_out_id = ?", (out.id,))
    store.close()
    world.drain()
    assert world.delivery(out.id).status == "denied"
    assert len(world.notes()) == 1


def test_crash_points_in_the_docs_name_real_tests() -> None:
    """Every test docs/delivery.md cites for a crash point exists."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    doc = (root / "docs" / "delivery.md").read_text()
    cited = set(re.findall(r"`(test_[a-z0-9_]+)`", doc))
    assert len(cited) >= 10
    sources = "".join(p.read_text() for p in (root / "tests").rglob("test_*.py"))
    missing = [name for name in cited if f"def {name}(" not in sources]
    assert missing == []
