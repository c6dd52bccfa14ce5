"""``inbound.db``: host → container. ``InboundReader`` is the read-only view (what the agent
runner opens); ``InboundStore`` is the host's writer.

Host rows take the next **even** seq, allocated inside the ``BEGIN IMMEDIATE`` transaction
that inserts the row. Several host programs (router, delivery, sweeper) write the same file;
the write lock serializes them, so a seq is never handed out twice.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Final

import msgspec

from nanoclaw_common import messages
from nanoclaw_common.clock import now_ms
from nanoclaw_common.errors import NotFound
from nanoclaw_common.ids import alternative_id, original_row_id
from nanoclaw_common.states import DeliveryStatus, MessageInStatus
from nanoclaw_common.store import collisions, rows
from nanoclaw_common.store.migrations import open_session_db
from nanoclaw_common.store.sqlite import Database, Mode, columns


class NewInbound(msgspec.Struct, frozen=True, kw_only=True):
    """A row the host wants in ``messages_in``. ``id`` is the idempotency key."""

    id: str
    content: messages.InboundContent
    timestamp_ms: int
    channel_type: str | None = None
    platform_id: str | None = None
    thread_id: str | None = None
    trigger: bool = True
    process_after_ms: int | None = None
    recurrence: str | None = None
    series_id: str | None = None
    source_session_id: str | None = None
    on_wake: bool = False


class Track(msgspec.Struct, frozen=True):
    """A row to start tracking in ``deliveries``: its key, seq (0 when it has none), rowid in
    ``outbound.db`` (moves the tail's cursor), and its state: ``pending``, or already
    ``failed``/``denied`` with ``error`` for a row refused as it was read."""

    key: str
    seq: int
    rowid: int | None = None
    status: str = "pending"
    error: str | None = None


#: What the record verbs take: a ``Track``, or (key, seq) / (key, seq, rowid).
Recorded = Track | tuple[str, int] | tuple[str, int, int]


def _as_track(item: Recorded) -> Track:
    if isinstance(item, Track):
        return item
    return Track(item[0], item[1], item[2] if len(item) > 2 else None)


class OutboundCursor(msgspec.Struct, frozen=True):
    """Where delivery's tail of ``outbound.db`` stands (``inbound.db`` version 3)."""

    out_rowid: int
    message_out_id: str
    max_seq: int


class InsertResult(msgspec.Struct, frozen=True):
    id: str  # where the row is: the id asked for, or its alternative after a collision
    seq: int
    created: bool  # False: the same message was already there (a re-send); nothing changed
    # The id asked for was held by a different row (``collisions.difference``: what it is).
    # With ``disambiguate`` the message went to an alternative id (``id``), else nowhere.
    collided_with: str | None = None


#: Alternatives ``#1``… tried before a random one (rows made to hold them all are hostile).
MAX_ALTERNATIVES: Final = 16


def _glob_literal(text: str) -> str:
    """``text`` as a GLOB pattern that matches only itself."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def next_even(max_seq: int | None) -> int:
    """The smallest even number strictly above ``max_seq`` (2 for an empty table)."""
    top = max_seq or 0
    return top + 2 - (top % 2)


class InboundReader:
    """Read-only access. The container opens the file through a read-only bind mount."""

    def __init__(self, path: Path | str, *, _db: Database | None = None) -> None:
        self.db = _db or Database(path, Mode.SESSION_READONLY)

    def close(self) -> None:
        self.db.close()

    def data_version(self) -> int:
        return self.db.data_version()

    def get_message(self, message_id: str) -> rows.InboundRow | None:
        found = self.db.one(
            f"SELECT {columns(rows.InboundRow)} FROM messages_in WHERE id = ?", (message_id,)
        )
        return rows.InboundRow(*found) if found else None

    def rows_under(self, row_id: str) -> list[rows.InboundRow]:
        """The row ``row_id`` and the rows stored under its collision alternatives
        (``ids.alternative_id``: ``<row_id>#…``), by seq: where a message with that id is,
        when another row held its id."""
        pattern = _glob_literal(row_id) + "#*"
        found = self.db.all(
            f"SELECT {columns(rows.InboundRow)} FROM messages_in"
            " WHERE id = ? OR id GLOB ? ORDER BY seq",
            (row_id, pattern),
        )
        return [rows.InboundRow(*r) for r in found if original_row_id(r[0]) == row_id]

    def get_by_seq(self, seq: int) -> rows.InboundRow | None:
        found = self.db.one(
            f"SELECT {columns(rows.InboundRow)} FROM messages_in WHERE seq = ?", (seq,)
        )
        return rows.InboundRow(*found) if found else None

    def list_messages(
        self, status: str | None = None, *, limit: int = 1000
    ) -> list[rows.InboundRow]:
        if status is None:
            sql, params = "ORDER BY seq LIMIT ?", (limit,)
        else:
            sql, params = "WHERE status = ? ORDER BY seq LIMIT ?", (status, limit)  # type: ignore[assignment]
        return [
            rows.InboundRow(*r)
            for r in self.db.all(
                f"SELECT {columns(rows.InboundRow)} FROM messages_in {sql}", params
            )
        ]

    def pending_messages(
        self,
        *,
        limit: int,
        first_poll: bool,
        exclude: Collection[str] = (),
        now: int | None = None,
    ) -> list[rows.InboundRow]:
        """Due pending rows, the newest ``limit`` of them, returned oldest first.

        ``on_wake`` rows only on a run's first poll. ``exclude`` (ids this run already
        claimed, or any run acked) are skipped *before* the limit counts them, unlike
        upstream, where acked-but-unsynced rows used up the batch.
        """
        stamp = now_ms() if now is None else now
        cursor = self.db.conn.execute(
            f"SELECT {columns(rows.InboundRow)} FROM messages_in"
            " WHERE status = 'pending' AND (process_after_ms IS NULL OR process_after_ms <= ?)"
            " AND (on_wake = 0 OR ?) ORDER BY seq DESC",
            (stamp, int(first_poll)),
        )
        picked: list[rows.InboundRow] = []
        for values in cursor:
            if values[0] in exclude:
                continue
            picked.append(rows.InboundRow(*values))
            if len(picked) >= limit:
                break
        cursor.close()
        picked.reverse()
        return picked

    def max_seq(self) -> int:
        return int(self.db.scalar("SELECT ifnull(max(seq), 0) FROM messages_in"))

    def messages_between(
        self, first_seq: int, before_seq: int, *, limit: int = 500
    ) -> list[rows.InboundRow]:
        """Rows with ``first_seq <= seq < before_seq``, in seq order: what a turn that
        started at ``first_seq`` and wrote outbound row ``before_seq`` had in front of it."""
        return [
            rows.InboundRow(*r)
            for r in self.db.all(
                f"SELECT {columns(rows.InboundRow)} FROM messages_in"
                " WHERE seq >= ? AND seq < ? ORDER BY seq LIMIT ?",
                (first_seq, before_seq, limit),
            )
        ]

    def next_due_after(self, now: int) -> int | None:
        """When the earliest pending row that is not yet due becomes due (the runner sleeps
        until then at most), or None."""
        value = self.db.scalar(
            "SELECT min(process_after_ms) FROM messages_in"
            " WHERE status = 'pending' AND process_after_ms > ?",
            (now,),
        )
        return None if value is None else int(value)

    def latest_from(self, channel_type: str, platform_id: str) -> rows.InboundRow | None:
        """The newest row from this address (threads replies to the right place)."""
        found = self.db.one(
            f"SELECT {columns(rows.InboundRow)} FROM messages_in"
            " WHERE channel_type = ? AND platform_id = ? ORDER BY seq DESC LIMIT 1",
            (channel_type, platform_id),
        )
        return rows.InboundRow(*found) if found else None

    def find_question_response(
        self, question_id: str, exclude: Collection[str] = ()
    ) -> rows.InboundRow | None:
        """The pending ``question_response`` row answering ``question_id``, if any."""
        for values in self.db.all(
            f"SELECT {columns(rows.InboundRow)} FROM messages_in"
            " WHERE kind = 'system' AND status = 'pending'"
            " AND json_extract(content, '$.type') = 'question_response'"
            " AND json_extract(content, '$.question_id') = ? ORDER BY seq",
            (question_id,),
        ):
            if values[0] not in exclude:
                return rows.InboundRow(*values)
        return None

    def task_statuses(self, task_id: str) -> set[str]:
        """The statuses of every occurrence of a task series (empty: no such task)."""
        return {
            str(status)
            for (status,) in self.db.all(
                "SELECT DISTINCT status FROM messages_in WHERE (id = ?1 OR series_id = ?1)"
                " AND kind = 'task'",
                (task_id,),
            )
        }

    def list_tasks(self, status: str | None = None) -> list[rows.InboundRow]:
        """The newest live row of each task series (pending or paused)."""
        statuses = (status,) if status else ("pending", "paused")
        marks = ", ".join("?" for _ in statuses)
        return [
            rows.InboundRow(*r)
            for r in self.db.all(
                f"SELECT {columns(rows.InboundRow)} FROM messages_in WHERE seq IN ("
                f" SELECT max(seq) FROM messages_in WHERE kind = 'task' AND status IN ({marks})"
                " GROUP BY coalesce(series_id, id)) ORDER BY process_after_ms, seq",
                statuses,
            )
        ]

    # -- projections ----------------------------------------------------------------------

    def destinations(self) -> list[rows.DestinationEntry]:
        return [
            rows.DestinationEntry(*r)
            for r in self.db.all(
                f"SELECT {columns(rows.DestinationEntry)} FROM destinations ORDER BY name"
            )
        ]

    def find_destination(self, name: str) -> rows.DestinationEntry | None:
        found = self.db.one(
            f"SELECT {columns(rows.DestinationEntry)} FROM destinations WHERE name = ?", (name,)
        )
        return rows.DestinationEntry(*found) if found else None

    def find_destination_by_address(
        self, channel_type: str, platform_id: str
    ) -> rows.DestinationEntry | None:
        """Reverse lookup for the prompt's ``from=`` attribute."""
        if channel_type == "agent":
            sql = "WHERE type = 'agent' AND agent_group_id = ?"
            params: tuple[str, ...] = (platform_id,)
        else:
            sql = "WHERE type = 'channel' AND channel_type = ? AND platform_id = ?"
            params = (channel_type, platform_id)
        found = self.db.one(
            f"SELECT {columns(rows.DestinationEntry)} FROM destinations {sql} LIMIT 1", params
        )
        return rows.DestinationEntry(*found) if found else None

    def routing(self) -> rows.Routing:
        found = self.db.one(
            "SELECT channel_type, platform_id, thread_id FROM session_routing WHERE id = 1"
        )
        return rows.Routing(*found) if found else rows.Routing(None, None, None)

    # -- deliveries -----------------------------------------------------------------------

    def get_delivery(self, message_out_id: str) -> rows.Delivery | None:
        found = self.db.one(
            f"SELECT {columns(rows.Delivery)} FROM deliveries WHERE message_out_id = ?",
            (message_out_id,),
        )
        return rows.Delivery(*found) if found else None

    def list_deliveries(self, status: str | None = None) -> list[rows.Delivery]:
        where, params = ("WHERE status = ?", (status,)) if status else ("", ())
        return [
            rows.Delivery(*r)
            for r in self.db.all(
                f"SELECT {columns(rows.Delivery)} FROM deliveries {where} ORDER BY seq", params
            )
        ]

    def open_deliveries(
        self, *, after: tuple[int, str] | None = None, limit: int = 1000
    ) -> list[rows.Delivery]:
        """Deliveries not settled yet (pending, sending, retry), due or not, in (seq, id)
        order, after ``after`` (the previous page's last (seq, id)): a caller pages through a
        long backlog. By (seq, id), not seq alone: a refused row may share its seq with
        another (the container chose it), and a page boundary must not skip either."""
        where, params = "", ()
        if after is not None:
            where, params = "AND (seq, message_out_id) > (?, ?)", after  # type: ignore[assignment]
        return [
            rows.Delivery(*r)
            for r in self.db.all(
                f"SELECT {columns(rows.Delivery)} FROM deliveries"
                f" WHERE status IN ('pending', 'sending', 'retry') {where}"
                " ORDER BY seq, message_out_id LIMIT ?",
                (*params, limit),
            )
        ]

    def parts_sent(self, message_out_id: str) -> int:
        """How many parts (text chunks, then files) of a row the platform accepted so far,
        across attempts (0 for an unknown row)."""
        value = self.db.scalar(
            "SELECT chunks_sent FROM deliveries WHERE message_out_id = ?", (message_out_id,)
        )
        return 0 if value is None else int(value)

    def last_written_ms(self) -> int | None:
        """When the host last wrote a row here (the session's last inbound activity)."""
        value = self.db.scalar("SELECT max(created_at_ms) FROM messages_in")
        return None if value is None else int(value)

    def count_pending(self) -> int:
        return int(self.db.scalar("SELECT count(*) FROM messages_in WHERE status = 'pending'"))

    def recurring_done(self) -> list[rows.InboundRow]:
        """Finished occurrences of recurring rows whose next occurrence is not written yet."""
        return [
            rows.InboundRow(*r)
            for r in self.db.all(
                f"SELECT {columns(rows.InboundRow)} FROM messages_in"
                " WHERE status IN ('completed', 'failed') AND recurrence IS NOT NULL ORDER BY seq"
            )
        ]

    def delivery_watermark(self) -> int:
        """The highest outbound seq the host has recorded (0 when none): a new row's seq
        must be above it."""
        return int(
            self.db.scalar(
                "SELECT max(ifnull((SELECT max(seq) FROM deliveries), 0),"
                " ifnull((SELECT max_seq FROM outbound_cursor WHERE id = 1), 0))"
            )
        )

    def outbound_cursor(self) -> OutboundCursor | None:
        """Where delivery's tail of ``outbound.db`` stands (None: nothing recorded with a
        rowid yet)."""
        found = self.db.one(
            "SELECT out_rowid, message_out_id, max_seq FROM outbound_cursor WHERE id = 1"
        )
        return OutboundCursor(*found) if found else None

    def delivery_by_rowid(self, out_rowid: int) -> rows.Delivery | None:
        found = self.db.one(
            f"SELECT {columns(rows.Delivery)} FROM deliveries WHERE out_rowid = ?"
            " ORDER BY updated_at_ms DESC LIMIT 1",
            (out_rowid,),
        )
        return rows.Delivery(*found) if found else None

    def last_delivered_ms(self) -> int | None:
        """When the host last delivered something of this session (typing pauses then)."""
        value = self.db.scalar(
            "SELECT max(updated_at_ms) FROM deliveries WHERE status = 'delivered'"
        )
        return None if value is None else int(value)

    def delivered_as(self, platform_message_id: str) -> bool:
        """Whether some delivered row of this session went out as ``platform_message_id``
        (its first part's id)."""
        return bool(
            self.db.scalar(
                "SELECT 1 FROM deliveries WHERE platform_message_id = ? AND status = 'delivered'"
                " LIMIT 1",
                (platform_message_id,),
            )
        )

    def platform_message_id(self, message_out_id: str) -> str | None:
        value = self.db.scalar(
            "SELECT platform_message_id FROM deliveries WHERE message_out_id = ?",
            (message_out_id,),
        )
        return None if value is None else str(value)


INBOUND_VERSION: Final = 3  # PRAGMA user_version of schema/inbound.sql


def upgrade_inbound(db: Database) -> None:
    """Bring a file written by an older version up to ``INBOUND_VERSION``, in one write
    transaction (checked again inside the lock: two host programs may open it at once).
    Version 2 added ``deliveries.chunks_sent``; version 3 ``deliveries.out_rowid`` and
    ``inbound_seq`` and the ``outbound_cursor`` table."""
    if int(db.scalar("PRAGMA user_version")) >= INBOUND_VERSION:
        return
    with db.write():
        version = int(db.scalar("PRAGMA user_version"))
        if version >= INBOUND_VERSION:
            return
        # Each column only if missing: a file can be older in its version than in its shape.
        have = {str(r[1]) for r in db.all("PRAGMA table_info(deliveries)")}
        for column, declaration in (
            ("chunks_sent", "INTEGER NOT NULL DEFAULT 0"),
            ("out_rowid", "INTEGER"),
            ("inbound_seq", "INTEGER"),
        ):
            if column not in have:
                db.execute(f"ALTER TABLE deliveries ADD COLUMN {column} {declaration}")
        if version < 3:
            db.execute(
                "CREATE TABLE IF NOT EXISTS outbound_cursor (id INTEGER PRIMARY KEY"
                " CHECK (id = 1), out_rowid INTEGER NOT NULL, message_out_id TEXT NOT NULL,"
                " max_seq INTEGER NOT NULL)"
            )
        db.execute(f"PRAGMA user_version = {INBOUND_VERSION}")


class InboundStore(InboundReader):
    """The host's writer. Creates the file and its schema when missing, and upgrades a file
    an older version wrote."""

    def __init__(self, path: Path | str) -> None:
        db = open_session_db(path, "inbound.sql")
        try:
            upgrade_inbound(db)
        except BaseException:
            db.close()
            raise
        super().__init__(path, _db=db)

    def insert_message(self, new: NewInbound, *, now: int | None = None) -> InsertResult:
        return self.insert_messages([new], now=now)[0]

    def insert_messages(
        self, batch: Iterable[NewInbound], *, now: int | None = None, disambiguate: bool = False
    ) -> list[InsertResult]:
        """Insert several rows in one transaction (one fsync). A row whose id holds the same
        message already is left alone and reported with ``created=False``.

        An id held by a *different* row (another kind, chat, sender or content:
        ``collisions.difference``) is a collision, reported in ``collided_with``. Without
        ``disambiguate`` nothing is inserted (``created=False``, the old row's seq). With it
        the message is inserted under the first alternative id (``ids.alternative_id``)
        that is free, or found there when it is the same message (a re-send of a message
        that collided before): a platform message is never lost to an id someone else
        took."""
        stamp = now_ms() if now is None else now
        results: list[InsertResult] = []
        with self.db.write():
            top = self.db.scalar("SELECT max(seq) FROM messages_in")
            for new in batch:
                target, collided, found = self._place(new, disambiguate)
                if found is not None:
                    results.append(InsertResult(target, found, False, collided))
                    continue
                seq = next_even(top)
                top = seq
                self._insert(new, target, seq, stamp)
                results.append(InsertResult(target, seq, True, collided))
        return results

    def _place(self, new: NewInbound, disambiguate: bool) -> tuple[str, str | None, int | None]:
        """Where ``new`` goes: (id, what collided or None, the seq of the same message
        already there or None when the id is free). Inside the write transaction."""
        collided: str | None = None
        for n in range(MAX_ALTERNATIVES + 1):
            target = new.id if n == 0 else alternative_id(new.id, n)
            existing = self.db.one(
                f"SELECT {collisions.EXISTING_COLUMNS} FROM messages_in WHERE id = ?", (target,)
            )
            if existing is None:
                return target, collided, None
            differs = collisions.difference(existing, new)
            if differs is None:
                return target, collided, int(existing[0])
            collided = collided or differs
            if not disambiguate:
                return target, collided, int(existing[0])
        # Every numbered alternative is taken: a random one, unless a re-send finds itself.
        for existing in self.db.all(
            f"SELECT id, {collisions.EXISTING_COLUMNS} FROM messages_in WHERE id GLOB ?",
            (_glob_literal(new.id) + "#r*",),
        ):
            if collisions.difference(existing[1:], new) is None:
                return str(existing[0]), collided, int(existing[1])
        return alternative_id(new.id, 0), collided, None

    def _insert(self, new: NewInbound, row_id: str, seq: int, stamp: int) -> None:
        self.db.execute(
            "INSERT INTO messages_in (id, seq, kind, timestamp_ms, status,"
            " process_after_ms, recurrence, series_id, tries, trigger, platform_id,"
            " channel_type, thread_id, content, source_session_id, on_wake, created_at_ms)"
            " VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row_id,
                seq,
                messages.INBOUND_KIND[type(new.content)],
                new.timestamp_ms,
                new.process_after_ms,
                new.recurrence,
                new.series_id or row_id,
                int(new.trigger),
                new.platform_id,
                new.channel_type,
                new.thread_id,
                messages.encode_text(new.content),
                new.source_session_id,
                int(new.on_wake),
                stamp,
            ),
        )

    def advance_recurrence(
        self, done: rows.InboundRow, new_id: str, process_after_ms: int, *, now: int
    ) -> int:
        """Write the next occurrence of ``done`` (same kind, content, routing, series and
        recurrence) due at ``process_after_ms``, and take the recurrence off ``done``, in one
        transaction: a crash can neither lose the series nor write the occurrence twice.
        Returns the new row's seq (0 when ``done`` was advanced already)."""
        with self.db.write():
            still = self.db.scalar(
                "SELECT 1 FROM messages_in WHERE id = ? AND recurrence IS NOT NULL", (done.id,)
            )
            if not still:
                return 0
            seq = next_even(self.db.scalar("SELECT max(seq) FROM messages_in"))
            self.db.execute(
                "INSERT INTO messages_in (id, seq, kind, timestamp_ms, status, process_after_ms,"
                " recurrence, series_id, tries, trigger, platform_id, channel_type, thread_id,"
                " content, source_session_id, on_wake, created_at_ms)"
                " VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, 0, ?, ?, ?, ?, ?, NULL, 0, ?)",
                (
                    new_id,
                    seq,
                    done.kind,
                    now,
                    process_after_ms,
                    done.recurrence,
                    done.series_id or done.id,
                    done.trigger,
                    done.platform_id,
                    done.channel_type,
                    done.thread_id,
                    done.content,
                    now,
                ),
            )
            self.db.execute("UPDATE messages_in SET recurrence = NULL WHERE id = ?", (done.id,))
            return seq

    def set_status(self, message_id: str, status: str) -> None:
        MessageInStatus(status)
        with self.db.write():
            self.db.execute("UPDATE messages_in SET status = ? WHERE id = ?", (status, message_id))
            if not self.db.changes():
                raise NotFound(f"inbound message {message_id} not found")

    def sync_acks(self, acks: Iterable[rows.Ack]) -> int:
        """Copy the container's completed/failed acks onto pending rows; returns rows changed.
        A failed ack stays failed (upstream turned it into completed). Only acks naming a
        pending row cost a write: the container may have written any number of others."""
        changed = 0
        with self.db.write():
            pending = {
                str(row_id)
                for (row_id,) in self.db.all("SELECT id FROM messages_in WHERE status = 'pending'")
            }
            for ack in acks:
                if ack.status not in ("completed", "failed") or ack.message_id not in pending:
                    continue
                self.db.execute(
                    "UPDATE messages_in SET status = ? WHERE id = ? AND status = 'pending'",
                    (ack.status, ack.message_id),
                )
                changed += self.db.changes()
        return changed

    def reschedule(self, message_id: str, *, tries: int, process_after_ms: int) -> None:
        """Retry later: record the try count and the earliest next attempt."""
        with self.db.write():
            self.db.execute(
                "UPDATE messages_in SET tries = ?, process_after_ms = ? WHERE id = ?",
                (tries, process_after_ms, message_id),
            )

    def count_due(self, *, now: int | None = None) -> int:
        """Pending rows that should wake a container now."""
        return int(
            self.db.scalar(
                "SELECT count(*) FROM messages_in WHERE status = 'pending' AND trigger = 1"
                " AND (process_after_ms IS NULL OR process_after_ms <= ?)",
                (now_ms() if now is None else now,),
            )
        )

    def next_due_ms(self) -> int | None:
        """When the earliest future pending row becomes due (the sweeper sleeps until then)."""
        value = self.db.scalar(
            "SELECT min(process_after_ms) FROM messages_in WHERE status = 'pending'"
            " AND trigger = 1 AND process_after_ms IS NOT NULL"
        )
        return None if value is None else int(value)

    # -- projections ----------------------------------------------------------------------

    def replace_destinations(self, entries: Iterable[rows.DestinationEntry]) -> None:
        with self.db.write():
            self.db.execute("DELETE FROM destinations")
            for entry in entries:
                self.db.execute(
                    f"INSERT INTO destinations ({columns(rows.DestinationEntry)})"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    msgspec.structs.astuple(entry),
                )

    def set_routing(self, routing: rows.Routing) -> None:
        with self.db.write():
            self.db.execute(
                "INSERT INTO session_routing (id, channel_type, platform_id, thread_id)"
                " VALUES (1, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                " channel_type = excluded.channel_type, platform_id = excluded.platform_id,"
                " thread_id = excluded.thread_id",
                msgspec.structs.astuple(routing),
            )

    # -- deliveries -----------------------------------------------------------------------

    def record_outbound(self, message_out_id: str, seq: int, *, now: int | None = None) -> bool:
        """Start tracking an outbound row as ``pending``; False if already tracked."""
        return self.record_outbounds([(message_out_id, seq)], now=now) == 1

    def _record(self, items: Iterable[Recorded], stamp: int) -> int:
        """Insert records (inside a write transaction), each with messages_in's max seq of
        now; move the cursor to the last item that has a rowid. A key already tracked is
        left alone (its item still moves the cursor)."""
        added = 0
        last: Track | None = None
        top_seq = 0
        for item in map(_as_track, items):
            DeliveryStatus(item.status)
            self.db.execute(
                "INSERT OR IGNORE INTO deliveries (message_out_id, seq, status, attempts,"
                " last_error, created_at_ms, updated_at_ms, out_rowid, inbound_seq)"
                " VALUES (?, ?, ?, 0, ?, ?, ?, ?, (SELECT ifnull(max(seq), 0) FROM messages_in))",
                (item.key, item.seq, item.status, item.error, stamp, stamp, item.rowid),
            )
            added += self.db.changes()
            top_seq = max(top_seq, item.seq)
            if item.rowid is not None:
                last = item
        if last is not None:
            self.db.execute(
                "INSERT INTO outbound_cursor (id, out_rowid, message_out_id, max_seq)"
                " VALUES (1, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                " out_rowid = excluded.out_rowid, message_out_id = excluded.message_out_id,"
                " max_seq = max(max_seq, excluded.max_seq)",
                (last.rowid, last.key, top_seq),
            )
        return added

    def begin_attempt(
        self,
        message_out_id: str,
        *,
        now: int | None = None,
        record: Iterable[Recorded] = (),
    ) -> int:
        """pending/retry/sending → sending, counting the attempt *before* it is made (a crash
        mid-send still counts). Returns the attempt number. ``record`` items (id, seq[,
        rowid]) are tracked as ``pending`` in the same transaction first: a row seen and
        attempted at once costs one fsync instead of two."""
        stamp = now_ms() if now is None else now
        with self.db.write():
            self._record(record, stamp)
            self.db.execute(
                "UPDATE deliveries SET status = 'sending', attempts = attempts + 1,"
                " updated_at_ms = ? WHERE message_out_id = ?"
                " AND status IN ('pending', 'retry', 'sending')",
                (stamp, message_out_id),
            )
            if not self.db.changes():
                raise NotFound(f"delivery {message_out_id} is not open for an attempt")
            return int(
                self.db.scalar(
                    "SELECT attempts FROM deliveries WHERE message_out_id = ?", (message_out_id,)
                )
            )

    def reset_outbound_cursor(self, out_rowid: int, message_out_id: str) -> None:
        """Put the tail at ``out_rowid`` (the seq watermark stays): after the file was found
        rewritten, or to start a tail for deliveries recorded by seq alone."""
        with self.db.write():
            self.db.execute(
                "INSERT INTO outbound_cursor (id, out_rowid, message_out_id, max_seq)"
                " VALUES (1, ?, ?, (SELECT ifnull(max(seq), 0) FROM deliveries))"
                " ON CONFLICT (id) DO UPDATE SET out_rowid = excluded.out_rowid,"
                " message_out_id = excluded.message_out_id",
                (out_rowid, message_out_id),
            )

    def finish_delivery(
        self,
        message_out_id: str,
        status: str,
        *,
        platform_message_id: str | None = None,
        error: str | None = None,
        next_attempt_at_ms: int | None = None,
        now: int | None = None,
    ) -> None:
        """Record an attempt's outcome: delivered, retry (with the next time), failed, denied."""
        DeliveryStatus(status)
        stamp = now_ms() if now is None else now
        with self.db.write():
            self.db.execute(
                "UPDATE deliveries SET status = ?, platform_message_id ="
                " coalesce(?, platform_message_id), last_error = ?, next_attempt_at_ms = ?,"
                " updated_at_ms = ? WHERE message_out_id = ?",
                (status, platform_message_id, error, next_attempt_at_ms, stamp, message_out_id),
            )
            if not self.db.changes():
                raise NotFound(f"delivery {message_out_id} not found")

    def record_part(
        self,
        message_out_id: str,
        parts_sent: int,
        platform_message_id: str | None = None,
        *,
        now: int | None = None,
    ) -> None:
        """The platform accepted part ``parts_sent`` (1-based) of a row: a retry resumes
        after it. ``platform_message_id`` (the first part's) is kept if none is recorded."""
        stamp = now_ms() if now is None else now
        with self.db.write():
            self.db.execute(
                "UPDATE deliveries SET chunks_sent = max(chunks_sent, ?), platform_message_id ="
                " coalesce(platform_message_id, ?), updated_at_ms = ? WHERE message_out_id = ?",
                (parts_sent, platform_message_id, stamp, message_out_id),
            )
            if not self.db.changes():
                raise NotFound(f"delivery {message_out_id} not found")

    def due_deliveries(self, *, now: int | None = None, limit: int = 100) -> list[rows.Delivery]:
        """Open deliveries in seq order: pending, sending (left by a crash) and due retries."""
        stamp = now_ms() if now is None else now
        return [
            rows.Delivery(*r)
            for r in self.db.all(
                f"SELECT {columns(rows.Delivery)} FROM deliveries"
                " WHERE status IN ('pending', 'sending')"
                " OR (status = 'retry' AND ifnull(next_attempt_at_ms, 0) <= ?)"
                " ORDER BY seq LIMIT ?",
                (stamp, limit),
            )
        ]

    def record_outbounds(self, items: Iterable[Recorded], *, now: int | None = None) -> int:
        """Start tracking several outbound rows as ``pending`` (id, seq[, rowid]), in one
        transaction (one fsync); returns how many were new. Items with a rowid move the
        tail's cursor."""
        stamp = now_ms() if now is None else now
        with self.db.write():
            return self._record(items, stamp)

    def reopen_delivery(self, message_out_id: str, *, now: int | None = None) -> None:
        """An operator's retry: a failed or denied row goes back to ``retry`` with its attempt
        count reset, due now."""
        stamp = now_ms() if now is None else now
        with self.db.write():
            self.db.execute(
                "UPDATE deliveries SET status = 'retry', attempts = 0, next_attempt_at_ms = ?,"
                " updated_at_ms = ? WHERE message_out_id = ? AND status IN ('failed', 'denied')",
                (stamp, stamp, message_out_id),
            )
            if not self.db.changes():
                raise NotFound(f"delivery {message_out_id} is not failed or denied")

    def purge_deliveries(self, statuses: Collection[str], *, before_ms: int) -> int:
        """Forget settled records in ``statuses`` last updated before ``before_ms``. The
        newest record is always kept: its seq is the watermark that stops the outbound row
        from being tracked (and sent) again."""
        for status in statuses:
            if DeliveryStatus(status) in _OPEN_DELIVERY:
                raise ValueError(f"cannot purge open deliveries ({status})")
        marks = ", ".join("?" for _ in statuses)
        with self.db.write():
            self.db.execute(
                f"DELETE FROM deliveries WHERE status IN ({marks}) AND updated_at_ms < ?"
                " AND seq < (SELECT max(seq) FROM deliveries)",
                (*statuses, before_ms),
            )
            return self.db.changes()

    # -- scheduled tasks (series-wide: a recurring task's occurrences share series_id) -----

    def _task_series_update(self, task_id: str, assignments: str, from_statuses: str) -> int:
        with self.db.write():
            self.db.execute(
                f"UPDATE messages_in SET {assignments} WHERE (id = ?1 OR series_id = ?1)"
                f" AND kind = 'task' AND status IN ({from_statuses})",
                (task_id,),
            )
            return self.db.changes()

    def cancel_task(self, task_id: str) -> int:
        """Live occurrences become completed without recurrence (never run, never recur)."""
        return self._task_series_update(
            task_id, "status = 'completed', recurrence = NULL", "'pending', 'paused'"
        )

    def pause_task(self, task_id: str) -> int:
        return self._task_series_update(task_id, "status = 'paused'", "'pending'")

    def resume_task(self, task_id: str) -> int:
        return self._task_series_update(task_id, "status = 'pending'", "'paused'")

    def update_task(
        self,
        task_id: str,
        *,
        prompt: str | msgspec.UnsetType = msgspec.UNSET,
        script: str | msgspec.UnsetType | None = msgspec.UNSET,
        process_after_ms: int | msgspec.UnsetType = msgspec.UNSET,
        recurrence: str | msgspec.UnsetType | None = msgspec.UNSET,
    ) -> int:
        """Change every live (pending or paused) occurrence of the series; unset fields are
        kept. Returns the number of rows changed (0: no live task with that id)."""
        changed = 0
        with self.db.write():
            found = self.db.all(
                "SELECT id, content FROM messages_in WHERE (id = ?1 OR series_id = ?1)"
                " AND kind = 'task' AND status IN ('pending', 'paused')",
                (task_id,),
            )
            for row_id, content_json in found:
                content = messages.decode_inbound_content(content_json)
                if not isinstance(content, messages.TaskContent):
                    continue
                if not isinstance(prompt, msgspec.UnsetType):
                    content = msgspec.structs.replace(content, prompt=prompt)
                if not isinstance(script, msgspec.UnsetType):
                    content = msgspec.structs.replace(content, script=script)
                self.db.execute(
                    "UPDATE messages_in SET content = ? WHERE id = ?",
                    (messages.encode_text(content), row_id),
                )
                if not isinstance(process_after_ms, msgspec.UnsetType):
                    self.db.execute(
                        "UPDATE messages_in SET process_after_ms = ? WHERE id = ?",
                        (process_after_ms, row_id),
                    )
                if not isinstance(recurrence, msgspec.UnsetType):
                    self.db.execute(
                        "UPDATE messages_in SET recurrence = ? WHERE id = ?", (recurrence, row_id)
                    )
                changed += 1
        return changed


_OPEN_DELIVERY = frozenset({DeliveryStatus.PENDING, DeliveryStatus.SENDING, DeliveryStatus.RETRY})
