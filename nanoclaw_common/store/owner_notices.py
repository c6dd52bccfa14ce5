"""Notices to the owner about failed and refused messages (migrations 0032, 0080), kept in
``central.db`` until sent.

Nothing a container does may grow this table without bound, so notices are **coalesced**:
at most one pending notice per agent group and kind (the delivery status it is about), which
each new cause updates (``count`` + 1, ``text`` = the latest cause's) instead of adding a row.
A re-run after a crash must not count its cause twice: every notice keeps the ids of its
latest ``RECENT_CAUSES`` causes, and a cause found among them, or among the group's most
recently settled notices, is not counted again (a re-run comes first thing after the
restart, long before that many other causes could push it out). Settled notices are purged
by age and by count (``purge``).
"""

from __future__ import annotations

import json
from typing import Final

import msgspec

from nanoclaw_common.clock import now_ms
from nanoclaw_common.ids import new_id
from nanoclaw_common.store.central.base import CentralPart

RECENT_CAUSES: Final = 50  # cause ids a notice remembers (to recognise a re-run)
KEEP_SETTLED: Final = 200  # settled notices kept at most, whatever their age
_ERROR_CHARS: Final = 500


class OwnerNotice(msgspec.Struct, frozen=True):
    """One notice: ``count`` causes of ``kind`` for one agent group; ``text`` describes the
    latest."""

    id: str
    agent_group_id: str
    kind: str
    text: str
    count: int
    status: str
    attempts: int
    next_attempt_at_ms: int
    last_error: str | None
    created_at_ms: int
    updated_at_ms: int


_COLUMNS: Final = ", ".join(OwnerNotice.__struct_fields__)


class OwnerNotices(CentralPart):
    """Verb-named methods over ``owner_notices``."""

    def queue(
        self,
        agent_group_id: str,
        kind: str,
        cause_id: str,
        text: str,
        *,
        now: int | None = None,
    ) -> bool:
        """Count ``cause_id`` into the group's pending notice of ``kind`` (created, due now,
        when there is none). False when this cause was counted already (a re-run)."""
        stamp = now_ms() if now is None else now
        with self.db.write():
            recent = self.db.all(
                "SELECT id, status, causes FROM owner_notices WHERE agent_group_id = ?"
                " AND kind = ? ORDER BY status = 'pending' DESC, updated_at_ms DESC LIMIT 4",
                (agent_group_id, kind),
            )
            for _id, _status, causes in recent:
                if cause_id in json.loads(causes):
                    return False
            pending = next(((i, c) for i, s, c in recent if s == "pending"), None)
            if pending is not None:
                notice_id, causes = pending
                kept = [*json.loads(causes), cause_id][-RECENT_CAUSES:]
                self.db.execute(
                    "UPDATE owner_notices SET count = count + 1, text = ?, causes = ?,"
                    " updated_at_ms = ? WHERE id = ?",
                    (text, json.dumps(kept), stamp, notice_id),
                )
                return True
            self.db.execute(
                "INSERT INTO owner_notices (id, agent_group_id, kind, text, count, causes,"
                " status, attempts, next_attempt_at_ms, created_at_ms, updated_at_ms)"
                " VALUES (?, ?, ?, ?, 1, ?, 'pending', 0, ?, ?, ?)",
                (
                    new_id("notice", stamp),
                    agent_group_id,
                    kind,
                    text,
                    json.dumps([cause_id]),
                    stamp,
                    stamp,
                    stamp,
                ),
            )
            return True

    def list(self, status: str | None = None) -> list[OwnerNotice]:
        """Every notice, or those in ``status``, oldest first."""
        where, params = ("WHERE status = ?", (status,)) if status else ("", ())
        return [
            OwnerNotice(*r)
            for r in self.db.all(
                f"SELECT {_COLUMNS} FROM owner_notices {where} ORDER BY created_at_ms, id",
                params,
            )
        ]

    def next_due_ms(self) -> int | None:
        """When the earliest pending notice is due (None: none pending)."""
        value = self.db.scalar(
            "SELECT min(next_attempt_at_ms) FROM owner_notices WHERE status = 'pending'"
        )
        return None if value is None else int(value)

    def sent(self, notice: OwnerNotice, key: str, *, now: int | None = None) -> None:
        """``notice`` (as it was read before the send) went out: mark it sent and start the
        rate-limit window of ``key``, in one transaction (the window starts only with a
        successful send). Causes counted into it while the DM was on its way were not in
        the DM: they stay pending, in a notice of their own."""
        stamp = now_ms() if now is None else now
        with self.db.write():
            current = self.db.one(
                "SELECT count, text, causes FROM owner_notices WHERE id = ? AND status = 'pending'",
                (notice.id,),
            )
            self.db.execute(
                "UPDATE owner_notices SET status = 'sent', count = ?, text = ?,"
                " attempts = attempts + 1, last_error = NULL, updated_at_ms = ? WHERE id = ?",
                (notice.count, notice.text, stamp, notice.id),
            )
            if current is not None and int(current[0]) > notice.count:
                self.db.execute(
                    "INSERT INTO owner_notices (id, agent_group_id, kind, text, count, causes,"
                    " status, attempts, next_attempt_at_ms, created_at_ms, updated_at_ms)"
                    " VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)",
                    (
                        new_id("notice", stamp),
                        notice.agent_group_id,
                        notice.kind,
                        current[1],
                        int(current[0]) - notice.count,
                        current[2],
                        stamp,
                        stamp,
                        stamp,
                    ),
                )
            self.db.execute(
                "INSERT INTO notices (key, last_sent_ms, suppressed) VALUES (?, ?, 0)"
                " ON CONFLICT (key) DO UPDATE SET last_sent_ms = excluded.last_sent_ms,"
                " suppressed = 0",
                (key, stamp),
            )

    def defer(self, notice_id: str, until_ms: int, *, now: int | None = None) -> None:
        """Not before ``until_ms`` (the end of the group's window); it keeps counting."""
        stamp = now_ms() if now is None else now
        with self.db.write():
            self.db.execute(
                "UPDATE owner_notices SET next_attempt_at_ms = max(next_attempt_at_ms, ?),"
                " updated_at_ms = ? WHERE id = ? AND status = 'pending'",
                (until_ms, stamp, notice_id),
            )

    def retry(
        self, notice_id: str, error: str, next_attempt_at_ms: int, *, now: int | None = None
    ) -> None:
        """A send failed: count the attempt, keep ``error`` (capped) and try again at
        ``next_attempt_at_ms``."""
        stamp = now_ms() if now is None else now
        with self.db.write():
            self.db.execute(
                "UPDATE owner_notices SET attempts = attempts + 1, last_error = ?,"
                " next_attempt_at_ms = ?, updated_at_ms = ? WHERE id = ?",
                (error[:_ERROR_CHARS], next_attempt_at_ms, stamp, notice_id),
            )

    def fail(self, notice_id: str, error: str, *, now: int | None = None) -> None:
        """Given up (a day of failed sends). The group's next cause opens a new notice."""
        stamp = now_ms() if now is None else now
        with self.db.write():
            self.db.execute(
                "UPDATE owner_notices SET status = 'failed', attempts = attempts + 1,"
                " last_error = ?, updated_at_ms = ? WHERE id = ?",
                (error[:_ERROR_CHARS], stamp, notice_id),
            )

    def purge(self, *, before_ms: int, keep: int = KEEP_SETTLED) -> int:
        """Forget settled notices last changed before ``before_ms``, and all but the newest
        ``keep`` settled ones whatever their age; returns how many went."""
        with self.db.write():
            self.db.execute(
                "DELETE FROM owner_notices WHERE status != 'pending' AND (updated_at_ms < ?"
                " OR id NOT IN (SELECT id FROM owner_notices WHERE status != 'pending'"
                " ORDER BY updated_at_ms DESC, id DESC LIMIT ?))",
                (before_ms, max(0, keep)),
            )
            return self.db.changes()
