"""``outbound.db``: container → host. ``OutboundReader`` is the host's read-only view;
``OutboundStore`` is the agent runner's writer.

Container rows take the next **odd** seq, allocated inside the ``BEGIN IMMEDIATE`` transaction
that inserts the row (upstream read the max outside any transaction, a race between the
runner and its tool processes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

import msgspec

from nanoclaw_common import messages
from nanoclaw_common.clock import now_ms
from nanoclaw_common.ids import new_id
from nanoclaw_common.states import AckStatus
from nanoclaw_common.store import rows
from nanoclaw_common.store.migrations import open_session_db
from nanoclaw_common.store.sqlite import Database, Mode, columns


class NewOutbound(msgspec.Struct, frozen=True, kw_only=True):
    """A row the agent wants delivered (or a system action it asks the host for)."""

    content: messages.OutboundContent
    channel_type: str | None = None
    platform_id: str | None = None
    thread_id: str | None = None
    in_reply_to: str | None = None
    deliver_after_ms: int | None = None
    id: str | None = None  # generated when None
    # The inbound rows this row answers: the batch of the turn that wrote it (``answers``).
    answers: tuple[str, ...] = ()


class Written(msgspec.Struct, frozen=True):
    id: str
    seq: int


def next_odd(max_seq: int | None) -> int:
    """The smallest odd number strictly above ``max_seq`` (1 for an empty table)."""
    top = max_seq or 0
    return top + 1 if top % 2 == 0 else top + 2


class OutboundReader:
    def __init__(self, path: Path | str, *, _db: Database | None = None) -> None:
        self.db = _db or Database(path, Mode.SESSION_READONLY)

    def close(self) -> None:
        self.db.close()

    def data_version(self) -> int:
        return self.db.data_version()

    def messages_after(self, seq: int, *, limit: int = 100) -> list[rows.OutboundRow]:
        return [
            rows.OutboundRow(*r)
            for r in self.db.all(
                f"SELECT {columns(rows.OutboundRow)} FROM messages_out WHERE seq > ?"
                " ORDER BY seq LIMIT ?",
                (seq, limit),
            )
        ]

    def get_message(self, message_id: str) -> rows.OutboundRow | None:
        found = self.db.one(
            f"SELECT {columns(rows.OutboundRow)} FROM messages_out WHERE id = ?", (message_id,)
        )
        return rows.OutboundRow(*found) if found else None

    def get_by_seq(self, seq: int) -> rows.OutboundRow | None:
        found = self.db.one(
            f"SELECT {columns(rows.OutboundRow)} FROM messages_out WHERE seq = ?", (seq,)
        )
        return rows.OutboundRow(*found) if found else None

    def max_seq(self) -> int:
        return int(self.db.scalar("SELECT ifnull(max(seq), 0) FROM messages_out"))

    def replies_to(self, message_ids: Iterable[str]) -> list[rows.OutboundRow]:
        """Rows written in reply to any of ``message_ids``, in seq order: what an earlier,
        interrupted attempt at those messages already sent. A row answers the whole batch
        of its turn (``answers``); a row written before version 2 recorded only
        ``in_reply_to``."""
        ids = sorted(set(message_ids))
        if not ids:
            return []
        marks = ", ".join("?" * len(ids))
        return [
            rows.OutboundRow(*r)
            for r in self.db.all(
                f"SELECT {columns(rows.OutboundRow)} FROM messages_out WHERE id IN"
                f" (SELECT message_out_id FROM answers WHERE message_in_id IN ({marks}))"
                f" OR (in_reply_to IN ({marks}) AND NOT EXISTS"
                "  (SELECT 1 FROM answers WHERE message_out_id = messages_out.id))"
                " ORDER BY seq",
                [*ids, *ids],
            )
        ]

    def answered_by(self, message_out_id: str) -> list[str]:
        """The inbound rows an outbound row answers (its turn's batch), in id order."""
        return [
            str(m)
            for (m,) in self.db.all(
                "SELECT message_in_id FROM answers WHERE message_out_id = ? ORDER BY message_in_id",
                (message_out_id,),
            )
        ]

    def acks(self, status: str | None = None) -> list[rows.Ack]:
        where, params = ("WHERE status = ?", (status,)) if status else ("", ())
        return [
            rows.Ack(*r)
            for r in self.db.all(
                f"SELECT {columns(rows.Ack)} FROM processing_ack {where}"
                " ORDER BY status_changed_ms",
                params,
            )
        ]

    def settled_ids(self) -> set[str]:
        """Ids any run acked completed or failed: never process these again."""
        return {
            m
            for (m,) in self.db.all(
                "SELECT message_id FROM processing_ack WHERE status <> 'processing'"
            )
        }

    def claimed_ids(self, run_id: str) -> set[str]:
        return {
            m
            for (m,) in self.db.all(
                "SELECT message_id FROM processing_ack WHERE status = 'processing' AND run_id = ?",
                (run_id,),
            )
        }

    def last_activity_ms(self) -> int | None:
        """The newest write by the container: an outbound row or an ack (not the heartbeat,
        which beats whether or not the agent does anything)."""
        value = self.db.scalar(
            "SELECT max(t) FROM (SELECT max(timestamp_ms) AS t FROM messages_out"
            " UNION ALL SELECT max(status_changed_ms) FROM processing_ack)"
        )
        return None if value is None else int(value)

    def container_state(self) -> rows.ContainerState | None:
        found = self.db.one(
            f"SELECT {columns(rows.ContainerState)} FROM container_state WHERE id = 1"
        )
        return rows.ContainerState(*found) if found else None

    def get_state(self, key: str) -> str | None:
        value = self.db.scalar("SELECT value FROM session_state WHERE key = ?", (key,))
        return None if value is None else str(value)


OUTBOUND_VERSION: Final = 2  # PRAGMA user_version of schema/outbound.sql


def upgrade_outbound(db: Database) -> None:
    """Bring a file an older version wrote up to ``OUTBOUND_VERSION`` (checked again inside
    the write lock). Version 2 added ``answers``."""
    if int(db.scalar("PRAGMA user_version")) >= OUTBOUND_VERSION:
        return
    with db.write():
        if int(db.scalar("PRAGMA user_version")) >= OUTBOUND_VERSION:
            return
        db.execute(
            "CREATE TABLE IF NOT EXISTS answers (message_out_id TEXT NOT NULL,"
            " message_in_id TEXT NOT NULL, PRIMARY KEY (message_in_id, message_out_id))"
        )
        db.execute(f"PRAGMA user_version = {OUTBOUND_VERSION}")


class OutboundStore(OutboundReader):
    """The agent runner's writer. Creates the file and its schema when missing."""

    def __init__(self, path: Path | str) -> None:
        db = open_session_db(path, "outbound.sql")
        try:
            upgrade_outbound(db)
        except BaseException:
            db.close()
            raise
        super().__init__(path, _db=db)

    def insert_message(
        self,
        new: NewOutbound,
        *,
        run_id: str | None = None,
        min_seq: int = 0,
        now: int | None = None,
    ) -> Written:
        """Write one row with the next odd seq above both this table's max and ``min_seq``
        (the caller passes inbound.db's max, so numbers follow the conversation)."""
        stamp = now_ms() if now is None else now
        message_id = new.id or new_id("out", stamp)
        with self.db.write():
            top = max(int(self.db.scalar("SELECT ifnull(max(seq), 0) FROM messages_out")), min_seq)
            seq = next_odd(top)
            self.db.execute(
                f"INSERT INTO messages_out ({columns(rows.OutboundRow)})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    message_id,
                    seq,
                    new.in_reply_to,
                    stamp,
                    new.deliver_after_ms,
                    messages.outbound_kind(new.content),
                    new.platform_id,
                    new.channel_type,
                    new.thread_id,
                    messages.encode_text(new.content),
                    run_id,
                ),
            )
            for answered in sorted(set(new.answers)):
                self.db.execute(
                    "INSERT OR IGNORE INTO answers (message_out_id, message_in_id) VALUES (?, ?)",
                    (message_id, answered),
                )
        return Written(message_id, seq)

    def write_and_ack(
        self,
        news: Sequence[NewOutbound],
        ids: Iterable[str],
        status: AckStatus,
        *,
        run_id: str,
        min_seq: int = 0,
        now: int | None = None,
    ) -> list[Written]:
        """Insert ``news`` (as ``insert_message``, seqs in order) and ack ``ids`` with
        ``status``, in one transaction. A batch's answer and its ack commit together: a
        runner killed before the commit answered nothing (the batch is retried), one killed
        after it answered once (the batch is settled), never the answer without the ack."""
        stamp = now_ms() if now is None else now
        with self.db.write():
            written = [
                self.insert_message(new, run_id=run_id, min_seq=min_seq, now=stamp) for new in news
            ]
            self._set_acks(ids, status, run_id, stamp)
        return written

    def _set_acks(
        self, ids: Iterable[str], status: AckStatus, run_id: str, now: int | None
    ) -> None:
        stamp = now_ms() if now is None else now
        with self.db.write():
            for message_id in ids:
                self.db.execute(
                    "INSERT INTO processing_ack (message_id, status, run_id, status_changed_ms)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (message_id) DO UPDATE SET"
                    " status = excluded.status, run_id = excluded.run_id,"
                    " status_changed_ms = excluded.status_changed_ms",
                    (message_id, status, run_id, stamp),
                )

    def claim(self, ids: Iterable[str], run_id: str, *, now: int | None = None) -> None:
        self._set_acks(ids, AckStatus.PROCESSING, run_id, now)

    def complete(self, ids: Iterable[str], run_id: str, *, now: int | None = None) -> None:
        self._set_acks(ids, AckStatus.COMPLETED, run_id, now)

    def fail(self, ids: Iterable[str], run_id: str, *, now: int | None = None) -> None:
        self._set_acks(ids, AckStatus.FAILED, run_id, now)

    def start_run(self, run_id: str, *, now: int | None = None) -> int:
        """Begin a run: record it in container_state and drop ``processing`` claims left by
        earlier runs (their rows become claimable again). Returns how many were dropped."""
        stamp = now_ms() if now is None else now
        with self.db.write():
            self.db.execute(
                "DELETE FROM processing_ack WHERE status = 'processing' AND run_id <> ?", (run_id,)
            )
            dropped = self.db.changes()
            self.db.execute(
                "INSERT INTO container_state (id, run_id, started_at_ms, current_tool,"
                " tool_declared_timeout_ms, tool_started_at_ms, turns, updated_at_ms)"
                " VALUES (1, ?, ?, NULL, NULL, NULL, 0, ?) ON CONFLICT (id) DO UPDATE SET"
                " run_id = excluded.run_id, started_at_ms = excluded.started_at_ms,"
                " current_tool = NULL, tool_declared_timeout_ms = NULL,"
                " tool_started_at_ms = NULL, turns = 0, updated_at_ms = excluded.updated_at_ms",
                (run_id, stamp, stamp),
            )
        return dropped

    def resume_run(self, run_id: str, *, now: int | None = None) -> bool:
        """Go on with ``run_id`` in a new runner process of the same container (the runner
        re-execs itself to shed memory). Unlike ``start_run`` it drops no claim and keeps
        ``started_at_ms`` (the sweeper's spawn grace) and ``turns``; it only clears a tool the
        old process may have left recorded. False, with nothing changed, when
        container_state belongs to another run (or has no row)."""
        stamp = now_ms() if now is None else now
        with self.db.write():
            self.db.execute(
                "UPDATE container_state SET current_tool = NULL, tool_declared_timeout_ms = NULL,"
                " tool_started_at_ms = NULL, updated_at_ms = ? WHERE id = 1 AND run_id = ?",
                (stamp, run_id),
            )
            return self.db.changes() == 1

    def set_tool(
        self, tool: str | None, *, declared_timeout_ms: int | None = None, now: int | None = None
    ) -> None:
        """Record the tool in flight (None when it ended)."""
        stamp = now_ms() if now is None else now
        with self.db.write():
            self.db.execute(
                "UPDATE container_state SET current_tool = ?, tool_declared_timeout_ms = ?,"
                " tool_started_at_ms = ?, updated_at_ms = ? WHERE id = 1",
                (tool, declared_timeout_ms if tool else None, stamp if tool else None, stamp),
            )

    def count_turn(self, *, now: int | None = None) -> int:
        """One more model turn in this run (the sweeper enforces a ceiling)."""
        stamp = now_ms() if now is None else now
        with self.db.write():
            self.db.execute(
                "UPDATE container_state SET turns = turns + 1, updated_at_ms = ? WHERE id = 1",
                (stamp,),
            )
            return int(self.db.scalar("SELECT ifnull(max(turns), 0) FROM container_state"))

    def reset_turns(self, *, now: int | None = None) -> None:
        """A new batch starts: ``turns`` counts the model calls of the current batch."""
        with self.db.write():
            self.db.execute(
                "UPDATE container_state SET turns = 0, updated_at_ms = ? WHERE id = 1",
                (now_ms() if now is None else now,),
            )

    def set_state(self, key: str, value: str, *, now: int | None = None) -> None:
        with self.db.write():
            self.db.execute(
                "INSERT INTO session_state (key, value, updated_at_ms) VALUES (?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
                " updated_at_ms = excluded.updated_at_ms",
                (key, value, now_ms() if now is None else now),
            )

    def delete_state(self, key: str) -> None:
        with self.db.write():
            self.db.execute("DELETE FROM session_state WHERE key = ?", (key,))
