"""The router's own outgoing messages (migration 0020): cards, denials and prompts the
router sends through an adapter directly, kept in ``central.db`` until sent."""

from __future__ import annotations

from typing import Final

import msgspec

from nanoclaw_common.clock import now_ms
from nanoclaw_common.store import rows
from nanoclaw_common.store.central.base import CentralPart
from nanoclaw_common.store.sqlite import columns

MAX_AGE_MS: Final = 24 * 3600 * 1000  # then a pending message is given up (status failed)


class OutboxItem(rows.Row, frozen=True):
    id: str
    channel_type: str
    platform_id: str
    thread_id: str | None
    kind: str
    body: str
    status: str
    attempts: int
    next_attempt_at_ms: int
    platform_message_id: str | None
    last_error: str | None
    created_at_ms: int
    updated_at_ms: int


class RouterOutbox(CentralPart):
    """Verb-named methods over ``router_outbox``."""

    def enqueue(
        self,
        item_id: str,
        *,
        channel_type: str,
        platform_id: str,
        thread_id: str | None,
        kind: str,
        body: str,
        now: int | None = None,
    ) -> bool:
        """Queue a message; False when one with this id exists (the cause was handled)."""
        stamp = now_ms() if now is None else now
        with self.db.write():
            self.db.execute(
                "INSERT OR IGNORE INTO router_outbox (id, channel_type, platform_id, thread_id,"
                " kind, body, status, attempts, next_attempt_at_ms, created_at_ms,"
                " updated_at_ms) VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)",
                (item_id, channel_type, platform_id, thread_id, kind, body, stamp, stamp, stamp),
            )
            return self.db.changes() == 1

    def due(self, *, now: int | None = None, limit: int = 50) -> list[OutboxItem]:
        """Up to ``limit`` pending messages due at ``now``, the longest due first."""
        stamp = now_ms() if now is None else now
        return [
            OutboxItem(*r)
            for r in self.db.all(
                f"SELECT {columns(OutboxItem)} FROM router_outbox"
                " WHERE status = 'pending' AND next_attempt_at_ms <= ?"
                " ORDER BY next_attempt_at_ms, created_at_ms LIMIT ?",
                (stamp, limit),
            )
        ]

    def next_due_ms(self) -> int | None:
        """When the earliest pending message is due (None: none pending)."""
        value = self.db.scalar(
            "SELECT min(next_attempt_at_ms) FROM router_outbox WHERE status = 'pending'"
        )
        return None if value is None else int(value)

    def mark_sent(
        self, item_id: str, platform_message_id: str | None, *, now: int | None = None
    ) -> None:
        """The message went out as ``platform_message_id``: sent, one more attempt, no error."""
        with self.db.write():
            self.db.execute(
                "UPDATE router_outbox SET status = 'sent', attempts = attempts + 1,"
                " platform_message_id = ?, last_error = NULL, updated_at_ms = ? WHERE id = ?",
                (platform_message_id, now_ms() if now is None else now, item_id),
            )

    def mark_retry(
        self, item_id: str, error: str, next_attempt_at_ms: int, *, now: int | None = None
    ) -> None:
        """A send failed: count the attempt, keep ``error`` (capped) and try again at
        ``next_attempt_at_ms``."""
        with self.db.write():
            self.db.execute(
                "UPDATE router_outbox SET attempts = attempts + 1, last_error = ?,"
                " next_attempt_at_ms = ?, updated_at_ms = ? WHERE id = ?",
                (error[:500], next_attempt_at_ms, now_ms() if now is None else now, item_id),
            )

    def mark_failed(self, item_id: str, error: str, *, now: int | None = None) -> None:
        """Given up: failed, with ``error`` (capped); it is never sent."""
        with self.db.write():
            self.db.execute(
                "UPDATE router_outbox SET status = 'failed', attempts = attempts + 1,"
                " last_error = ?, updated_at_ms = ? WHERE id = ?",
                (error[:500], now_ms() if now is None else now, item_id),
            )

    def get(self, item_id: str) -> OutboxItem | None:
        """The message ``item_id`` in whatever status (None: unknown)."""
        found = self.db.one(
            f"SELECT {columns(OutboxItem)} FROM router_outbox WHERE id = ?", (item_id,)
        )
        return OutboxItem(*found) if found else None

    def list(self, status: str | None = None) -> list[OutboxItem]:
        """Every message, or those in ``status``, oldest first."""
        where, params = ("WHERE status = ?", (status,)) if status else ("", ())
        return [
            OutboxItem(*r)
            for r in self.db.all(
                f"SELECT {columns(OutboxItem)} FROM router_outbox {where} ORDER BY created_at_ms",
                params,
            )
        ]


def encode_body(value: object) -> str:
    return msgspec.json.encode(value).decode()
