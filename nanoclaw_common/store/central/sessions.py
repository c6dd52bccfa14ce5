"""Sessions (one conversation of one agent group) and the restart requests for their
containers (migration 0050)."""

from __future__ import annotations

import msgspec

from nanoclaw_common.clock import now_ms
from nanoclaw_common.errors import NotFound
from nanoclaw_common.ids import new_id
from nanoclaw_common.states import (
    ContainerStatus,
    SessionMode,
    SessionStatus,
)
from nanoclaw_common.store import rows
from nanoclaw_common.store.central.base import CentralPart
from nanoclaw_common.store.sqlite import columns


class RestartRequest(msgspec.Struct, frozen=True):
    """A session whose run must be replaced by a fresh one (migration 0050)."""

    session_id: str
    requested_at_ms: int
    reason: str


class Sessions(CentralPart):
    """Verb-named methods over ``sessions`` and ``restart_requests``."""

    def create_session(
        self,
        agent_group_id: str,
        messaging_group_id: str | None,
        thread_id: str | None = None,
        *,
        now: int | None = None,
    ) -> rows.Session:
        """A new active session with a stopped container (no lookup: see ``resolve_session``)."""
        stamp = now or now_ms()
        session = rows.Session(
            id=new_id("sess", stamp),
            agent_group_id=agent_group_id,
            messaging_group_id=messaging_group_id,
            thread_id=thread_id,
            agent_provider=None,
            status=SessionStatus.ACTIVE,
            container_status=ContainerStatus.STOPPED,
            run_id=None,
            run_started_at_ms=None,
            last_active_ms=stamp,
            created_at_ms=stamp,
        )
        with self.db.write():
            self.db.execute(
                f"INSERT INTO sessions ({columns(rows.Session)}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                msgspec.structs.astuple(session),
            )
        return session

    def get_session(self, session_id: str) -> rows.Session | None:
        """The session with this id (None: unknown)."""
        return self._row(rows.Session, "WHERE id = ?", (session_id,))

    def find_active_session(
        self, agent_group_id: str, messaging_group_id: str | None, thread_id: str | None
    ) -> rows.Session | None:
        """The active session for exactly (group, chat, thread); newest if several."""
        return self._row(
            rows.Session,
            "WHERE agent_group_id = ? AND messaging_group_id IS ? AND thread_id IS ?"
            " AND status = 'active' ORDER BY created_at_ms DESC",
            (agent_group_id, messaging_group_id, thread_id),
        )

    def newest_active_session(self, agent_group_id: str) -> rows.Session | None:
        """The group's newest active session, whatever its chat (None: none)."""
        return self._row(
            rows.Session,
            "WHERE agent_group_id = ? AND status = 'active' ORDER BY created_at_ms DESC",
            (agent_group_id,),
        )

    def resolve_session(
        self,
        agent_group_id: str,
        messaging_group_id: str | None,
        thread_id: str | None,
        session_mode: str,
        *,
        now: int | None = None,
    ) -> tuple[rows.Session, bool]:
        """Find or create the session a message belongs to; True when created. Lookup and
        creation share one write transaction, so two routers never create two sessions."""
        mode = SessionMode(session_mode)
        with self.db.write():
            if mode is SessionMode.AGENT_SHARED:
                found = self.newest_active_session(agent_group_id)
                thread = None
            else:
                thread = thread_id if mode is SessionMode.PER_THREAD else None
                found = self.find_active_session(agent_group_id, messaging_group_id, thread)
            if found is not None:
                return found, False
            return self.create_session(agent_group_id, messaging_group_id, thread, now=now), True

    def list_sessions(
        self,
        *,
        agent_group_id: str | None = None,
        status: str | None = None,
        container_status: str | None = None,
    ) -> list[rows.Session]:
        """Sessions matching every filter given, oldest first."""
        clauses, params = [], []
        for column, value in (
            ("agent_group_id", agent_group_id),
            ("status", status),
            ("container_status", container_status),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        return self._rows(rows.Session, where + "ORDER BY created_at_ms", params)

    def live_sessions(self, since_ms: int) -> list[rows.Session]:
        """Active sessions whose container is not stopped or was active since ``since_ms``:
        the ones whose ``outbound.db`` delivery watches."""
        return self._rows(
            rows.Session,
            "WHERE status = 'active' AND (container_status <> 'stopped' OR last_active_ms >= ?)"
            " ORDER BY created_at_ms",
            (since_ms,),
        )

    def touch_session(self, session_id: str, *, now: int | None = None) -> None:
        """Set the session's ``last_active_ms`` to ``now``."""
        with self.db.write():
            self.db.execute(
                "UPDATE sessions SET last_active_ms = ? WHERE id = ?", (now or now_ms(), session_id)
            )

    def set_container_status(
        self,
        session_id: str,
        container_status: str,
        *,
        run_id: str | None = None,
        now: int | None = None,
    ) -> None:
        """Record a container transition. Starting a run records its id and start time; the
        run id stays after it stops, so its leftover claims can still be attributed."""
        ContainerStatus(container_status)
        stamp = now or now_ms()
        with self.db.write():
            if container_status == ContainerStatus.STARTING:
                self.db.execute(
                    "UPDATE sessions SET container_status = ?, run_id = ?, run_started_at_ms = ?,"
                    " last_active_ms = ? WHERE id = ?",
                    (container_status, run_id, stamp, stamp, session_id),
                )
            else:
                self.db.execute(
                    "UPDATE sessions SET container_status = ?, last_active_ms = ? WHERE id = ?",
                    (container_status, stamp, session_id),
                )
            if not self.db.changes():
                raise NotFound(f"session {session_id} not found")

    def request_group_restart(
        self, agent_group_id: str, reason: str, *, now: int | None = None
    ) -> list[str]:
        """Ask the sweeper to restart the group's running or starting containers (after an
        approval changed the group's image or MCP config); returns their session ids. A
        stopped session needs none: its next run reads the new config anyway. A newer request
        replaces an older one of the same session."""
        stamp = now or now_ms()
        with self.db.write():
            session_ids = [
                str(found[0])
                for found in self.db.all(
                    "SELECT id FROM sessions WHERE agent_group_id = ? AND status = 'active'"
                    " AND container_status <> 'stopped' ORDER BY created_at_ms",
                    (agent_group_id,),
                )
            ]
            for session_id in session_ids:
                self.db.execute(
                    "INSERT INTO restart_requests (session_id, requested_at_ms, reason)"
                    " VALUES (?, ?, ?) ON CONFLICT (session_id) DO UPDATE SET"
                    " requested_at_ms = max(requested_at_ms, excluded.requested_at_ms),"
                    " reason = excluded.reason",
                    (session_id, stamp, reason),
                )
        return session_ids

    def list_restart_requests(self) -> list[RestartRequest]:
        """Every pending restart request, oldest first."""
        return [
            RestartRequest(str(session_id), int(requested_at_ms), str(reason))
            for session_id, requested_at_ms, reason in self.db.all(
                "SELECT session_id, requested_at_ms, reason FROM restart_requests"
                " ORDER BY requested_at_ms, session_id"
            )
        ]

    def clear_restart_request(self, session_id: str, requested_at_ms: int) -> bool:
        """Delete the session's request if it is not newer than ``requested_at_ms`` (the one
        the caller acted on); a request written meanwhile stays for the next pass. True when
        deleted."""
        with self.db.write():
            self.db.execute(
                "DELETE FROM restart_requests WHERE session_id = ? AND requested_at_ms <= ?",
                (session_id, requested_at_ms),
            )
            return self.db.changes() > 0
