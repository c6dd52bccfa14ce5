"""Quarantined sessions (migration 0060): sessions whose container-written files were refused
or stalled a host program, and that no host program touches until an operator releases them.

Which errors mean "this session's files are hostile" (``HOSTILE_FILES``): a ``hostfs``
refusal (a link or a non-regular file where the host reads), a ``session_vfs`` refusal (a
FIFO, a link or a WAL file where SQLite would open its database or journal) and a
``stall.Stalled`` (a call on the session's files did not return in time). A legitimate
runner never produces any of them, so a session is never retried in a loop for them:
``quarantine_session`` records it once and logs it once.
"""

from __future__ import annotations

from typing import Any, Final

from nanoclaw_common.clock import now_ms
from nanoclaw_common.hostfs import UnsafePath
from nanoclaw_common.stall import Stalled
from nanoclaw_common.store import rows
from nanoclaw_common.store.central.base import CentralPart
from nanoclaw_common.store.session_vfs import UnsafeSessionFile
from nanoclaw_common.store.sqlite import columns
from nanoclaw_common.untrusted import shown_text

HOSTILE_FILES: Final = (UnsafePath, UnsafeSessionFile, Stalled)


class QuarantinedSession(rows.Row, frozen=True):
    session_id: str
    program: str
    reason: str
    quarantined_at_ms: int


class Quarantine(CentralPart):
    """Verb-named methods over ``quarantined_sessions``."""

    def add(self, session_id: str, *, program: str, reason: str, now: int | None = None) -> bool:
        """Quarantine a session; False when it already was (the first reason is kept) or
        when the session no longer exists."""
        with self.db.write():
            self.db.execute(
                "INSERT OR IGNORE INTO quarantined_sessions"
                " (session_id, program, reason, quarantined_at_ms)"
                " SELECT id, ?, ?, ? FROM sessions WHERE id = ?",
                (program, reason, now_ms() if now is None else now, session_id),
            )
            return self.db.changes() == 1

    def release(self, session_id: str) -> bool:
        """Serve the session again; True when it was quarantined."""
        with self.db.write():
            self.db.execute("DELETE FROM quarantined_sessions WHERE session_id = ?", (session_id,))
            return self.db.changes() == 1

    def ids(self) -> set[str]:
        """The ids of every quarantined session."""
        return {str(s) for (s,) in self.db.all("SELECT session_id FROM quarantined_sessions")}

    def is_quarantined(self, session_id: str) -> bool:
        """True when the session is quarantined."""
        return bool(
            self.db.scalar("SELECT 1 FROM quarantined_sessions WHERE session_id = ?", (session_id,))
        )

    def list(self) -> list[QuarantinedSession]:
        """Every quarantined session, oldest quarantine first."""
        return [
            QuarantinedSession(*values)
            for values in self.db.all(
                f"SELECT {columns(QuarantinedSession)} FROM quarantined_sessions"
                " ORDER BY quarantined_at_ms, session_id"
            )
        ]


def quarantine_session(
    central: CentralPart,
    session_id: str,
    error: BaseException,
    *,
    program: str,
    log: Any,
    now: int | None = None,
) -> bool:
    """Record ``session_id`` as quarantined because of ``error`` and log it, once: True when
    this call did it. The reason is shown escaped and capped (it may quote file names the
    container chose)."""
    reason = shown_text(str(error))
    if not Quarantine(central).add(session_id, program=program, reason=reason, now=now):
        return False
    log.error(
        "SESSION QUARANTINED: its files are unsafe to read ({}); this session is no longer"
        " served until `nanoclaw quarantine release {}`",
        reason,
        session_id,
        session=session_id,
    )
    return True
