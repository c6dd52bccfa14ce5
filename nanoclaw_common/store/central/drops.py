"""The audit of refused messages (``dropped_messages``), counted per chat and reason."""

from __future__ import annotations

from nanoclaw_common.clock import now_ms
from nanoclaw_common.store import rows
from nanoclaw_common.store.central.base import CentralPart


class Drops(CentralPart):
    """Verb-named methods over ``dropped_messages``."""

    def record_drop(
        self,
        channel_type: str,
        platform_id: str,
        reason: str,
        *,
        user_id: str | None = None,
        sender_name: str | None = None,
        messaging_group_id: str | None = None,
        agent_group_id: str | None = None,
        detail: str | None = None,
        count: int = 1,
        now: int | None = None,
    ) -> None:
        """Count ``count`` refused messages (one, unless a flood was counted in memory
        first), per (chat, reason)."""
        stamp = now or now_ms()
        with self.db.write():
            self.db.execute(
                "INSERT INTO dropped_messages (channel_type, platform_id, reason, user_id,"
                " sender_name, messaging_group_id, agent_group_id, detail, message_count,"
                " first_seen_ms, last_seen_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (channel_type, platform_id, reason) DO UPDATE SET"
                " user_id = coalesce(excluded.user_id, dropped_messages.user_id),"
                " sender_name = coalesce(excluded.sender_name, dropped_messages.sender_name),"
                " messaging_group_id = coalesce(excluded.messaging_group_id,"
                "   dropped_messages.messaging_group_id),"
                " agent_group_id = coalesce(excluded.agent_group_id,"
                "   dropped_messages.agent_group_id),"
                " detail = coalesce(excluded.detail, dropped_messages.detail),"
                " message_count = dropped_messages.message_count + excluded.message_count,"
                " last_seen_ms = excluded.last_seen_ms",
                (
                    channel_type,
                    platform_id,
                    reason,
                    user_id,
                    sender_name,
                    messaging_group_id,
                    agent_group_id,
                    detail,
                    count,
                    stamp,
                    stamp,
                ),
            )

    def clear_drops(
        self,
        channel_type: str | None = None,
        platform_id: str | None = None,
        *,
        reason: str | None = None,
    ) -> int:
        """Forget drop records: all, one chat's, or one chat's of one reason."""
        clauses, params = [], []
        for column, value in (
            ("channel_type", channel_type),
            ("platform_id", platform_id),
            ("reason", reason),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self.db.write():
            self.db.execute(f"DELETE FROM dropped_messages{where}", params)
            return self.db.changes()

    def list_drops(self, limit: int = 50) -> list[rows.DroppedMessage]:
        """The ``limit`` (at least 1) most recently seen drop records, newest first."""
        return self._rows(
            rows.DroppedMessage, "ORDER BY last_seen_ms DESC, reason LIMIT ?", (max(1, limit),)
        )
