"""The delivery engine on real session files with a recording adapter: every operation, the
ACL, the durable states, retries with injected time, poison rows, crash recovery, ordering,
the leak guard and the reports (agent note, owner notice, log)."""

from __future__ import annotations

import os
from pathlib import Path

from nanoclaw_common import messages as m
from nanoclaw_common.errors import PermanentFailure, RetryLater
from nanoclaw_common.states import DestinationType
from nanoclaw_common.store import InboundStore, OutboundStore
from nanoclaw_common.store.outbound import NewOutbound
from nanoclaw_delivery.engine import backoff_ms
from tests.conftest import SettingsFactory
from tests.delivery_world import SECRET, World
from tests.fakes.recording import RecordingAdapter

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


def test_long_text_is_split_and_files_follow_one_per_message(world: World) -> None:
    world.adapters["telegram"] = type(world.telegram)("telegram", text_limit=20)
    body = "first paragraph.\n\nsecond one is here\nthird line words go on"
    out = world.write(m.SendText(text=body, files=["a.txt", "b.txt"]))
    folder = world.paths.outbox / out.id
    folder.mkdir(parents=True)
    (folder / "a.txt").write_bytes(b"data")
    (folder / "b.txt").write_bytes(b"more")
    world.drain()
    assert world.telegram.texts() == [
        "first paragraph.",
        "second one is here",
        "third line words go",
        "on",
        "",
        "",
    ]
    assert world.telegram.files == [[], [], [], [], [("a.txt", b"data")], [("b.txt", b"more")]]
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
    [card] = world.telegram.calls
    assert card[3] != "q1"  # never the id the container chose
    from nanoclaw_delivery.operations import host_question_id

    key = host_question_id(world.session.id, "q1")
    assert key.startswith("aq-") and key != "q1"
    # The card carries the host's key, never the id the container chose.
    assert world.telegram.calls == [("question", "100", "", key, "Pick", "a,b")]
    pending = world.central.get_pending_question(key)
    assert pending is not None
    assert world.central.agent_question_id(key) == "q1"  # the answer goes back as q1
    assert pending.session_id == world.session.id
    assert pending.target_user_id == "telegram:55"  # only this user's click counts
    assert pending.platform_message_id == "telegram-1"
    assert pending.expires_at_ms == world.clock() + 60_000


def test_question_without_a_person_to_answer_is_open_to_the_chat(world: World) -> None:
    from nanoclaw_delivery.operations import host_question_id

    world.write(question())
    world.drain()
    pending = world.central.get_pending_question(host_question_id(world.session.id, "q1"))
    assert pending is not None
    assert pending.target_user_id is None


def test_question_ids_are_per_session(world: World) -> None:
    """Two sessions asking with the same id get two cards with two keys: one agent can
    neither take over nor answer another session's question."""
    other = world.new_session(world.group, world.home_chat)
    world.write(question())
    world.drain()
    their_out = OutboundStore(world.layout.session(other.agent_group_id, other.id).outbound_db)
    written = their_out.insert_message(NewOutbound(content=question()), now=world.clock())
    their_out.close()
    world.drain(other)
    store = world.inbound(other)
    assert store.get_delivery(written.id).status == "delivered"  # type: ignore[union-attr]
    store.close()
    from nanoclaw_delivery.operations import host_question_id

    mine = world.central.get_pending_question(host_question_id(world.session.id, "q1"))
    theirs = world.central.get_pending_question(host_question_id(other.id, "q1"))
    assert mine is not None and mine.session_id == world.session.id
    assert theirs is not None and theirs.session_id == other.id
    assert [c[3] for c in world.telegram.calls] == [mine.question_id, theirs.question_id]


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


def attempt_times_ms(max_attempts: int, base_s: float, max_s: float) -> list[int]:
    """When each attempt of a row first seen at 0 is made, by construction of the backoff."""
    times, at = [0], 0
    for attempt in range(1, max_attempts):
        at += backoff_ms(attempt, base_s, max_s)
        times.append(at)
    return times


def test_adapter_down_for_a_minute_then_back(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """A platform refusing for a minute of (injected) time, with the default attempt budget:
    the message arrives once, at the first attempt after the platform came back, and
    nothing is lost. The attempt times are computed from the settings, so the outcome holds
    by construction whatever the margin; a second outage ending just after the last attempt
    shows the budget's edge."""
    from tests.delivery_world import make_world

    settings = make_settings()
    times = attempt_times_ms(
        settings.delivery_max_attempts,
        settings.delivery_backoff_base_s,
        settings.delivery_backoff_max_s,
    )
    assert times[-1] >= 60_000  # the default budget reaches past a minute
    for outage_ms, delivered in ((60_000, True), (times[-1] + 1, False)):
        home = str(tmp_path / f"outage-{outage_ms}")
        world = make_world(make_settings(home=home))
        try:
            start = world.clock()
            world.adapters["telegram"] = flaky = type(world.telegram)("telegram")
            out = world.text("are you there?")
            tried_at: list[int] = []
            while (row := world.delivery(out.id)) is None or row.status in ("pending", "retry"):
                tried_at.append(world.clock() - start)
                if world.clock() - start < outage_ms:
                    flaky.failures.append(RetryLater("502 Bad Gateway"))
                due = world.drain()
                if due is not None:
                    world.clock.value = due
            row = world.delivery(out.id)
            first_after = next((n for n, t in enumerate(times) if t >= outage_ms), None)
            if delivered:
                assert first_after is not None
                assert tried_at == times[: first_after + 1]
                assert (row.status, row.attempts) == ("delivered", first_after + 1)
                assert flaky.texts() == ["are you there?"]
            else:
                assert tried_at == times
                assert (row.status, row.attempts) == ("failed", len(times))
                assert flaky.texts() == []
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
    assert world.central.list_pending_questions() == []


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
    assert world.telegram.texts() == ["with file", ""]  # the text, then the file


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


# -- backlogs -------------------------------------------------------------------------------


def test_a_due_row_past_the_first_page_of_open_rows_is_not_starved(world: World) -> None:
    """More open rows than one query returns (``OPEN_PAGE_ROWS``), as after a restart: the
    first page is all held behind a retrying row, and the due row to another chat after it
    still goes out in the same drain."""
    world.central.add_destination(
        world.group.id, "other", DestinationType.CHANNEL, world.other_chat.id
    )
    held = [world.text(f"held {n}") for n in range(1000)]
    due = world.text("to the other chat", channel_type="telegram", platform_id="200")
    store = InboundStore(world.paths.inbound_db)
    store.record_outbounds([(w.id, w.seq) for w in [*held, due]], now=world.clock())
    store.begin_attempt(held[0].id, now=world.clock())
    # The first row failed and waits a minute: every later row to chat 100 waits behind it.
    store.finish_delivery(
        held[0].id, "retry", error="502", next_attempt_at_ms=world.clock() + 60_000
    )
    store.close()
    assert world.drain() == world.clock() + 60_000
    assert world.telegram.texts() == ["to the other chat"]
    assert world.delivery(due.id).status == "delivered"
    assert world.delivery(held[1].id).status == "pending"
    from nanoclaw_delivery.engine import OPEN_PAGE_ROWS

    assert len(held) >= OPEN_PAGE_ROWS  # the due row was past the first page


# -- parts: chunks and files ----------------------------------------------------------------


def split_world(world: World) -> tuple[str, list[str]]:
    """A 4-chunk text (limit 20) with two files; returns (row id, the chunks)."""
    world.adapters["telegram"] = type(world.telegram)("telegram", text_limit=20)
    out = world.write(
        m.SendText(
            text="first paragraph.\n\nsecond one is here\nthird line words go on",
            files=["a.txt", "b.txt"],
        )
    )
    folder = world.paths.outbox / out.id
    folder.mkdir(parents=True)
    (folder / "a.txt").write_bytes(b"A")
    (folder / "b.txt").write_bytes(b"B")
    return out.id, ["first paragraph.", "second one is here", "third line words go", "on"]


def test_a_retry_resumes_after_the_chunks_already_sent(world: World) -> None:
    """Chunk 3 of 4 hits a rate limit: the retry sends chunks 3 and 4 and the files, never
    chunks 1 and 2 again, and the row keeps chunk 1's id."""
    out, chunks = split_world(world)
    world.telegram.fail_at[3] = RetryLater("429 Too Many Requests", delay_s=3)
    world.drain()
    row = world.delivery(out)
    assert (row.status, row.platform_message_id) == ("retry", "telegram-1")
    assert world.telegram.texts() == chunks[:2]
    world.clock.advance(3_000)
    world.drain()
    assert world.telegram.texts() == [*chunks, "", ""]  # each chunk once, then the files
    assert [f for f in world.telegram.files if f] == [[("a.txt", b"A")], [("b.txt", b"B")]]
    row = world.delivery(out)
    assert (row.status, row.attempts, row.platform_message_id) == ("delivered", 2, "telegram-1")


def test_a_failed_file_upload_is_retried_alone(world: World) -> None:
    out, chunks = split_world(world)
    world.telegram.fail_at[6] = RetryLater("upload timed out")  # the second file
    world.drain()
    assert world.delivery(out).status == "retry"
    world.clock.advance(2_000)
    world.drain()
    assert world.delivery(out).status == "delivered"
    assert world.telegram.texts() == [*chunks, "", ""]
    assert [f for f in world.telegram.files if f] == [[("a.txt", b"A")], [("b.txt", b"B")]]


def test_a_crash_between_chunks_resumes_after_the_last_recorded_one(world: World) -> None:
    """docs/delivery.md crash row 9: killed after chunk 2 was accepted and recorded."""
    out, chunks = split_world(world)
    store = InboundStore(world.paths.inbound_db)
    store.record_outbound(out, 1, now=world.clock())
    store.begin_attempt(out, now=world.clock())
    store.record_part(out, 1, "telegram-41", now=world.clock())
    store.record_part(out, 2, now=world.clock())
    store.close()
    world.drain()
    assert world.telegram.texts() == [*chunks[2:], "", ""]
    row = world.delivery(out)
    assert (row.status, row.platform_message_id) == ("delivered", "telegram-41")


def test_a_long_fallback_card_resumes_too(world: World) -> None:
    world.adapters["telegram"] = type(world.telegram)("telegram", text_limit=20)
    world.telegram.fail_at[2] = RetryLater("429")
    out = world.write(m.SendCard(card=m.Card(title="Weather today", description="Sunny all day")))
    world.drain()
    world.clock.advance(2_000)
    world.drain()
    assert world.telegram.texts() == ["Weather today", "Sunny all day"]
    assert world.delivery(out.id).status == "delivered"


# -- the leak guard on every path -----------------------------------------------------------


def assert_no_secret_anywhere(world: World, log_lines: list[str], *out_ids: str) -> None:
    """Not in what was sent, not in last_error, not in the agent's notes, not in the owner's
    notices (sent or queued), not in the log."""
    for call in world.telegram.calls + world.adapters["slack"].calls:
        assert SECRET not in " ".join(call)
    for out_id in out_ids:
        assert SECRET not in (world.delivery(out_id).last_error or "")
    assert all(SECRET not in text for text, _t, _w in world.notes())
    assert all(SECRET not in n.text for n in world.notices.list())
    assert all(SECRET not in line for line in log_lines)


def test_leak_guard_covers_file_names(world: World, log_lines: list[str]) -> None:
    name = f"{SECRET}.txt"
    out = world.write(m.SendText(text="see attached", files=[name]))
    (world.paths.outbox / out.id).mkdir(parents=True)
    (world.paths.outbox / out.id / name).write_bytes(b"harmless")
    world.drain()
    row = world.delivery(out.id)
    assert row.status == "denied" and "leak guard" in row.last_error
    assert world.telegram.chat_calls() == []
    assert_no_secret_anywhere(world, log_lines, out.id)


def test_refusal_reasons_never_repeat_a_secret(world: World, log_lines: list[str]) -> None:
    """The ACL quotes the chat the container named; here the chat id is a secret."""
    out = world.text("hello", channel_type="telegram", platform_id=SECRET)
    world.drain()
    row = world.delivery(out.id)
    assert row.status == "denied"
    assert row.last_error == "unknown chat telegram:[redacted secret]"
    assert any("[redacted secret]" in text for text, _t, _w in world.notes())
    owner_dm = [c[3] for c in world.telegram.calls if c[1] == "dm-owner"]
    assert len(owner_dm) == 1 and "[redacted secret]" in owner_dm[0]
    assert_no_secret_anywhere(world, log_lines, out.id)


def test_platform_errors_quoting_a_secret_are_redacted(world: World, log_lines: list[str]) -> None:
    """httpx-style errors can quote the request URL, which holds the bot token."""
    url = f"https://api.telegram.org/bot{SECRET}/sendMessage"
    world.telegram.failures += [
        RetryLater(f"502 from {url}"),
        ValueError(f"unexpected reply from {url}"),
        RetryLater(f"502 from {url}"),
        PermanentFailure(f"400 from {url}"),
    ]
    out = world.text("hello")
    for _ in range(4):
        world.drain()
        assert SECRET not in (world.delivery(out.id).last_error or "")
        world.clock.advance(60_000)
    assert world.delivery(out.id).status == "failed"
    assert_no_secret_anywhere(world, log_lines, out.id)


def test_leak_guard_covers_reactions_edits_and_threads(world: World) -> None:
    reaction = world.write(m.AddReaction(message_id="telegram-1", emoji=SECRET))
    edit = world.write(m.EditMessage(message_id=SECRET, text="fixed"))
    thread = world.write(
        m.SendText(text="in a thread"), channel_type="telegram", platform_id="100", thread_id=SECRET
    )
    world.drain()
    for out in (reaction, edit, thread):
        row = world.delivery(out.id)
        assert row.status == "denied" and "leak guard" in row.last_error, out
    assert world.telegram.chat_calls() == []


# -- ordering -------------------------------------------------------------------------------


def test_unaddressed_and_addressed_rows_to_the_same_chat_keep_their_order(world: World) -> None:
    """A row with no routing and one naming the session's chat go to the same chat: the
    second waits behind the first's retry instead of overtaking it."""
    world.telegram.failures.append(RetryLater("flaky"))
    first = world.text("one")
    second = world.text("two", channel_type="telegram", platform_id="100")
    world.drain()
    assert world.delivery(first.id).status == "retry"
    assert world.delivery(second.id).status == "pending"
    assert world.telegram.texts() == []
    world.clock.advance(2_000)
    world.drain()
    assert world.telegram.texts() == ["one", "two"]


# -- a vanished row -------------------------------------------------------------------------


def test_a_vanished_outbound_row_is_reported(world: World, log_lines: list[str]) -> None:
    out = world.text("soon gone")
    store = InboundStore(world.paths.inbound_db)
    store.record_outbound(out.id, out.seq, now=world.clock())
    store.close()
    world.outbound.db.execute("DELETE FROM messages_out WHERE id = ?", (out.id,))
    world.drain()
    row = world.delivery(out.id)
    assert row.status == "failed" and "gone" in row.last_error
    notes = world.notes()
    assert len(notes) == 1 and f"#{out.seq}" in notes[0][0]
    assert "could not be delivered" in notes[0][0]
    assert any(c[1] == "dm-owner" and "failed" in c[3] for c in world.telegram.calls)
    assert any("MESSAGE DROPPED (failed)" in line for line in log_lines)
    assert world.deps.counters.failed == 1


# -- the terminal's patience ----------------------------------------------------------------


def test_a_reply_to_the_terminal_waits_for_one_to_attach(world: World) -> None:
    """No ``nanoclaw chat`` attached: the reply is retried past the attempt budget, at
    most ``TERMINAL_RETRY_MAX_S`` apart, until the terminal's patience runs out; one that
    attaches within it gets the reply."""
    world.deps.terminal_patience_s = 600.0  # ten minutes, to keep the loop short
    chat = world.central.create_messaging_group("cli", "local", name="terminal")
    session = world.new_session(world.group, chat)
    terminal = world.adapters["cli"] = RecordingAdapter("cli")
    terminal.connected = False  # nobody attached
    outbound = OutboundStore(world.layout.session(world.group.id, session.id).outbound_db)
    try:
        late = outbound.insert_message(NewOutbound(content=m.SendText(text="late")))
        lost = outbound.insert_message(NewOutbound(content=m.SendText(text="lost")))
    finally:
        outbound.close()
    start = world.clock()
    gaps: list[int] = []
    due = world.drain(session)
    while due is not None:
        gaps.append(due - world.clock())
        world.clock.value = due
        if world.clock() - start >= 300_000:
            terminal.connected = True  # the user opens a terminal after five minutes
        due = world.drain(session)
    inbound = world.inbound(session)
    try:
        delivered = inbound.get_delivery(late.id)
        assert delivered is not None and delivered.status == "delivered"
        assert delivered.attempts > world.settings.delivery_max_attempts
    finally:
        inbound.close()
    assert terminal.texts() == ["late", "lost"]
    from nanoclaw_delivery.context import TERMINAL_PATIENCE_S, Deps
    from nanoclaw_delivery.engine import TERMINAL_RETRY_MAX_S

    assert max(gaps) == TERMINAL_RETRY_MAX_S * 1000
    assert Deps.terminal_patience_s == TERMINAL_PATIENCE_S == 24 * 3600  # the default
    # Patience runs out: a row nobody attaches for is failed and reported.
    terminal.connected = False
    outbound = OutboundStore(world.layout.session(world.group.id, session.id).outbound_db)
    try:
        never = outbound.insert_message(NewOutbound(content=m.SendText(text="never")))
    finally:
        outbound.close()
    start = world.clock()
    while (due := world.drain(session)) is not None:
        world.clock.value = due
    inbound = world.inbound(session)
    try:
        gave_up = inbound.get_delivery(never.id)
        assert gave_up is not None and gave_up.status == "failed"
        assert "gave up" in (gave_up.last_error or "")
    finally:
        inbound.close()
    assert world.clock() - start >= 600_000
    assert lost.id != never.id
