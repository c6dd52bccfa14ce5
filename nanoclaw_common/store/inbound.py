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
from nanoclaw_common.states import MessageInStatus
from nanoclaw_common.store import collisions, rows
from nanoclaw_common.store.deliveries import DeliveryReads, DeliveryWrites
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


class InboundReader(DeliveryReads):
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

    # -- deliveries: nanoclaw_common.store.deliveries ------------------------------------

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


class InboundStore(InboundReader, DeliveryWrites):
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

    # -- deliveries: nanoclaw_common.store.deliveries ------------------------------------

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
