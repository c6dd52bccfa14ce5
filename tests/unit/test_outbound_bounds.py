"""The host's reads of a container-written ``outbound.db`` outside delivery's tail: acks,
claims, ``container_state``, activity times. Malformed or oversized values (the container
writes them by hand) are left out, never fetched and never a crash; the host's connection
refuses any value over ``MAX_VALUE_BYTES``; upgrades of older files."""

from __future__ import annotations

from pathlib import Path

import apsw

from nanoclaw_common.store import InboundStore, OutboundReader, OutboundStore
from nanoclaw_common.store.bounds import MAX_VALUE_BYTES
from nanoclaw_common.store.central import CentralStore
from nanoclaw_common.store.inbound import INBOUND_VERSION
from nanoclaw_common.store.migrations import Migration, apply_migrations, central_migrations
from nanoclaw_common.store.owner_notices import OwnerNotices
from nanoclaw_common.store.sqlite import Database, Mode

NOW = 1_700_000_000_000


def forge(path: Path, sql: str, *params: object) -> None:
    """Write as the container can: past every CHECK (it can also recreate the tables)."""
    db = apsw.Connection(str(path))
    db.execute("PRAGMA ignore_check_constraints = ON")
    db.execute(sql, params)
    db.close()


def test_malformed_acks_and_state_are_left_out(tmp_path: Path) -> None:
    path = tmp_path / "outbound.db"
    store = OutboundStore(path)
    store.start_run("run-1", now=NOW)
    store.claim(["good"], "run-1", now=NOW)
    store.complete(["done"], "run-1", now=NOW)
    store.close()
    ack = "INSERT INTO processing_ack (message_id, status, run_id, status_changed_ms) VALUES"
    forge(path, f"{ack} (?, 'completed', 'run-1', ?)", "m" * 5_000_000, NOW)
    forge(path, f"{ack} ('typed', 'completed', 'run-1', 'soon')")
    forge(path, f"{ack} ('weird', 'finished', 'run-1', ?)", NOW)
    forge(path, f"{ack} ('huge-run', 'processing', ?, ?)", "r" * 5_000_000, NOW)
    forge(path, "UPDATE container_state SET current_tool = ? WHERE id = 1", "t" * 5_000_000)
    forge(path, "UPDATE messages_out SET timestamp_ms = 'later'")
    reader = OutboundReader(path)
    try:
        assert [(a.message_id, a.status) for a in reader.acks()] == [
            ("good", "processing"),
            ("done", "completed"),
        ]
        assert reader.settled_ids() == {"done"}
        assert [a.message_id for a in reader.settled_acks()] == ["done"]
        assert reader.claimed_ids("run-1") == {"good"}
        assert reader.container_state() is None  # malformed: as if there were none
        assert reader.last_activity_ms() == NOW
        assert reader.db.conn.limit(apsw.SQLITE_LIMIT_LENGTH, -1) == MAX_VALUE_BYTES
    finally:
        reader.close()


def test_ack_sync_writes_only_for_pending_rows(tmp_path: Path) -> None:
    """However many acks the container writes, the sweeper's sync costs a write only for the
    rows that wait for one."""
    from nanoclaw_common import messages as m
    from nanoclaw_common.store import NewInbound

    inbound = InboundStore(tmp_path / "inbound.db")
    inbound.insert_message(
        NewInbound(
            id="real", content=m.ChatContent(text="hi", sender_id="cli:local"), timestamp_ms=NOW
        ),
        now=NOW,
    )
    outbound = OutboundStore(tmp_path / "outbound.db")
    outbound.complete(["real", *(f"fake-{n}" for n in range(2_000))], "run-1", now=NOW)
    try:
        assert inbound.sync_acks(outbound.settled_acks()) == 1
        assert inbound.get_message("real").status == "completed"  # type: ignore[union-attr]
    finally:
        outbound.close()
        inbound.close()


def test_a_version_2_inbound_db_gains_the_tail_columns(tmp_path: Path) -> None:
    path = tmp_path / "inbound.db"
    store = InboundStore(path)
    store.record_outbounds([("a", 1)], now=NOW)
    store.db.execute("ALTER TABLE deliveries DROP COLUMN out_rowid")
    store.db.execute("ALTER TABLE deliveries DROP COLUMN inbound_seq")
    store.db.execute("DROP TABLE outbound_cursor")
    store.db.execute("PRAGMA user_version = 2")
    store.close()
    upgraded = InboundStore(path)
    try:
        assert upgraded.db.scalar("PRAGMA user_version") == INBOUND_VERSION == 3
        [record] = upgraded.list_deliveries()
        assert (record.message_out_id, record.out_rowid, record.inbound_seq) == ("a", None, None)
        assert upgraded.outbound_cursor() is None
        upgraded.record_outbounds([("b", 3, 7)], now=NOW)
        cursor = upgraded.outbound_cursor()
        assert cursor is not None and (cursor.out_rowid, cursor.message_out_id) == (7, "b")
        assert upgraded.delivery_watermark() == 3
    finally:
        upgraded.close()


def test_migration_0080_folds_pending_notices_into_one_per_group(tmp_path: Path) -> None:
    db = Database(tmp_path / "central.db", Mode.CENTRAL)
    before: list[Migration] = [m for m in central_migrations() if m.version < 80]
    apply_migrations(db, before)
    db.execute(
        "INSERT INTO agent_groups (id, name, folder, created_at_ms) VALUES ('g', 'G', 'g', 0)"
    )
    for n, group in enumerate(["g", "g", "g", "h"]):
        db.execute(
            "INSERT INTO owner_notices (id, agent_group_id, text, status, attempts,"
            " next_attempt_at_ms, created_at_ms, updated_at_ms)"
            " VALUES (?, ?, ?, 'pending', 0, 0, ?, ?)",
            (f"n{n}", group, f"notice {n}", n, n),
        )
    db.close()
    central = CentralStore.open(tmp_path / "central.db")
    try:
        pending = OwnerNotices(central).list("pending")
        assert [(n.agent_group_id, n.count, n.id) for n in pending] == [
            ("g", 3, "n0"),
            ("h", 1, "n3"),
        ]
        assert [n.id for n in OwnerNotices(central).list("suppressed")] == ["n1", "n2"]
    finally:
        central.close()
