"""Rows a hostile container writes into ``outbound.db`` (issue 8, §4, §7): every column is
bounded before it is read, a malformed row is ``failed`` with a note, a row with a seq at or
below the watermark (or even, or an id already used) is refused and recorded, a rewritten
file is noticed, and container text in log lines, notes and notices is escaped and capped."""

from __future__ import annotations

from typing import Any

import apsw
import pytest

from nanoclaw_common import messages as m
from nanoclaw_common.errors import Refused
from nanoclaw_common.store import OutboundReader
from nanoclaw_common.store.bounds import MAX_VALUE_BYTES, UNUSABLE_ID_PREFIX
from tests.delivery_world import World

BIG = 2_000_000  # bytes: over every bound (content's is 1,000,000)
TEXT = m.encode_text(m.SendText(text="hi"))


def raw(world: World, **columns: Any) -> int:
    """Insert a messages_out row as a hostile agent would (any value, any type), on the
    container's side of the file; returns its rowid."""
    row: dict[str, Any] = {
        "id": f"raw-{world.clock.advance(1)}",
        "seq": world.outbound.max_seq() + 2,
        "timestamp_ms": world.clock(),
        "kind": "chat",
        "content": TEXT,
    }
    row.update(columns)
    names = sorted(row)
    # The container can recreate the table without the CHECK; the same, more simply:
    world.outbound.db.execute("PRAGMA ignore_check_constraints = ON")
    world.outbound.db.execute(
        f"INSERT INTO messages_out ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
        [row[name] for name in names],
    )
    return int(world.outbound.db.scalar("SELECT last_insert_rowid()"))


def deliveries(world: World) -> dict[str, tuple[str, str]]:
    store = world.inbound()
    try:
        return {d.message_out_id: (d.status, d.last_error or "") for d in store.list_deliveries()}
    finally:
        store.close()


# -- size and type of every column -------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value", "named"),
    [
        ("content", "x" * BIG, "content is 2000000 bytes"),
        ("platform_id", "p" * BIG, "platform_id is 2000000 bytes"),
        ("channel_type", "c" * BIG, "channel_type is 2000000 bytes"),
        ("in_reply_to", "r" * BIG, "in_reply_to is 2000000 bytes"),
        ("thread_id", "t" * BIG, "thread_id is 2000000 bytes"),
        ("run_id", "u" * BIG, "run_id is 2000000 bytes"),
        ("content", b"{}", "content is blob"),
        ("timestamp_ms", "soon", "timestamp_ms is text"),
        ("deliver_after_ms", 1.5, "deliver_after_ms is real"),
        ("kind", "evil", "kind is neither chat nor system"),
    ],
)
def test_a_malformed_column_fails_the_row_with_a_note(
    world: World, log_lines: list[str], column: str, value: object, named: str
) -> None:
    raw(world, **{column: value})
    world.drain()
    [(_key, (status, error))] = deliveries(world).items()
    assert status == "failed" and named in error
    assert world.telegram.chat_calls() == []
    [(note, _trigger, _wake)] = world.notes()
    assert "could not be delivered" in note and named in note
    assert len(note) < 1_000  # sizes and types, never the value
    assert any("MESSAGE DROPPED (failed)" in line and named in line for line in log_lines)
    assert all(len(line) < 2_000 for line in log_lines)


def test_an_oversized_or_unsafe_id_gets_a_host_key(world: World) -> None:
    big = raw(world, id="i" * BIG)
    unsafe = raw(world, id="bad id\nwith a newline")
    world.drain()
    found = deliveries(world)
    assert found[f"{UNUSABLE_ID_PREFIX}{big}"][0] == "failed"
    assert "id is 2000000 bytes" in found[f"{UNUSABLE_ID_PREFIX}{big}"][1]
    assert found[f"{UNUSABLE_ID_PREFIX}{unsafe}"][0] == "failed"
    assert "not a safe id" in found[f"{UNUSABLE_ID_PREFIX}{unsafe}"][1]
    [(note, _t, _w)] = world.notes()  # one note for the rows refused together
    assert note.startswith("2 of your messages were not delivered")
    assert "id is 2000000 bytes" in note and "not a safe id" in note


def test_the_host_never_reads_a_value_past_the_limit(world: World) -> None:
    """``SQLITE_LIMIT_LENGTH`` on the host's connection: a query that would fetch the value
    fails instead of allocating it, while the bounded tail reads the row's shape."""
    rowid = raw(world, content="x" * BIG)
    reader = OutboundReader(world.paths.outbound_db)
    try:
        assert reader.db.conn.limit(apsw.SQLITE_LIMIT_LENGTH, -1) == MAX_VALUE_BYTES
        with pytest.raises(apsw.TooBigError):
            reader.db.all("SELECT content FROM messages_out WHERE rowid = ?", (rowid,))
        [tailed] = reader.tail(0)
        assert tailed.row is None and tailed.content_bytes == BIG
        assert reader.messages_after(0) == []  # everyone else's verbs skip it
    finally:
        reader.close()


def test_a_good_row_after_a_bad_one_is_delivered(world: World) -> None:
    raw(world, content="x" * BIG)
    good = world.text("still here")
    world.drain()
    assert world.delivery(good.id).status == "delivered"
    assert world.telegram.texts() == ["still here"]


# -- seqs: the watermark, even seqs, reused ids --------------------------------------------


def test_a_row_at_or_below_the_watermark_is_refused_and_recorded(
    world: World, log_lines: list[str]
) -> None:
    """Before: delivery read ``seq > watermark``, so such a row was never seen at all."""
    raw(world, id="one", seq=1)
    raw(world, id="two", seq=7)
    world.drain()
    raw(world, id="below", seq=5)  # a free odd seq, under the top
    raw(world, id="even", seq=8)
    world.drain()
    found = deliveries(world)
    assert found["below"][0] == "denied" and "not above 7" in found["below"][1]
    assert found["even"][0] == "denied" and "is even" in found["even"][1]
    assert world.telegram.texts() == ["hi", "hi"]  # nothing sent out of order
    notes = [text for text, _t, _w in world.notes()]
    assert any("#5" in n and "refused" in n for n in notes)
    assert any("#8" in n and "refused" in n for n in notes)
    assert sum("MESSAGE DROPPED (denied)" in line for line in log_lines) == 2


def test_a_new_row_reusing_a_delivered_rows_id_is_refused(world: World) -> None:
    """The container deletes a delivered row and writes another with the same id: it is
    not taken for the one already tracked (which would skip it without a trace)."""
    out = world.text("original")
    world.text("another")
    world.drain()
    world.outbound.db.execute("DELETE FROM messages_out WHERE id = ?", (out.id,))
    rowid = raw(world, id=out.id)  # a new place in the table, the old id
    world.drain()
    found = deliveries(world)
    assert found[out.id][0] == "delivered"
    assert found[f"{UNUSABLE_ID_PREFIX}{rowid}"] == (
        "denied",
        "its id is already used by an earlier row",
    )


def test_a_rewritten_outbound_db_is_read_again(world: World, log_lines: list[str]) -> None:
    """The container empties the table and starts over (rowids restart at 1): delivery
    notices, reads the file again, takes nothing twice and refuses the new rows' old seqs."""
    for text in ("a", "b", "c"):
        world.text(text)
    world.drain()
    world.outbound.db.execute("DELETE FROM messages_out")
    raw(world, id="again-1", seq=1)
    raw(world, id="again-2", seq=3)
    world.drain()
    found = deliveries(world)
    assert found["again-1"][0] == "denied" and found["again-2"][0] == "denied"
    assert world.telegram.texts() == ["a", "b", "c"]
    assert any("outbound.db was rewritten" in line for line in log_lines)
    store = world.inbound()
    top = store.delivery_watermark()
    store.close()
    raw(world, id="later", seq=top + 2)  # above everything seen: taken
    world.drain()
    assert world.delivery("later").status == "delivered"


def test_deliveries_recorded_by_seq_alone_resume_where_they_were(world: World) -> None:
    """An ``inbound.db`` from before the tail's cursor (version 2: no rowids recorded):
    nothing at or below the old watermark is sent again, what came after is sent."""
    old = [world.text(t) for t in ("old-1", "old-2")]
    store = world.inbound()
    store.record_outbounds([(w.id, w.seq) for w in old], now=world.clock())
    for w in old:
        store.finish_delivery(w.id, "delivered", now=world.clock())
    assert store.outbound_cursor() is None
    store.close()
    new = world.text("new")
    world.drain()
    assert world.telegram.texts() == ["new"]
    assert world.delivery(new.id).status == "delivered"


# -- the table itself ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "replacement",
    [
        # rows computed forever
        "CREATE VIEW messages_out AS WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL"
        " SELECT i + 1 FROM n) SELECT 'v' || i AS id, 2 * i + 1 AS seq, NULL AS in_reply_to,"
        " 0 AS timestamp_ms, NULL AS deliver_after_ms, 'chat' AS kind, NULL AS platform_id,"
        " NULL AS channel_type, NULL AS thread_id, '{}' AS content, NULL AS run_id FROM n",
        # a value built on every read
        "CREATE TABLE messages_out (id TEXT PRIMARY KEY, seq INTEGER, in_reply_to TEXT,"
        " timestamp_ms INTEGER, deliver_after_ms INTEGER, kind TEXT, platform_id TEXT,"
        " channel_type TEXT, thread_id TEXT, run_id TEXT,"
        " content TEXT GENERATED ALWAYS AS (printf('%.*c', 100000000, 'x')) VIRTUAL)",
    ],
)
def test_messages_out_must_be_a_plain_table(world: World, replacement: str) -> None:
    world.outbound.db.execute("DROP TABLE messages_out")
    world.outbound.db.execute(replacement)
    with pytest.raises(Refused, match="not a plain table"):
        world.drain()


# -- container text in logs, notes and notices ----------------------------------------------


def test_a_chat_id_with_a_newline_forges_no_log_line(world: World, log_lines: list[str]) -> None:
    forged = (
        "200\n2026-01-01 00:00:00.000 INFO    delivery [delivery] delivered platform_message_id=1"
    )
    out = world.text("psst", channel_type="telegram", platform_id=forged)
    world.drain()
    assert world.delivery(out.id).status == "denied"
    assert not any(
        line.startswith("2026-01-01") for text in log_lines for line in text.splitlines()[1:]
    )
    assert all("\n" not in line.rstrip("\n") for line in log_lines)
    assert any("200\\x0a2026-01-01" in line for line in log_lines)
    [(note, _t, _w)] = world.notes()
    assert "\n" not in note
    [dm] = [c[3] for c in world.telegram.calls if c[1] == "dm-owner"]
    assert "\n" not in dm and "200\\x0a" in dm


def test_a_long_chat_id_makes_no_long_dm(world: World) -> None:
    """A 300 KB chat id is refused as it is read (over the field bound); one just under the
    bound is capped wherever it is shown."""
    huge = world.text("a", channel_type="telegram", platform_id="9" * 300_000)
    near = world.text("b", channel_type="telegram", platform_id="8" * 1_000)
    world.drain()
    assert world.delivery(huge.id).status == "failed"
    assert world.delivery(near.id).status == "denied"
    dms = [c[3] for c in world.telegram.calls if c[1] == "dm-owner"]
    assert dms and all(len(dm) < 3_000 for dm in dms)
    assert all(len(text) < 1_500 for text, _t, _w in world.notes())
    # Where the refused row was going, as far as it can be shown: its start, cut.
    assert any("to telegram:999" in text and "(cut: " in text for text, _t, _w in world.notes())
