"""Every InboundReader/InboundStore and OutboundReader/OutboundStore verb, on real files."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import apsw
import msgspec
import pytest

from nanoclaw_common import messages as m
from nanoclaw_common.errors import NotFound
from nanoclaw_common.states import AckStatus
from nanoclaw_common.store import (
    InboundReader,
    InboundStore,
    NewInbound,
    NewOutbound,
    OutboundReader,
    OutboundStore,
    create_session_files,
    rows,
)
from nanoclaw_common.store.inbound import next_even
from nanoclaw_common.store.migrations import schema_text
from nanoclaw_common.store.outbound import next_odd

NOW = 1_700_000_000_000


def chat(text: str, sender: str = "telegram:7") -> m.ChatContent:
    return m.ChatContent(text=text, sender_id=sender, sender_name="Ann")


def new_in(message_id: str, text: str = "hi", **fields: object) -> NewInbound:
    row = NewInbound(id=message_id, content=chat(text), timestamp_ms=NOW)
    return msgspec.structs.replace(row, **fields)


@pytest.fixture
def inbound(tmp_path: Path) -> Iterator[InboundStore]:
    store = InboundStore(tmp_path / "inbound.db")
    yield store
    store.close()


@pytest.fixture
def outbound(tmp_path: Path) -> Iterator[OutboundStore]:
    (tmp_path / "agent").mkdir()
    store = OutboundStore(tmp_path / "agent" / "outbound.db")
    yield store
    store.close()


def test_parity_helpers() -> None:
    assert [next_even(x) for x in (None, 0, 1, 2, 3, 10)] == [2, 2, 2, 4, 4, 12]
    assert [next_odd(x) for x in (None, 0, 1, 2, 3, 10)] == [1, 1, 3, 3, 5, 11]


def test_session_dbs_use_rollback_journal(inbound: InboundStore, outbound: OutboundStore) -> None:
    assert inbound.db.scalar("PRAGMA journal_mode") == "delete"
    assert outbound.db.scalar("PRAGMA journal_mode") == "delete"
    declared = re.search(r"PRAGMA user_version = (\d+)", schema_text("inbound.sql"))
    assert declared is not None
    assert inbound.db.scalar("PRAGMA user_version") == int(declared[1])


def test_create_session_files_is_idempotent(tmp_path: Path) -> None:
    (tmp_path / "agent").mkdir()
    paths = (tmp_path / "inbound.db", tmp_path / "agent" / "outbound.db")
    create_session_files(*paths)
    store = InboundStore(paths[0])
    store.insert_message(new_in("a"))
    store.close()
    create_session_files(*paths)
    reader = InboundReader(paths[0])
    assert [r.id for r in reader.list_messages()] == ["a"]
    reader.close()


# -- inbound: inserts ----------------------------------------------------------------------


def test_insert_is_idempotent_with_even_seq(inbound: InboundStore) -> None:
    first = inbound.insert_message(new_in("m1:ag"), now=NOW)
    assert (first.seq, first.created) == (2, True)
    again = inbound.insert_message(new_in("m1:ag", text="changed"), now=NOW)
    assert (again.seq, again.created) == (2, False)
    second = inbound.insert_message(new_in("m2:ag"), now=NOW)
    assert second.seq == 4
    row = inbound.get_message("m1:ag")
    assert row is not None
    assert m.decode_inbound_content(row.content) == chat("hi")
    assert (row.kind, row.status, row.trigger, row.series_id, row.tries) == (
        "chat",
        "pending",
        1,
        "m1:ag",
        0,
    )
    assert inbound.get_by_seq(4).id == "m2:ag"  # type: ignore[union-attr]
    assert inbound.max_seq() == 4


def test_insert_batch_in_one_transaction(inbound: InboundStore) -> None:
    results = inbound.insert_messages([new_in("a"), new_in("b"), new_in("a")], now=NOW)
    assert [(r.id, r.seq, r.created) for r in results] == [
        ("a", 2, True),
        ("b", 4, True),
        ("a", 2, False),
    ]


def test_insert_kinds_and_fields(inbound: InboundStore) -> None:
    inbound.insert_messages(
        [
            NewInbound(
                id="task-1",
                content=m.TaskContent(prompt="report", script=None),
                timestamp_ms=NOW,
                process_after_ms=NOW + 60_000,
                recurrence="0 9 * * *",
                channel_type="telegram",
                platform_id="t:1",
                thread_id="th",
            ),
            NewInbound(
                id="wh-1",
                content=m.WebhookContent(source="ci", event="push", payload={"ok": True}),
                timestamp_ms=NOW,
            ),
            NewInbound(
                id="qr-1",
                content=m.QuestionResponse(question_id="q1", selected_option="yes", user_id="u"),
                timestamp_ms=NOW,
            ),
            NewInbound(
                id="note-1",
                content=m.system_note("restarted"),
                timestamp_ms=NOW,
                trigger=False,
                on_wake=True,
                source_session_id="sess-x",
            ),
        ]
    )
    kinds = {r.id: r.kind for r in inbound.list_messages()}
    assert kinds == {"task-1": "task", "wh-1": "webhook", "qr-1": "system", "note-1": "chat"}
    task = inbound.get_message("task-1")
    assert task is not None
    assert (task.recurrence, task.process_after_ms, task.thread_id) == (
        "0 9 * * *",
        NOW + 60_000,
        "th",
    )
    note = inbound.get_message("note-1")
    assert note is not None and (note.trigger, note.on_wake, note.source_session_id) == (
        0,
        1,
        "sess-x",
    )


# -- inbound: what the runner reads --------------------------------------------------------


def test_pending_messages_rules(inbound: InboundStore) -> None:
    inbound.insert_messages(
        [
            new_in("old"),
            new_in("ctx", trigger=False),
            new_in("later", process_after_ms=NOW + 10_000),
            new_in("wake-only", on_wake=True),
            new_in("done"),
            new_in("new"),
        ]
    )
    inbound.set_status("done", "completed")
    first = inbound.pending_messages(limit=10, first_poll=True, now=NOW)
    assert [r.id for r in first] == ["old", "ctx", "wake-only", "new"]  # oldest first
    later = inbound.pending_messages(limit=10, first_poll=False, now=NOW)
    assert [r.id for r in later] == ["old", "ctx", "new"]
    due = inbound.pending_messages(limit=10, first_poll=False, now=NOW + 10_000)
    assert [r.id for r in due] == ["old", "ctx", "later", "new"]
    capped = inbound.pending_messages(limit=2, first_poll=False, now=NOW)
    assert [r.id for r in capped] == ["ctx", "new"]  # the newest N
    # Excluded ids do not use up the batch (upstream counted them against the LIMIT).
    skipping = inbound.pending_messages(limit=2, first_poll=False, exclude={"new"}, now=NOW)
    assert [r.id for r in skipping] == ["old", "ctx"]


def test_list_messages_by_status(inbound: InboundStore) -> None:
    inbound.insert_messages([new_in("a"), new_in("b")])
    inbound.set_status("a", "completed")
    assert [r.id for r in inbound.list_messages("pending")] == ["b"]
    assert [r.id for r in inbound.list_messages()] == ["a", "b"]
    with pytest.raises(NotFound):
        inbound.set_status("nope", "completed")
    with pytest.raises(ValueError, match="exploded"):
        inbound.set_status("a", "exploded")


def test_latest_from_address(inbound: InboundStore) -> None:
    inbound.insert_messages(
        [
            new_in("x1", channel_type="slack", platform_id="C1", thread_id="t1"),
            new_in("x2", channel_type="slack", platform_id="C1", thread_id="t2"),
            new_in("y1", channel_type="slack", platform_id="C2"),
        ]
    )
    latest = inbound.latest_from("slack", "C1")
    assert latest is not None and (latest.id, latest.thread_id) == ("x2", "t2")
    assert inbound.latest_from("slack", "C3") is None


def test_find_question_response(inbound: InboundStore) -> None:
    inbound.insert_messages(
        [
            NewInbound(
                id="qr-a",
                content=m.QuestionResponse(question_id="q1", selected_option="no", user_id="u"),
                timestamp_ms=NOW,
            ),
            new_in("chat-mentioning-q1", text='"question_id":"q1"'),
        ]
    )
    found = inbound.find_question_response("q1")
    assert found is not None and found.id == "qr-a"
    assert inbound.find_question_response("q1", exclude={"qr-a"}) is None
    assert inbound.find_question_response("q2") is None


def test_list_tasks_newest_per_series(inbound: InboundStore) -> None:
    def task(task_id: str, series: str, after: int) -> NewInbound:
        return NewInbound(
            id=task_id,
            content=m.TaskContent(prompt=task_id),
            timestamp_ms=NOW,
            process_after_ms=after,
            series_id=series,
        )

    inbound.insert_messages(
        [task("t1", "s1", NOW), task("t2", "s2", NOW + 5), task("t1b", "s1", NOW + 9)]
    )
    inbound.set_status("t1", "completed")
    inbound.set_status("t2", "paused")
    assert [r.id for r in inbound.list_tasks()] == ["t2", "t1b"]
    assert [r.id for r in inbound.list_tasks("paused")] == ["t2"]


def test_destinations_and_routing(inbound: InboundStore) -> None:
    assert inbound.routing() == rows.Routing(None, None, None)
    entries = [
        rows.DestinationEntry("family", "Family", "channel", "telegram", "t:1", None),
        rows.DestinationEntry("research", "Research", "agent", None, None, "ag-2"),
    ]
    inbound.replace_destinations(entries)
    inbound.replace_destinations(entries)  # wholesale replacement, not accumulation
    assert inbound.destinations() == entries
    assert inbound.find_destination("family") == entries[0]
    assert inbound.find_destination("nope") is None
    assert inbound.find_destination_by_address("telegram", "t:1") == entries[0]
    assert inbound.find_destination_by_address("agent", "ag-2") == entries[1]
    assert inbound.find_destination_by_address("telegram", "t:2") is None
    inbound.set_routing(rows.Routing("telegram", "t:1", None))
    inbound.set_routing(rows.Routing("telegram", "t:1", "th-9"))
    assert inbound.routing() == rows.Routing("telegram", "t:1", "th-9")


# -- inbound: host bookkeeping -------------------------------------------------------------


def test_sync_acks_keeps_failed_failed(inbound: InboundStore) -> None:
    inbound.insert_messages([new_in("a"), new_in("b"), new_in("c")])
    acks = [
        rows.Ack("a", "completed", "run-1", NOW),
        rows.Ack("b", "failed", "run-1", NOW),
        rows.Ack("c", "processing", "run-1", NOW),
        rows.Ack("ghost", "completed", "run-1", NOW),
    ]
    assert inbound.sync_acks(acks) == 2
    assert {r.id: r.status for r in inbound.list_messages()} == {
        "a": "completed",
        "b": "failed",
        "c": "pending",
    }
    assert inbound.sync_acks(acks) == 0


def test_reschedule_and_due(inbound: InboundStore) -> None:
    inbound.insert_messages([new_in("a"), new_in("ctx", trigger=False)])
    assert inbound.count_due(now=NOW) == 1  # context rows never wake
    inbound.reschedule("a", tries=1, process_after_ms=NOW + 5_000)
    row = inbound.get_message("a")
    assert row is not None and (row.tries, row.process_after_ms) == (1, NOW + 5_000)
    assert inbound.count_due(now=NOW) == 0
    assert inbound.count_due(now=NOW + 5_000) == 1
    assert inbound.next_due_ms() == NOW + 5_000


def test_delivery_lifecycle(inbound: InboundStore) -> None:
    assert inbound.record_outbound("out-1", 3, now=NOW)
    assert not inbound.record_outbound("out-1", 3, now=NOW)
    inbound.record_outbound("out-2", 5, now=NOW)
    assert inbound.delivery_watermark() == 5
    assert inbound.begin_attempt("out-1", now=NOW + 1) == 1
    # A crash here leaves "sending": it is still due, and the next attempt counts as 2.
    assert [d.message_out_id for d in inbound.due_deliveries(now=NOW + 2)] == ["out-1", "out-2"]
    assert inbound.begin_attempt("out-1", now=NOW + 3) == 2
    inbound.finish_delivery(
        "out-1", "retry", error="429", next_attempt_at_ms=NOW + 1_000, now=NOW + 4
    )
    assert [d.message_out_id for d in inbound.due_deliveries(now=NOW + 500)] == ["out-2"]
    assert [d.message_out_id for d in inbound.due_deliveries(now=NOW + 1_000)] == ["out-1", "out-2"]
    inbound.begin_attempt("out-1", now=NOW + 1_000)
    inbound.finish_delivery("out-1", "delivered", platform_message_id="777", now=NOW + 1_001)
    delivery = inbound.get_delivery("out-1")
    assert delivery is not None
    assert (delivery.status, delivery.attempts, delivery.platform_message_id) == (
        "delivered",
        3,
        "777",
    )
    assert inbound.platform_message_id("out-1") == "777"
    assert inbound.platform_message_id("out-2") is None
    with pytest.raises(NotFound):
        inbound.begin_attempt("out-1")  # delivered rows are closed
    inbound.finish_delivery("out-2", "denied", error="not an allowed destination")
    assert [d.status for d in inbound.list_deliveries()] == ["delivered", "denied"]
    assert [d.message_out_id for d in inbound.list_deliveries("denied")] == ["out-2"]
    assert inbound.due_deliveries(now=NOW + 10_000) == []
    with pytest.raises(NotFound):
        inbound.finish_delivery("out-9", "failed")
    with pytest.raises(ValueError, match="lost"):
        inbound.finish_delivery("out-2", "lost")


def test_reader_is_read_only(inbound: InboundStore, tmp_path: Path) -> None:
    inbound.insert_message(new_in("a"))
    reader = InboundReader(tmp_path / "inbound.db")
    assert [r.id for r in reader.list_messages()] == ["a"]
    with pytest.raises(apsw.ReadOnlyError):
        reader.db.execute("DELETE FROM messages_in")
    version = reader.data_version()
    inbound.insert_message(new_in("b"))
    assert reader.data_version() != version  # the cheap change probe the runner can use
    reader.close()


# -- outbound ------------------------------------------------------------------------------


def test_outbound_odd_seq_above_inbound(outbound: OutboundStore) -> None:
    first = outbound.insert_message(NewOutbound(content=m.SendText(text="a")), now=NOW)
    assert first.seq == 1 and first.id.startswith("out-")
    second = outbound.insert_message(
        NewOutbound(content=m.SendText(text="b")), min_seq=10, run_id="run-1", now=NOW
    )
    assert second.seq == 11
    third = outbound.insert_message(
        NewOutbound(
            id="sys-1",
            content=m.CancelTask(task_id="t1"),
            channel_type="telegram",
            platform_id="t:1",
            thread_id="th",
            in_reply_to="m1:ag",
        ),
        now=NOW,
    )
    assert (third.id, third.seq) == ("sys-1", 13)
    row = outbound.get_message("sys-1")
    assert row is not None
    assert (row.kind, row.in_reply_to, row.thread_id) == ("system", "m1:ag", "th")
    assert m.decode_outbound_content(row.content) == m.CancelTask(task_id="t1")
    assert outbound.get_message(second.id).run_id == "run-1"  # type: ignore[union-attr]
    assert outbound.get_by_seq(1).kind == "chat"  # type: ignore[union-attr]
    assert [r.seq for r in outbound.messages_after(1)] == [11, 13]
    assert [r.seq for r in outbound.messages_after(0, limit=1)] == [1]
    assert outbound.max_seq() == 13


def test_write_and_ack_commits_rows_and_acks_together(outbound: OutboundStore) -> None:
    outbound.start_run("run-1", now=NOW)
    outbound.claim(["m1", "m2"], "run-1", now=NOW)
    written = outbound.write_and_ack(
        [
            NewOutbound(content=m.SendText(text="answer"), in_reply_to="m1"),
            NewOutbound(content=m.SendText(text="more"), channel_type="cli", platform_id="c"),
        ],
        ["m1", "m2"],
        AckStatus.COMPLETED,
        run_id="run-1",
        min_seq=4,
        now=NOW + 5,
    )
    assert [w.seq for w in written] == [5, 7]
    assert [(r.id, r.run_id, r.timestamp_ms) for r in outbound.messages_after(0)] == [
        (written[0].id, "run-1", NOW + 5),
        (written[1].id, "run-1", NOW + 5),
    ]
    assert [(a.message_id, a.status, a.status_changed_ms) for a in outbound.acks()] == [
        ("m1", "completed", NOW + 5),
        ("m2", "completed", NOW + 5),
    ]
    # Acks alone (nothing to write), and a failed batch's notice with its failed ack.
    outbound.claim(["m3"], "run-1", now=NOW)
    notice = NewOutbound(content=m.SendText(text="Error: no"))
    outbound.write_and_ack([notice], ["m3"], AckStatus.FAILED, run_id="run-1", now=NOW + 6)
    assert outbound.write_and_ack([], ["m4"], AckStatus.COMPLETED, run_id="run-1") == []
    assert {a.message_id: a.status for a in outbound.acks()} == {
        "m1": "completed",
        "m2": "completed",
        "m3": "failed",
        "m4": "completed",
    }


def test_write_and_ack_is_all_or_nothing(outbound: OutboundStore) -> None:
    outbound.start_run("run-1", now=NOW)
    outbound.insert_message(NewOutbound(id="taken", content=m.SendText(text="x")), now=NOW)
    outbound.claim(["m1"], "run-1", now=NOW)
    with pytest.raises(apsw.ConstraintError):
        outbound.write_and_ack(
            [
                NewOutbound(content=m.SendText(text="first")),
                NewOutbound(id="taken", content=m.SendText(text="clash")),
            ],
            ["m1"],
            AckStatus.COMPLETED,
            run_id="run-1",
            now=NOW + 1,
        )
    # Neither the first row nor the ack: the batch is still claimed, its answer unwritten.
    assert [r.id for r in outbound.messages_after(0)] == ["taken"]
    assert [(a.message_id, a.status) for a in outbound.acks()] == [("m1", "processing")]
    # The store is usable afterwards (the transaction was rolled back, not left open).
    outbound.write_and_ack([], ["m1"], AckStatus.COMPLETED, run_id="run-1", now=NOW + 2)
    assert outbound.settled_ids() == {"m1"}


def test_replies_to(outbound: OutboundStore) -> None:
    for text, reply_to in (("a", "m1"), ("b", None), ("c", "m2"), ("d", "m1"), ("e", "m9")):
        outbound.insert_message(
            NewOutbound(content=m.SendText(text=text), in_reply_to=reply_to), now=NOW
        )
    found = outbound.replies_to(["m1", "m2", "m1"])
    assert [m.decode_outbound_content(r.content).text for r in found] == ["a", "c", "d"]  # type: ignore[union-attr]
    assert outbound.replies_to([]) == []


def test_claims_are_owned_by_runs(outbound: OutboundStore) -> None:
    outbound.start_run("run-1", now=NOW)
    outbound.claim(["a", "b", "c"], "run-1", now=NOW)
    outbound.complete(["a"], "run-1", now=NOW + 1)
    outbound.fail(["b"], "run-1", now=NOW + 2)
    assert outbound.settled_ids() == {"a", "b"}
    assert outbound.claimed_ids("run-1") == {"c"}
    assert [a.status for a in outbound.acks()] == ["processing", "completed", "failed"]
    assert [a.message_id for a in outbound.acks("processing")] == ["c"]
    # A new run drops the dead run's processing claims but keeps settled acks.
    assert outbound.start_run("run-2", now=NOW + 10) == 1
    assert outbound.claimed_ids("run-1") == set()
    assert outbound.settled_ids() == {"a", "b"}
    state = outbound.container_state()
    assert state is not None and (state.run_id, state.started_at_ms, state.turns) == (
        "run-2",
        NOW + 10,
        0,
    )


def test_resume_run_keeps_the_run_as_it_was(outbound: OutboundStore) -> None:
    assert outbound.resume_run("run-1", now=NOW) is False  # no run recorded yet
    assert outbound.container_state() is None
    outbound.start_run("run-1", now=NOW)
    outbound.claim(["a"], "run-1", now=NOW + 1)
    outbound.count_turn(now=NOW + 2)
    outbound.set_tool("bash", declared_timeout_ms=60_000, now=NOW + 3)
    # The re-exec'd runner of the same run: its claim, start time and turns stay.
    assert outbound.resume_run("run-1", now=NOW + 50) is True
    assert outbound.claimed_ids("run-1") == {"a"}
    state = outbound.container_state()
    assert state is not None
    assert (state.run_id, state.started_at_ms, state.turns, state.updated_at_ms) == (
        "run-1",
        NOW,
        1,
        NOW + 50,
    )
    assert (state.current_tool, state.tool_declared_timeout_ms, state.tool_started_at_ms) == (
        None,
        None,
        None,
    )
    # Another run owns the session now: nothing is touched.
    outbound.start_run("run-2", now=NOW + 60)
    assert outbound.resume_run("run-1", now=NOW + 70) is False
    state = outbound.container_state()
    assert state is not None and (state.run_id, state.updated_at_ms) == ("run-2", NOW + 60)


def test_container_state_tool_and_turns(outbound: OutboundStore) -> None:
    assert outbound.container_state() is None
    outbound.start_run("run-1", now=NOW)
    outbound.set_tool("bash", declared_timeout_ms=600_000, now=NOW + 1)
    state = outbound.container_state()
    assert state is not None
    assert (state.current_tool, state.tool_declared_timeout_ms, state.tool_started_at_ms) == (
        "bash",
        600_000,
        NOW + 1,
    )
    outbound.set_tool(None, now=NOW + 2)
    state = outbound.container_state()
    assert (
        state is not None and state.current_tool is None and state.tool_declared_timeout_ms is None
    )
    assert outbound.count_turn() == 1
    assert outbound.count_turn() == 2


def test_session_state(outbound: OutboundStore) -> None:
    assert outbound.get_state("conversation") is None
    outbound.set_state("conversation", "v1", now=NOW)
    outbound.set_state("conversation", "v2", now=NOW)
    assert outbound.get_state("conversation") == "v2"
    outbound.delete_state("conversation")
    assert outbound.get_state("conversation") is None


def test_host_reads_outbound_read_only(outbound: OutboundStore, tmp_path: Path) -> None:
    outbound.insert_message(NewOutbound(content=m.SendText(text="hello")))
    reader = OutboundReader(tmp_path / "agent" / "outbound.db")
    assert [r.seq for r in reader.messages_after(0)] == [1]
    with pytest.raises(apsw.ReadOnlyError):
        reader.db.execute("DELETE FROM messages_out")
    reader.close()


def test_session_dbs_refuse_symlinks(tmp_path: Path) -> None:
    """A container could plant agent/outbound.db -> ../../../central.db; neither the host's
    reader nor a writer may follow it."""
    target = tmp_path / "central.db"
    InboundStore(target).close()
    agent = tmp_path / "agent"
    agent.mkdir()
    (agent / "outbound.db").symlink_to(target)
    with pytest.raises(apsw.CantOpenError):
        OutboundReader(agent / "outbound.db")
    with pytest.raises(apsw.CantOpenError):
        OutboundStore(agent / "outbound.db")
    with pytest.raises(apsw.CantOpenError):
        InboundReader(agent / "outbound.db")
