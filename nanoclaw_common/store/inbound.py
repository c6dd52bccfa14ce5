"""``inbound.db``: host → container. ``InboundReader`` is the read-only view (what the agent
runner opens); ``InboundStore`` is the host's writer.

Host rows take the next **even** seq, allocated inside the ``BEGIN IMMEDIATE`` transaction
that inserts the row. Several host programs (router, delivery, sweeper) write the same file;
the write lock serializes them, so a seq is never handed out twice.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from pathlib import Path

import msgspec

from nanoclaw_common import messages
from nanoclaw_common.clock import now_ms
from nanoclaw_common.errors import NotFound
from nanoclaw_common.states import DeliveryStatus, MessageInStatus
from nanoclaw_common.store import rows
from nanoclaw_common.store.migrations import schema_text
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


class InsertResult(msgspec.Struct, frozen=True):
    id: str
    seq: int
    created: bool  # False: the id was already there (a platform re-send); nothing changed


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

    def delivery_watermark(self) -> int:
        """The highest outbound seq the host has recorded (0 when none)."""
        return int(self.db.scalar("SELECT ifnull(max(seq), 0) FROM deliveries"))

    def platform_message_id(self, message_out_id: str) -> str | None:
        value = self.db.scalar(
            "SELECT platform_message_id FROM deliveries WHERE message_out_id = ?",
            (message_out_id,),
        )
        return None if value is None else str(value)


class InboundStore(InboundReader):
    """The host's writer. Creates the file and its schema when missing."""

    def __init__(self, path: Path | str) -> None:
        db = Database(path, Mode.SESSION)
        if not db.scalar("PRAGMA user_version"):
            with db.write():
                db.executescript(schema_text("inbound.sql"))
        super().__init__(path, _db=db)

    def insert_message(self, new: NewInbound, *, now: int | None = None) -> InsertResult:
        return self.insert_messages([new], now=now)[0]

    def insert_messages(
        self, batch: Iterable[NewInbound], *, now: int | None = None
    ) -> list[InsertResult]:
        """Insert several rows in one transaction (one fsync). A row whose id exists is left
        alone and reported with ``created=False``."""
        stamp = now_ms() if now is None else now
        results: list[InsertResult] = []
        with self.db.write():
            top = self.db.scalar("SELECT max(seq) FROM messages_in")
            for new in batch:
                existing = self.db.scalar("SELECT seq FROM messages_in WHERE id = ?", (new.id,))
                if existing is not None:
                    results.append(InsertResult(new.id, int(existing), False))
                    continue
                seq = next_even(top)
                top = seq
                self.db.execute(
                    "INSERT INTO messages_in (id, seq, kind, timestamp_ms, status,"
                    " process_after_ms, recurrence, series_id, tries, trigger, platform_id,"
                    " channel_type, thread_id, content, source_session_id, on_wake, created_at_ms)"
                    " VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        new.id,
                        seq,
                        messages.INBOUND_KIND[type(new.content)],
                        new.timestamp_ms,
                        new.process_after_ms,
                        new.recurrence,
                        new.series_id or new.id,
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
                results.append(InsertResult(new.id, seq, True))
        return results

    def set_status(self, message_id: str, status: str) -> None:
        MessageInStatus(status)
        with self.db.write():
            self.db.execute("UPDATE messages_in SET status = ? WHERE id = ?", (status, message_id))
            if not self.db.changes():
                raise NotFound(f"inbound message {message_id} not found")

    def sync_acks(self, acks: Iterable[rows.Ack]) -> int:
        """Copy the container's completed/failed acks onto pending rows; returns rows changed.
        A failed ack stays failed (upstream turned it into completed)."""
        changed = 0
        with self.db.write():
            for ack in acks:
                if ack.status not in ("completed", "failed"):
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
        stamp = now_ms() if now is None else now
        with self.db.write():
            self.db.execute(
                "INSERT OR IGNORE INTO deliveries (message_out_id, seq, status, attempts,"
                " created_at_ms, updated_at_ms) VALUES (?, ?, 'pending', 0, ?, ?)",
                (message_out_id, seq, stamp, stamp),
            )
            return self.db.changes() == 1

    def begin_attempt(self, message_out_id: str, *, now: int | None = None) -> int:
        """pending/retry/sending → sending, counting the attempt *before* it is made (a crash
        mid-send still counts). Returns the attempt number."""
        stamp = now_ms() if now is None else now
        with self.db.write():
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
