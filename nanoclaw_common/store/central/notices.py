"""Rate limits of notices (``notices``): when a notice under a key last went out."""

from __future__ import annotations

from nanoclaw_common.clock import now_ms
from nanoclaw_common.store.central.base import CentralPart


class Notices(CentralPart):
    """Verb-named methods over ``notices``."""

    def claim_notice(self, key: str, interval_ms: int, *, now: int | None = None) -> bool:
        """Rate limit: True (and record it) when no notice for ``key`` went out within
        ``interval_ms``; otherwise count it as suppressed and return False."""
        stamp = now or now_ms()
        with self.db.write():
            last = self.db.scalar("SELECT last_sent_ms FROM notices WHERE key = ?", (key,))
            if last is not None and stamp - int(last) < interval_ms:
                self.db.execute(
                    "UPDATE notices SET suppressed = suppressed + 1 WHERE key = ?", (key,)
                )
                return False
            self.db.execute(
                "INSERT INTO notices (key, last_sent_ms, suppressed) VALUES (?, ?, 0)"
                " ON CONFLICT (key) DO UPDATE SET last_sent_ms = excluded.last_sent_ms,"
                " suppressed = 0",
                (key, stamp),
            )
            return True

    def claim_notice_slot(
        self, key: str, slots: int, interval_ms: int, *, now: int | None = None
    ) -> bool:
        """Rate limit of ``slots`` per ``interval_ms``: True (and record it) when one of the
        keys ``<key>#0`` … ``<key>#<slots-1>`` is free (never used, or used longer ago than
        ``interval_ms``); one transaction."""
        stamp = now or now_ms()
        with self.db.write():
            used = {
                str(found_key): int(last)
                for found_key, last in self.db.all(
                    "SELECT key, last_sent_ms FROM notices WHERE key >= ? AND key < ?",
                    (f"{key}#", f"{key}$"),
                )
            }
            for slot in range(slots):
                slot_key = f"{key}#{slot}"
                last = used.get(slot_key)
                if last is None or stamp - last >= interval_ms:
                    self.db.execute(
                        "INSERT INTO notices (key, last_sent_ms, suppressed) VALUES (?, ?, 0)"
                        " ON CONFLICT (key) DO UPDATE SET last_sent_ms = excluded.last_sent_ms",
                        (slot_key, stamp),
                    )
                    return True
            return False

    def release_notice(self, key: str) -> None:
        """Forget a ``claim_notice`` (the notice it allowed was not sent after all)."""
        with self.db.write():
            self.db.execute("DELETE FROM notices WHERE key = ?", (key,))

    def last_notice_ms(self, key: str) -> int | None:
        """When the last notice under rate-limit ``key`` went out (None: never)."""
        value = self.db.scalar("SELECT last_sent_ms FROM notices WHERE key = ?", (key,))
        return None if value is None else int(value)
