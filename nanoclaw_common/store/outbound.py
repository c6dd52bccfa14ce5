"""``outbound.db``: container → host. ``OutboundReader`` is the host's read-only view;
``OutboundStore`` is the agent runner's writer.

Container rows take the next **odd** seq, allocated inside the ``BEGIN IMMEDIATE`` transaction
that inserts the row (upstream read the max outside any transaction, a race between the
runner and its tool processes).

**Every byte of this file is the container's.** A row may hold a 100 MB column, a seq that
is text, a kind the CHECK constraint never saw (the container can rewrite the file), and
``messages_out`` may even be a view. So the host's reads are bounded before anything is
fetched (docs/security.md, "Rows"):

- the host's connection has ``SQLITE_LIMIT_LENGTH`` = ``MAX_VALUE_BYTES``: no value longer
  than the largest legitimate one is ever materialized;
- every column is checked in SQL (``typeof``, ``octet_length``, which SQLite answers from the
  record header without reading the value) and fetched only when within its bound;
- delivery tails ``messages_out`` by ``rowid`` (``tail``), which SQLite assigns in insertion
  order, so a row written with a seq at or below what the host has seen is still *seen* (and
  refused), never skipped; lookups go by rowid or seq, never through the text index on
  ``id``, whose comparisons load a whole key however long it is;
- the content of a row is fetched only when it is processed (``content_at``), one at a
  time, so a page of rows costs kilobytes, not a page of megabyte contents;
- ``messages_out`` must be an ordinary table without generated columns, checked in the same
  read transaction as the read (a view could compute rows forever).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Final

import apsw
import msgspec

from nanoclaw_common import messages
from nanoclaw_common.clock import now_ms
from nanoclaw_common.errors import Refused
from nanoclaw_common.ids import is_safe_id, new_id
from nanoclaw_common.states import AckStatus
from nanoclaw_common.store import rows
from nanoclaw_common.store.bounds import (
    ACK_FITS,
    ACK_RUN_ID,
    ACK_STATUS,
    ALL_FIT,
    CONTENT,
    MAX_FIELD_BYTES,
    MAX_VALUE_BYTES,
    STATE_FITS,
    TAIL_SELECT,
    TEXT,
    TEXT_OR_NULL,
    UNUSABLE_ID_PREFIX,
    Tailed,
    fits,
    guarded,
    open_host_reader,
    tailed,
)
from nanoclaw_common.store.migrations import open_session_db
from nanoclaw_common.store.sqlite import Database, columns


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
    """Reads of ``outbound.db``. Opened by the host (``path``) it is read-only and bounded
    (module docstring); the runner's ``OutboundStore`` shares the verbs on its own
    connection."""

    def __init__(self, path: Path | str, *, _db: Database | None = None) -> None:
        self.db = _db or open_host_reader(path)
        self._checked_schema: int | None = None

    def close(self) -> None:
        self.db.close()

    def data_version(self) -> int:
        return self.db.data_version()

    # -- delivery's tail (bounded, by rowid) ----------------------------------------------

    def _check_schema(self) -> None:
        """``messages_out`` must be an ordinary table with no generated column: the
        container can replace it with a view (rows computed forever, values built in
        memory) or add generated columns. Checked again whenever the schema changed; call
        inside a read transaction, so the schema cannot change between this and the read."""
        version = int(self.db.scalar("PRAGMA schema_version"))
        if version == self._checked_schema:
            return
        try:
            found = self.db.one(
                "SELECT type, substr(sql, 1, 30) FROM sqlite_schema WHERE name = 'messages_out'"
            )
            plain = (
                found is not None
                and found[0] == "table"
                and not str(found[1] or "").upper().startswith("CREATE VIRTUAL")
                and all(
                    int(hidden) == 0
                    for *_cols, hidden in self.db.all("PRAGMA table_xinfo(messages_out)")
                )
            )
        except apsw.Error as exc:
            raise Refused(f"outbound.db: messages_out cannot be inspected ({exc})") from None
        if not plain:
            raise Refused("outbound.db: messages_out is not a plain table (refusing to read it)")
        self._checked_schema = version

    def tail(self, after_rowid: int, *, limit: int = 500) -> list[Tailed]:
        """Rows inserted after ``after_rowid`` (SQLite's insertion order), at most
        ``limit``, every column checked (``Tailed``); content not fetched."""
        with self.db.read():
            self._check_schema()
            return [
                tailed(values)
                for values in self.db.all(
                    f"{TAIL_SELECT} WHERE rowid > ? ORDER BY rowid LIMIT ?",
                    (after_rowid, limit),
                )
            ]

    def tailed_at(self, rowid: int) -> Tailed | None:
        with self.db.read():
            self._check_schema()
            found = self.db.one(f"{TAIL_SELECT} WHERE rowid = ?", (rowid,))
        return tailed(found) if found else None

    def tailed_by_seq(self, seq: int) -> list[Tailed]:
        """Rows with this seq (more than one only in a file the container forged), for
        deliveries recorded before rowids were."""
        with self.db.read():
            self._check_schema()
            return [
                tailed(values)
                for values in self.db.all(
                    f"{TAIL_SELECT} WHERE seq = ? ORDER BY rowid LIMIT 10", (seq,)
                )
            ]

    def key_at(self, rowid: int) -> str | None:
        """The deliveries key of the row at ``rowid`` (None: no such row)."""
        found = self.tailed_at(rowid)
        return found.key if found else None

    def last_rowid_up_to_seq(self, seq: int) -> int:
        """The highest rowid among rows with an integer seq ``<= seq`` (0: none): where a
        tail resumes for deliveries recorded by seq alone (``inbound.db`` version 2)."""
        with self.db.read():
            self._check_schema()
            value = self.db.scalar(
                "SELECT max(rowid) FROM messages_out WHERE typeof(seq) = 'integer' AND seq <= ?",
                (seq,),
            )
        return 0 if value is None else int(value)

    def content_at(self, tailed: Tailed) -> str | None:
        """The content of the row ``tailed`` names, fetched now (bounded); None when that
        row is gone, changed its id, or now holds content that is not text within
        ``messages.MAX_PAYLOAD_BYTES`` (the container rewrote it)."""
        with self.db.read():
            self._check_schema()
            found = self.db.one(
                "SELECT CASE WHEN typeof(id) = 'text' AND octet_length(id) <= ? THEN id END,"
                f" CASE WHEN {fits(*CONTENT)} THEN content END"
                " FROM messages_out WHERE rowid = ?",
                (MAX_FIELD_BYTES, tailed.rowid),
            )
        if found is None:
            return None
        row_id, content = found
        same = row_id == tailed.key or (
            tailed.key.startswith(UNUSABLE_ID_PREFIX) and not is_safe_id(str(row_id or ""))
        )
        return str(content) if same and isinstance(content, str) else None

    def address_preview(self, rowid: int, chars: int = 200) -> tuple[str | None, str | None]:
        """The first ``chars`` characters of a row's channel_type and platform_id, to show
        where a refused row was going. A value is read only when it is text of at most
        ``MAX_VALUE_BYTES`` (one row, one value at a time: a bounded, passing cost); NULL is
        "", a longer value or another type None."""
        probes = ", ".join(
            f"CASE WHEN {column} IS NULL THEN '' WHEN {fits(column, TEXT, MAX_VALUE_BYTES)}"
            f" THEN substr({column}, 1, ?) END"
            for column in ("channel_type", "platform_id")
        )
        with self.db.read():
            self._check_schema()
            found = self.db.one(
                f"SELECT {probes} FROM messages_out WHERE rowid = ?", (chars, chars, rowid)
            )
        if found is None:
            return None, None
        channel_type, platform_id = found
        return (
            channel_type if isinstance(channel_type, str) else None,
            platform_id if isinstance(platform_id, str) else None,
        )

    # -- bounded reads for everyone else ------------------------------------------------

    def messages_after(self, seq: int, *, limit: int = 100) -> list[rows.OutboundRow]:
        """Rows with a seq above ``seq``, in seq order; rows with a column out of bounds are
        left out (delivery reports those)."""
        return [
            rows.OutboundRow(*r)
            for r in self.db.all(
                f"SELECT {columns(rows.OutboundRow)} FROM messages_out WHERE seq > ?"
                f" AND {ALL_FIT} ORDER BY seq LIMIT ?",
                (seq, limit),
            )
        ]

    def get_message(self, message_id: str) -> rows.OutboundRow | None:
        found = self.db.one(
            f"SELECT {columns(rows.OutboundRow)} FROM messages_out WHERE id = ? AND {ALL_FIT}",
            (message_id,),
        )
        return rows.OutboundRow(*found) if found else None

    def get_by_seq(self, seq: int) -> rows.OutboundRow | None:
        found = self.db.one(
            f"SELECT {columns(rows.OutboundRow)} FROM messages_out WHERE seq = ? AND {ALL_FIT}",
            (seq,),
        )
        return rows.OutboundRow(*found) if found else None

    def max_seq(self) -> int:
        value = self.db.scalar("SELECT max(seq) FROM messages_out WHERE typeof(seq) = 'integer'")
        return 0 if value is None else int(value)

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
                f"SELECT {columns(rows.OutboundRow)} FROM messages_out WHERE {ALL_FIT} AND"
                f" (id IN (SELECT message_out_id FROM answers WHERE message_in_id IN ({marks}))"
                f" OR ({guarded('in_reply_to', TEXT_OR_NULL, MAX_FIELD_BYTES)} IN ({marks})"
                " AND NOT EXISTS (SELECT 1 FROM answers WHERE"
                f" {guarded('message_out_id', TEXT, MAX_FIELD_BYTES)} = messages_out.id)))"
                " ORDER BY seq",
                [*ids, *ids],
            )
        ]

    def answered_by(self, message_out_id: str) -> list[str]:
        """The inbound rows an outbound row answers (its turn's batch), in id order."""
        return [
            str(m)
            for (m,) in self.db.all(
                "SELECT message_in_id FROM answers WHERE"
                f" {guarded('message_out_id', TEXT, MAX_FIELD_BYTES)} = ?"
                f" AND {fits('message_in_id', TEXT, MAX_FIELD_BYTES)} ORDER BY message_in_id",
                (message_out_id,),
            )
        ]

    def acks(self, status: str | None = None, *, run_id: str | None = None) -> list[rows.Ack]:
        """Acks (of ``status``, of ``run_id``), oldest change first; malformed ones (wrong
        types, oversized ids, an unknown status) are left out: they cannot name a message
        or a run."""
        where, params = "", []
        if status:
            where, params = f"AND {ACK_STATUS} = ?", [status]
        if run_id is not None:
            where, params = f"{where} AND {ACK_RUN_ID} = ?", [*params, run_id]
        return [
            rows.Ack(*r)
            for r in self.db.all(
                f"SELECT {columns(rows.Ack)} FROM processing_ack WHERE {ACK_FITS} {where}"
                " ORDER BY status_changed_ms",
                params,
            )
        ]

    def settled_acks(self) -> Iterator[rows.Ack]:
        """Completed and failed acks, one at a time (however many the container wrote, none
        is held longer than it takes to look at it). Consume it before closing the reader."""
        cursor = self.db.conn.execute(
            f"SELECT {columns(rows.Ack)} FROM processing_ack"
            f" WHERE {ACK_STATUS} IN ('completed', 'failed') AND {ACK_FITS}"
        )
        try:
            for values in cursor:
                yield rows.Ack(*values)
        finally:
            cursor.close()

    def settled_ids(self) -> set[str]:
        """Ids any run acked completed or failed: never process these again."""
        return {
            m
            for (m,) in self.db.all(
                "SELECT message_id FROM processing_ack"
                f" WHERE {ACK_STATUS} IN ('completed', 'failed') AND {ACK_FITS}"
            )
        }

    def claimed_ids(self, run_id: str) -> set[str]:
        return {
            m
            for (m,) in self.db.all(
                f"SELECT message_id FROM processing_ack WHERE {ACK_STATUS} = 'processing'"
                f" AND {ACK_RUN_ID} = ? AND {ACK_FITS}",
                (run_id,),
            )
        }

    def last_activity_ms(self) -> int | None:
        """The newest write by the container: an outbound row or an ack (not the heartbeat,
        which beats whether or not the agent does anything). Non-integer times are ignored."""
        value = self.db.scalar(
            "SELECT max(t) FROM (SELECT max(timestamp_ms) AS t FROM messages_out"
            " WHERE typeof(timestamp_ms) = 'integer' UNION ALL SELECT max(status_changed_ms)"
            " FROM processing_ack WHERE typeof(status_changed_ms) = 'integer')"
        )
        return None if value is None else int(value)

    def container_state(self) -> rows.ContainerState | None:
        """The current run's state; None when missing or malformed."""
        found = self.db.one(
            f"SELECT {columns(rows.ContainerState)} FROM container_state WHERE id = 1"
            f" AND {STATE_FITS}"
        )
        return rows.ContainerState(*found) if found else None

    def get_state(self, key: str) -> str | None:
        value = self.db.scalar(
            "SELECT value FROM session_state WHERE key = ?"
            f" AND {fits('value', TEXT, MAX_VALUE_BYTES)}",
            (key,),
        )
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
    """The agent runner's writer. Creates the file and its schema when missing. The host
    opens one only to create the file (``container_file=True``: see ``Database``); the
    runner's own is plain (its folder is its own to spoil)."""

    def __init__(self, path: Path | str, *, container_file: bool = False) -> None:
        db = open_session_db(path, "outbound.sql", container_file=container_file)
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
