"""Delivery's records in a session's ``inbound.db`` (table ``deliveries``, and the tail's
``outbound_cursor``): the state of every outbound row, kept by the host because the host never
writes ``outbound.db``. ``DeliveryReads`` is part of ``InboundReader``, ``DeliveryWrites`` of
``InboundStore``; both act on the store's ``db``.

A record's key is the outbound row's id, or ``#row-<rowid>`` when that id is unusable
(``bounds.UNUSABLE_ID_PREFIX``). ``out_rowid`` says where the row is in ``outbound.db``;
``inbound_seq`` is ``messages_in``'s highest seq when the record was written, the host's
answer to "what can have prompted this row" (create_agent's authorization). The cursor moves
in the same transaction that records the rows it passed.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import msgspec

from nanoclaw_common.clock import now_ms
from nanoclaw_common.errors import NotFound
from nanoclaw_common.states import DeliveryStatus
from nanoclaw_common.store import rows
from nanoclaw_common.store.sqlite import Database, columns


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


_OPEN_DELIVERY = frozenset({DeliveryStatus.PENDING, DeliveryStatus.SENDING, DeliveryStatus.RETRY})


class DeliveryReads:
    """Reads of the delivery records (mixed into ``InboundReader``)."""

    db: Database

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


class DeliveryWrites:
    """Writes of the delivery records (mixed into ``InboundStore``)."""

    db: Database

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
