"""Run bookkeeping in ``central.db`` (migration 0040): which runs' leftover claims were
settled, and which messages were given up on. Used by ``Sandbox.wake`` and the sweeper through
``nanoclaw_common.sandbox.settle``.

Also ``leftover_claims``: the ``processing`` claims in a session's ``outbound.db``, read the
way the host reads that file (read-only), with one recovery: a container killed in the middle
of a write leaves a hot journal, which a read-only connection cannot roll back. Then the file
is opened read-write once, which rolls it back, exactly as the next run would.
"""

from __future__ import annotations

import os
from pathlib import Path

import apsw

from nanoclaw_common.store import rows
from nanoclaw_common.store.bounds import open_host_reader
from nanoclaw_common.store.central.base import CentralPart
from nanoclaw_common.store.outbound import OutboundReader
from nanoclaw_common.store.sqlite import Mode, columns


class FailedMessage(rows.Row, frozen=True):
    session_id: str
    message_id: str
    tries: int
    reason: str
    failed_at_ms: int


class RunLedger(CentralPart):
    """Verb-named methods over the run tables of ``central.db``."""

    def is_settled(self, session_id: str, run_id: str) -> bool:
        """True when ``run_id``'s leftover claims in the session were settled already."""
        return bool(
            self.db.scalar(
                "SELECT 1 FROM settled_runs WHERE session_id = ? AND run_id = ?",
                (session_id, run_id),
            )
        )

    def mark_settled(self, session_id: str, run_id: str, claims: int, *, now: int) -> bool:
        """Record that ``run_id``'s claims are settled; False when it already was."""
        with self.db.write():
            self.db.execute(
                "INSERT OR IGNORE INTO settled_runs (session_id, run_id, claims, settled_at_ms)"
                " VALUES (?, ?, ?, ?)",
                (session_id, run_id, claims, now),
            )
            return self.db.changes() == 1

    def record_failure(
        self, session_id: str, message_id: str, tries: int, reason: str, *, now: int
    ) -> None:
        """Record (or update) that a message was given up after ``tries``, and why."""
        with self.db.write():
            self.db.execute(
                "INSERT INTO failed_messages (session_id, message_id, tries, reason,"
                " failed_at_ms) VALUES (?, ?, ?, ?, ?) ON CONFLICT (session_id, message_id)"
                " DO UPDATE SET tries = excluded.tries, reason = excluded.reason,"
                " failed_at_ms = excluded.failed_at_ms",
                (session_id, message_id, tries, reason, now),
            )

    def list_failures(
        self, session_id: str | None = None, *, limit: int = 50
    ) -> list[FailedMessage]:
        """The ``limit`` (at least 1) latest given-up messages, of all sessions or one."""
        where, params = ("WHERE session_id = ?", (session_id,)) if session_id else ("", ())
        return [
            FailedMessage(*values)
            for values in self.db.all(
                f"SELECT {columns(FailedMessage)} FROM failed_messages {where}"
                " ORDER BY failed_at_ms DESC LIMIT ?",
                (*params, max(1, limit)),
            )
        ]


def leftover_claims(outbound_db: Path, run_id: str | None) -> list[rows.Ack]:
    """The ``processing`` claims of run ``run_id`` in ``outbound_db`` (empty when the file
    does not exist, or there is no run). Only the run the host recorded for the session
    (``sessions.run_id``) can have left claims to settle: a later run drops every other
    run's claims when it starts. Claims under any other run id were written by hand, and
    reading (and settling) them would let a container grow ``settled_runs`` one forged run
    id at a time, and make each pass read however many it wrote. A link at ``outbound_db``
    is not followed but refused (``session_vfs``)."""
    if not os.path.lexists(outbound_db) or not run_id:
        return []
    try:
        reader = OutboundReader(outbound_db)
        try:
            return reader.acks("processing", run_id=run_id)
        finally:
            reader.close()
    except apsw.ReadOnlyError:
        pass  # a hot journal: roll it back below
    recovery = open_host_reader(outbound_db, Mode.SESSION)
    try:
        return OutboundReader(outbound_db, _db=recovery).acks("processing", run_id=run_id)
    finally:
        recovery.close()
