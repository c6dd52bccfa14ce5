"""The central store (``central.db``): the entity model, roles, sessions, destinations,
pending approvals and questions, the dropped-message audit and per-group container config.

WAL, busy_timeout 5 s, and every write is one ``BEGIN IMMEDIATE`` transaction. Each program
opens its own ``CentralStore`` after start-up; a store is never shared across processes.
"""

from __future__ import annotations

import re
import secrets
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec

from nanoclaw_common.clock import now_ms
from nanoclaw_common.errors import NotFound, Refused
from nanoclaw_common.ids import new_id
from nanoclaw_common.states import (
    ContainerStatus,
    DestinationType,
    EngageMode,
    IgnoredMessagePolicy,
    Role,
    SenderScope,
    SessionMode,
    SessionStatus,
    UnknownSenderPolicy,
)
from nanoclaw_common.store import rows
from nanoclaw_common.store.migrations import apply_migrations, schema_version
from nanoclaw_common.store.sqlite import Database, Mode, columns, refusing_duplicates

R = TypeVar("R", bound=rows.Row)

ApprovalClick = Literal["approved", "rejected", "unauthorized", "expired", "gone"]


def unguessable_id(prefix: str, now: int | None = None) -> str:
    """``<prefix>-<ms>-<32 hex>``: 128 random bits, for ids that authorize something (a card
    whose click approves a change). ``ids.new_id``'s 41 bits are for uniqueness, not secrecy.
    At most 51 characters for a 4-letter prefix, so it fits Telegram's 64-byte button data
    as it is."""
    stamp = now_ms() if now is None else now
    return f"{prefix}-{stamp}-{secrets.token_hex(16)}"


_NAME_RUN = re.compile(r"[^a-z0-9]+")


def normalize_name(name: str) -> str:
    """A destination or folder name: lower case, every run of other characters becomes one
    ``-``, no leading or trailing ``-``; empty becomes ``unnamed``. Never contains ``/`` or
    ``..``, so it is safe as a path component."""
    slug = _NAME_RUN.sub("-", name.lower()).strip("-")[:64].strip("-")
    return slug or "unnamed"


class Counts(msgspec.Struct, frozen=True):
    agent_groups: int
    messaging_groups: int
    wirings: int
    users: int
    sessions: int
    active_sessions: int
    running_containers: int
    dropped_messages: int
    pending_approvals: int


class RestartRequest(msgspec.Struct, frozen=True):
    """A session whose run must be replaced by a fresh one (migration 0050)."""

    session_id: str
    requested_at_ms: int
    reason: str


class HeldFile(msgspec.Struct, frozen=True):
    """An attachment kept with a pending sender or channel approval (migration 0021)."""

    name: str
    kind: str
    mime_type: str | None
    data: bytes


class CentralStore:
    """Verb-named methods over ``central.db``. Callers never see SQL or cursors."""

    def __init__(self, path: Path | str) -> None:
        self.db = Database(path, Mode.CENTRAL)

    @classmethod
    def open(cls, path: Path | str) -> CentralStore:
        """Open and bring the schema up to date."""
        store = cls(path)
        store.migrate()
        return store

    def close(self) -> None:
        self.db.close()

    def write(self) -> AbstractContextManager[None]:
        """One transaction for several verbs (``with store.write():``): they commit together
        or not at all."""
        return self.db.write()

    # -- schema ---------------------------------------------------------------------------

    def migrate(self) -> list[str]:
        return apply_migrations(self.db)

    def schema_version(self) -> int:
        return schema_version(self.db)

    def schema_dump(self) -> list[tuple[str, str, str]]:
        """(type, name, sql) of every schema object, for comparing schemas in tests."""
        return [
            (str(t), str(n), str(s))
            for t, n, s in self.db.all(
                "SELECT type, name, ifnull(sql, '') FROM sqlite_master ORDER BY type, name"
            )
        ]

    # -- helpers --------------------------------------------------------------------------

    def _rows(self, row_type: type[R], where: str = "", params: Any = ()) -> list[R]:
        table = _TABLES[row_type]
        sql = f"SELECT {columns(row_type)} FROM {table} {where}"
        return [row_type(*values) for values in self.db.all(sql, params)]

    def _row(self, row_type: type[R], where: str, params: Any) -> R | None:
        found = self._rows(row_type, where + " LIMIT 1", params)
        return found[0] if found else None

    # -- agent groups ---------------------------------------------------------------------

    def create_agent_group(
        self, name: str, folder: str, *, id: str | None = None, now: int | None = None
    ) -> rows.AgentGroup:
        """Create a group and its default container config. ``folder`` must already be a
        safe single path component (see ``normalize_name``)."""
        if folder != normalize_name(folder) or folder == "global":
            raise Refused(f"invalid agent group folder {folder!r}")
        group = rows.AgentGroup(
            id=id or new_id("ag"), name=name, folder=folder, created_at_ms=now or now_ms()
        )
        with self.db.write():
            self.db.execute(
                "INSERT INTO agent_groups (id, name, folder, created_at_ms) VALUES (?, ?, ?, ?)",
                (group.id, group.name, group.folder, group.created_at_ms),
            )
            self.db.execute(
                "INSERT INTO container_configs (agent_group_id, updated_at_ms) VALUES (?, ?)",
                (group.id, group.created_at_ms),
            )
        return group

    def unique_folder(self, name: str) -> str:
        """``normalize_name(name)``, with ``-2``, ``-3``… until no group uses it."""
        base = normalize_name(name)
        if base == "global":
            base = "global-agent"
        taken = {f for (f,) in self.db.all("SELECT folder FROM agent_groups")}
        candidate, n = base, 2
        while candidate in taken:
            candidate, n = f"{base}-{n}", n + 1
        return candidate

    def get_agent_group(self, agent_group_id: str) -> rows.AgentGroup | None:
        return self._row(rows.AgentGroup, "WHERE id = ?", (agent_group_id,))

    def find_agent_group(self, id_or_folder: str) -> rows.AgentGroup | None:
        return self._row(rows.AgentGroup, "WHERE id = ?1 OR folder = ?1", (id_or_folder,))

    def list_agent_groups(self) -> list[rows.AgentGroup]:
        return self._rows(rows.AgentGroup, "ORDER BY name, id")

    def rename_agent_group(self, agent_group_id: str, name: str) -> None:
        with self.db.write():
            self.db.execute("UPDATE agent_groups SET name = ? WHERE id = ?", (name, agent_group_id))
            if not self.db.changes():
                raise NotFound(f"agent group {agent_group_id} not found")

    def delete_agent_group(self, agent_group_id: str) -> None:
        """Delete a group and (by cascade) its wirings, sessions, destinations and config.
        Destinations of *other* groups that point at it are removed too."""
        with self.db.write():
            self.db.execute(
                "DELETE FROM agent_destinations WHERE target_type = 'agent' AND target_id = ?",
                (agent_group_id,),
            )
            self.db.execute("DELETE FROM agent_groups WHERE id = ?", (agent_group_id,))
            if not self.db.changes():
                raise NotFound(f"agent group {agent_group_id} not found")

    # -- messaging groups -----------------------------------------------------------------

    def create_messaging_group(
        self,
        channel_type: str,
        platform_id: str,
        *,
        name: str | None = None,
        is_group: bool = False,
        unknown_sender_policy: str = UnknownSenderPolicy.STRICT,
        now: int | None = None,
    ) -> rows.MessagingGroup:
        """Create the chat's row, or return the existing one (the pair is unique)."""
        UnknownSenderPolicy(unknown_sender_policy)
        with self.db.write():
            existing = self.find_messaging_group(channel_type, platform_id)
            if existing:
                return existing
            group = rows.MessagingGroup(
                id=new_id("mg"),
                channel_type=channel_type,
                platform_id=platform_id,
                name=name,
                is_group=int(is_group),
                unknown_sender_policy=unknown_sender_policy,
                denied_at_ms=None,
                created_at_ms=now or now_ms(),
            )
            self.db.execute(
                f"INSERT INTO messaging_groups ({columns(rows.MessagingGroup)})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                msgspec.structs.astuple(group),
            )
        return group

    def get_messaging_group(self, messaging_group_id: str) -> rows.MessagingGroup | None:
        return self._row(rows.MessagingGroup, "WHERE id = ?", (messaging_group_id,))

    def find_messaging_group(
        self, channel_type: str, platform_id: str
    ) -> rows.MessagingGroup | None:
        return self._row(
            rows.MessagingGroup,
            "WHERE channel_type = ? AND platform_id = ?",
            (channel_type, platform_id),
        )

    def list_messaging_groups(self) -> list[rows.MessagingGroup]:
        return self._rows(rows.MessagingGroup, "ORDER BY channel_type, platform_id")

    def update_messaging_group(
        self,
        messaging_group_id: str,
        *,
        name: str | None = None,
        unknown_sender_policy: str | None = None,
        is_group: bool | None = None,
    ) -> rows.MessagingGroup:
        if unknown_sender_policy is not None:
            UnknownSenderPolicy(unknown_sender_policy)
        with self.db.write():
            self.db.execute(
                "UPDATE messaging_groups SET name = coalesce(?, name),"
                " unknown_sender_policy = coalesce(?, unknown_sender_policy),"
                " is_group = coalesce(?, is_group) WHERE id = ?",
                (
                    name,
                    unknown_sender_policy,
                    None if is_group is None else int(is_group),
                    messaging_group_id,
                ),
            )
            group = self.get_messaging_group(messaging_group_id)
        if group is None:
            raise NotFound(f"messaging group {messaging_group_id} not found")
        return group

    def set_messaging_group_denied(self, messaging_group_id: str, denied_at_ms: int | None) -> None:
        with self.db.write():
            self.db.execute(
                "UPDATE messaging_groups SET denied_at_ms = ? WHERE id = ?",
                (denied_at_ms, messaging_group_id),
            )

    def delete_messaging_group(self, messaging_group_id: str) -> None:
        with self.db.write():
            self.db.execute(
                "DELETE FROM agent_destinations WHERE target_type = 'channel' AND target_id = ?",
                (messaging_group_id,),
            )
            self.db.execute("DELETE FROM messaging_groups WHERE id = ?", (messaging_group_id,))
            if not self.db.changes():
                raise NotFound(f"messaging group {messaging_group_id} not found")

    # -- wirings --------------------------------------------------------------------------

    def create_wiring(
        self,
        messaging_group_id: str,
        agent_group_id: str,
        *,
        engage_mode: str = EngageMode.MENTION,
        engage_pattern: str | None = None,
        sender_scope: str = SenderScope.ALL,
        ignored_message_policy: str = IgnoredMessagePolicy.DROP,
        session_mode: str = SessionMode.SHARED,
        priority: int = 0,
        now: int | None = None,
    ) -> rows.Wiring:
        """Wire a chat to an agent group. Also grants the group a ``channel`` destination to
        the chat (every creation path does this; upstream's generic CLI path did not).
        ``AlreadyExists`` when the chat is wired to the group already."""
        EngageMode(engage_mode)
        SenderScope(sender_scope)
        IgnoredMessagePolicy(ignored_message_policy)
        SessionMode(session_mode)
        stamp = now or now_ms()
        wiring = rows.Wiring(
            id=new_id("wir"),
            messaging_group_id=messaging_group_id,
            agent_group_id=agent_group_id,
            engage_mode=engage_mode,
            engage_pattern=engage_pattern,
            sender_scope=sender_scope,
            ignored_message_policy=ignored_message_policy,
            session_mode=session_mode,
            priority=priority,
            created_at_ms=stamp,
        )
        with self.db.write():
            chat = self.get_messaging_group(messaging_group_id)
            if chat is None:
                raise NotFound(f"messaging group {messaging_group_id} not found")
            if self.get_agent_group(agent_group_id) is None:
                raise NotFound(f"agent group {agent_group_id} not found")
            with refusing_duplicates(f"{messaging_group_id} is already wired to {agent_group_id}"):
                self.db.execute(
                    f"INSERT INTO wirings ({columns(rows.Wiring)}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    msgspec.structs.astuple(wiring),
                )
            if not self.has_destination(agent_group_id, DestinationType.CHANNEL, chat.id):
                wanted = chat.name or f"{chat.channel_type}-{chat.id.rsplit('-', 1)[-1]}"
                self.add_destination(
                    agent_group_id,
                    self.unique_local_name(agent_group_id, wanted),
                    DestinationType.CHANNEL,
                    chat.id,
                    now=stamp,
                )
        return wiring

    def get_wiring(self, wiring_id: str) -> rows.Wiring | None:
        return self._row(rows.Wiring, "WHERE id = ?", (wiring_id,))

    def list_wirings(self, messaging_group_id: str | None = None) -> list[rows.Wiring]:
        """Wirings in fan-out order: highest priority first, then oldest."""
        if messaging_group_id is None:
            return self._rows(
                rows.Wiring, "ORDER BY messaging_group_id, priority DESC, created_at_ms"
            )
        return self._rows(
            rows.Wiring,
            "WHERE messaging_group_id = ? ORDER BY priority DESC, created_at_ms",
            (messaging_group_id,),
        )

    def update_wiring(self, wiring_id: str, **changes: Any) -> rows.Wiring:
        allowed = {
            "engage_mode": EngageMode,
            "engage_pattern": str,
            "sender_scope": SenderScope,
            "ignored_message_policy": IgnoredMessagePolicy,
            "session_mode": SessionMode,
            "priority": int,
        }
        unknown = set(changes) - set(allowed)
        if unknown or not changes:
            raise Refused(f"cannot update wiring fields {sorted(unknown) or '(none given)'}")
        for key, value in changes.items():
            if value is not None:
                allowed[key](value)
        assignments = ", ".join(f"{key} = ?" for key in changes)
        with self.db.write():
            self.db.execute(
                f"UPDATE wirings SET {assignments} WHERE id = ?", (*changes.values(), wiring_id)
            )
            wiring = self.get_wiring(wiring_id)
        if wiring is None:
            raise NotFound(f"wiring {wiring_id} not found")
        return wiring

    def delete_wiring(self, wiring_id: str) -> None:
        with self.db.write():
            self.db.execute("DELETE FROM wirings WHERE id = ?", (wiring_id,))
            if not self.db.changes():
                raise NotFound(f"wiring {wiring_id} not found")

    # -- users, roles, members ------------------------------------------------------------

    def upsert_user(
        self, user_id: str, kind: str, display_name: str | None = None, *, now: int | None = None
    ) -> rows.User:
        """Insert the user, or refresh its display name when a new one is given."""
        with self.db.write():
            self.db.execute(
                "INSERT INTO users (id, kind, display_name, created_at_ms) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET"
                " display_name = coalesce(excluded.display_name, users.display_name)",
                (user_id, kind, display_name, now or now_ms()),
            )
            user = self.get_user(user_id)
        assert user is not None
        return user

    def get_user(self, user_id: str) -> rows.User | None:
        return self._row(rows.User, "WHERE id = ?", (user_id,))

    def list_users(self) -> list[rows.User]:
        return self._rows(rows.User, "ORDER BY id")

    def delete_user(self, user_id: str) -> None:
        with self.db.write():
            self.db.execute("DELETE FROM users WHERE id = ?", (user_id,))
            if not self.db.changes():
                raise NotFound(f"user {user_id} not found")

    def grant_role(
        self,
        user_id: str,
        role: str,
        agent_group_id: str | None = None,
        *,
        granted_by: str | None = None,
        now: int | None = None,
    ) -> bool:
        """Grant a role; False when the user already had it. Owner is always global."""
        Role(role)
        if role == Role.OWNER and agent_group_id is not None:
            raise Refused("the owner role is global; it cannot be scoped to an agent group")
        with self.db.write():
            if self.get_user(user_id) is None:
                raise NotFound(f"user {user_id} not found")
            self.db.execute(
                "INSERT OR IGNORE INTO user_roles (user_id, role, agent_group_id, granted_by,"
                " granted_at_ms) VALUES (?, ?, ?, ?, ?)",
                (user_id, role, agent_group_id, granted_by, now or now_ms()),
            )
            return self.db.changes() == 1

    def revoke_role(self, user_id: str, role: str, agent_group_id: str | None = None) -> None:
        with self.db.write():
            self.db.execute(
                "DELETE FROM user_roles WHERE user_id = ? AND role = ? AND agent_group_id IS ?",
                (user_id, role, agent_group_id),
            )
            if not self.db.changes():
                raise NotFound(f"{user_id} has no {role} role at that scope")

    def list_roles(self, user_id: str | None = None) -> list[rows.RoleGrant]:
        if user_id is None:
            return self._rows(rows.RoleGrant, "ORDER BY granted_at_ms, user_id")
        return self._rows(rows.RoleGrant, "WHERE user_id = ? ORDER BY granted_at_ms", (user_id,))

    def owners(self) -> list[str]:
        return [
            u
            for (u,) in self.db.all(
                "SELECT user_id FROM user_roles WHERE role = 'owner' ORDER BY granted_at_ms"
            )
        ]

    def is_owner(self, user_id: str) -> bool:
        return bool(
            self.db.scalar(
                "SELECT 1 FROM user_roles WHERE user_id = ? AND role = 'owner'", (user_id,)
            )
        )

    def has_admin_privilege(self, user_id: str | None, agent_group_id: str | None) -> bool:
        """Owner, global admin, or admin of this agent group."""
        if user_id is None:
            return False
        return bool(
            self.db.scalar(
                "SELECT 1 FROM user_roles WHERE user_id = ? AND (role = 'owner'"
                " OR (role = 'admin' AND (agent_group_id IS NULL OR agent_group_id = ?)))",
                (user_id, agent_group_id),
            )
        )

    def can_access_agent_group(self, user_id: str | None, agent_group_id: str) -> bool:
        """A known sender: privileged for the group, or an explicit member."""
        if user_id is None:
            return False
        if self.has_admin_privilege(user_id, agent_group_id):
            return True
        return bool(
            self.db.scalar(
                "SELECT 1 FROM agent_group_members WHERE user_id = ? AND agent_group_id = ?",
                (user_id, agent_group_id),
            )
        )

    def pick_approvers(self, agent_group_id: str | None) -> list[str]:
        """Who may approve for this group, in order: its scoped admins, global admins, owners
        (each by grant time, without repeats)."""
        ordered: list[str] = []
        queries: list[tuple[str, tuple[Any, ...]]] = []
        if agent_group_id is not None:
            queries.append(
                (
                    "SELECT user_id FROM user_roles WHERE role = 'admin' AND agent_group_id = ?"
                    " ORDER BY granted_at_ms",
                    (agent_group_id,),
                )
            )
        queries.append(
            (
                "SELECT user_id FROM user_roles WHERE role = 'admin' AND agent_group_id IS NULL"
                " ORDER BY granted_at_ms",
                (),
            )
        )
        queries.append(
            ("SELECT user_id FROM user_roles WHERE role = 'owner' ORDER BY granted_at_ms", ())
        )
        for sql, params in queries:
            for (user_id,) in self.db.all(sql, params):
                if user_id not in ordered:
                    ordered.append(user_id)
        return ordered

    def add_member(
        self,
        user_id: str,
        agent_group_id: str,
        *,
        added_by: str | None = None,
        now: int | None = None,
    ) -> bool:
        with self.db.write():
            self.db.execute(
                "INSERT OR IGNORE INTO agent_group_members"
                " (user_id, agent_group_id, added_by, added_at_ms) VALUES (?, ?, ?, ?)",
                (user_id, agent_group_id, added_by, now or now_ms()),
            )
            return self.db.changes() == 1

    def remove_member(self, user_id: str, agent_group_id: str) -> None:
        with self.db.write():
            self.db.execute(
                "DELETE FROM agent_group_members WHERE user_id = ? AND agent_group_id = ?",
                (user_id, agent_group_id),
            )
            if not self.db.changes():
                raise NotFound(f"{user_id} is not a member of {agent_group_id}")

    def list_members(self, agent_group_id: str | None = None) -> list[rows.Member]:
        if agent_group_id is None:
            return self._rows(rows.Member, "ORDER BY agent_group_id, added_at_ms")
        return self._rows(
            rows.Member, "WHERE agent_group_id = ? ORDER BY added_at_ms", (agent_group_id,)
        )

    def set_user_dm(
        self, user_id: str, channel_type: str, messaging_group_id: str, *, now: int | None = None
    ) -> None:
        with self.db.write():
            self.db.execute(
                "INSERT INTO user_dms (user_id, channel_type, messaging_group_id, resolved_at_ms)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (user_id, channel_type) DO UPDATE SET"
                " messaging_group_id = excluded.messaging_group_id,"
                " resolved_at_ms = excluded.resolved_at_ms",
                (user_id, channel_type, messaging_group_id, now or now_ms()),
            )

    def get_user_dm(self, user_id: str, channel_type: str) -> rows.UserDm | None:
        return self._row(
            rows.UserDm, "WHERE user_id = ? AND channel_type = ?", (user_id, channel_type)
        )

    def list_user_dms(self) -> list[rows.UserDm]:
        return self._rows(rows.UserDm, "ORDER BY user_id, channel_type")

    # -- sessions -------------------------------------------------------------------------

    def create_session(
        self,
        agent_group_id: str,
        messaging_group_id: str | None,
        thread_id: str | None = None,
        *,
        now: int | None = None,
    ) -> rows.Session:
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

    def close_session(self, session_id: str) -> None:
        with self.db.write():
            self.db.execute("UPDATE sessions SET status = 'closed' WHERE id = ?", (session_id,))

    # -- destinations ---------------------------------------------------------------------

    def add_destination(
        self,
        agent_group_id: str,
        local_name: str,
        target_type: str,
        target_id: str,
        *,
        now: int | None = None,
    ) -> rows.AgentDestination:
        DestinationType(target_type)
        if local_name != normalize_name(local_name):
            raise Refused(f"destination name {local_name!r} is not normalized")
        dest = rows.AgentDestination(
            agent_group_id=agent_group_id,
            local_name=local_name,
            target_type=target_type,
            target_id=target_id,
            created_at_ms=now or now_ms(),
        )
        with self.db.write():
            self.db.execute(
                f"INSERT INTO agent_destinations ({columns(rows.AgentDestination)})"
                " VALUES (?, ?, ?, ?, ?)",
                msgspec.structs.astuple(dest),
            )
        return dest

    def remove_destination(self, agent_group_id: str, local_name: str) -> None:
        with self.db.write():
            self.db.execute(
                "DELETE FROM agent_destinations WHERE agent_group_id = ? AND local_name = ?",
                (agent_group_id, local_name),
            )
            if not self.db.changes():
                raise NotFound(f"{agent_group_id} has no destination {local_name!r}")

    def list_destinations(self, agent_group_id: str | None = None) -> list[rows.AgentDestination]:
        if agent_group_id is None:
            return self._rows(rows.AgentDestination, "ORDER BY agent_group_id, local_name")
        return self._rows(
            rows.AgentDestination, "WHERE agent_group_id = ? ORDER BY local_name", (agent_group_id,)
        )

    def has_destination(self, agent_group_id: str, target_type: str, target_id: str) -> bool:
        return bool(
            self.db.scalar(
                "SELECT 1 FROM agent_destinations"
                " WHERE agent_group_id = ? AND target_type = ? AND target_id = ?",
                (agent_group_id, target_type, target_id),
            )
        )

    def find_destination(
        self, agent_group_id: str, local_name: str
    ) -> rows.AgentDestination | None:
        return self._row(
            rows.AgentDestination,
            "WHERE agent_group_id = ? AND local_name = ?",
            (agent_group_id, local_name),
        )

    def unique_local_name(self, agent_group_id: str, wanted: str) -> str:
        base = normalize_name(wanted)
        taken = {
            n
            for (n,) in self.db.all(
                "SELECT local_name FROM agent_destinations WHERE agent_group_id = ?",
                (agent_group_id,),
            )
        }
        candidate, n = base, 2
        while candidate in taken:
            candidate, n = f"{base}-{n}", n + 1
        return candidate

    def resolve_destinations(self, agent_group_id: str) -> list[rows.DestinationEntry]:
        """The group's destinations as a session's ``destinations`` projection; rows whose
        target no longer exists are left out."""
        entries = [
            rows.DestinationEntry(name, display or name, "channel", channel_type, platform_id, None)
            for name, display, channel_type, platform_id in self.db.all(
                "SELECT d.local_name, m.name, m.channel_type, m.platform_id"
                " FROM agent_destinations d JOIN messaging_groups m ON m.id = d.target_id"
                " WHERE d.agent_group_id = ? AND d.target_type = 'channel'",
                (agent_group_id,),
            )
        ]
        entries += [
            rows.DestinationEntry(name, display or name, "agent", None, None, target)
            for name, display, target in self.db.all(
                "SELECT d.local_name, a.name, a.id"
                " FROM agent_destinations d JOIN agent_groups a ON a.id = d.target_id"
                " WHERE d.agent_group_id = ? AND d.target_type = 'agent'",
                (agent_group_id,),
            )
        ]
        return sorted(entries, key=lambda e: e.name)

    # -- pending questions ----------------------------------------------------------------

    def create_pending_question(
        self, question: rows.PendingQuestion, *, agent_question_id: str | None = None
    ) -> bool:
        """Insert unless it exists (a delivery retry re-inserts); True when inserted.
        ``agent_question_id``: the id the agent asked with, when the row is keyed on the host
        (the answer goes back under the agent's id; migration 0031)."""
        with self.db.write():
            self.db.execute(
                f"INSERT OR IGNORE INTO pending_questions ({columns(rows.PendingQuestion)})"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                msgspec.structs.astuple(question),
            )
            if self.db.changes() != 1:
                return False
            if agent_question_id is not None:
                self.db.execute(
                    "UPDATE pending_questions SET agent_question_id = ? WHERE question_id = ?",
                    (agent_question_id, question.question_id),
                )
            return True

    def agent_question_id(self, question_id: str) -> str | None:
        """The id the agent asked ``question_id`` with (None: keyed by the agent's own id)."""
        value = self.db.scalar(
            "SELECT agent_question_id FROM pending_questions WHERE question_id = ?",
            (question_id,),
        )
        return None if value is None else str(value)

    def get_pending_question(self, question_id: str) -> rows.PendingQuestion | None:
        return self._row(rows.PendingQuestion, "WHERE question_id = ?", (question_id,))

    def set_question_platform_message(self, question_id: str, platform_message_id: str) -> None:
        with self.db.write():
            self.db.execute(
                "UPDATE pending_questions SET platform_message_id = ? WHERE question_id = ?",
                (platform_message_id, question_id),
            )

    def delete_pending_question(self, question_id: str) -> bool:
        with self.db.write():
            self.db.execute("DELETE FROM pending_questions WHERE question_id = ?", (question_id,))
            return self.db.changes() == 1

    def list_pending_questions(self) -> list[rows.PendingQuestion]:
        return self._rows(rows.PendingQuestion, "ORDER BY created_at_ms")

    # -- host card ids (migration 0031) ---------------------------------------------------

    def is_card_id(self, value: str) -> bool:
        """True when ``value`` names a pending host card: an approval, a sender approval or
        a chat registration (by its card id or its chat's id). Delivery refuses an agent's
        question that uses one."""
        return bool(
            self.db.scalar(
                "SELECT EXISTS (SELECT 1 FROM pending_approvals WHERE approval_id = ?1)"
                " OR EXISTS (SELECT 1 FROM pending_sender_approvals WHERE id = ?1)"
                " OR EXISTS (SELECT 1 FROM pending_channel_approvals"
                " WHERE card_id = ?1 OR messaging_group_id = ?1)",
                (value,),
            )
        )

    def find_pending_approval_for(
        self, session_id: str, request_id: str
    ) -> rows.PendingApproval | None:
        """The approval a session's request (an outbound row) created, if any: a re-run of
        the request after a crash finds it (its id is random, not derived)."""
        return self._row(
            rows.PendingApproval,
            "WHERE session_id = ? AND request_id = ? ORDER BY created_at_ms",
            (session_id, request_id),
        )

    def channel_approval_card(self, messaging_group_id: str) -> str | None:
        """The card id of a chat's pending registration, made (random) on first use; None
        when no registration is pending for the chat."""
        known = self.db.scalar(
            "SELECT card_id FROM pending_channel_approvals WHERE messaging_group_id = ?",
            (messaging_group_id,),
        )
        if known is not None:
            return str(known)  # the common case needs no write lock
        with self.db.write():
            found = self.db.one(
                "SELECT card_id FROM pending_channel_approvals WHERE messaging_group_id = ?",
                (messaging_group_id,),
            )
            if found is None:
                return None
            if found[0] is not None:
                return str(found[0])
            card_id = unguessable_id("regc")
            self.db.execute(
                "UPDATE pending_channel_approvals SET card_id = ? WHERE messaging_group_id = ?",
                (card_id, messaging_group_id),
            )
            return card_id

    def find_channel_approval_by_card(self, card_id: str) -> rows.PendingChannelApproval | None:
        return self._row(rows.PendingChannelApproval, "WHERE card_id = ?", (card_id,))

    def list_channel_approval_cards(self) -> list[str]:
        """The card ids of every pending registration that has one."""
        return [
            str(card_id)
            for (card_id,) in self.db.all(
                "SELECT card_id FROM pending_channel_approvals WHERE card_id IS NOT NULL"
            )
        ]

    def router_card_messages(self, question_id: str) -> list[tuple[str, str, str | None]]:
        """(channel type, platform id, platform message id) of every card the router sent
        or is sending with this question id (``router_outbox``, not ``failed``): where a
        click on it may come from. A card still in flight has no message id yet, but the
        terminal can show it and take its click before the send returns."""
        return [
            (str(channel), str(platform), None if message is None else str(message))
            for channel, platform, message in self.db.all(
                "SELECT channel_type, platform_id, platform_message_id FROM router_outbox"
                " WHERE kind = 'question' AND json_extract(body, '$.question_id') = ?"
                " AND status != 'failed'",
                (question_id,),
            )
        ]

    # -- owner notices: nanoclaw_common.store.owner_notices (migrations 0032, 0080) -------

    def last_notice_ms(self, key: str) -> int | None:
        """When the last notice under rate-limit ``key`` went out (None: never)."""
        value = self.db.scalar("SELECT last_sent_ms FROM notices WHERE key = ?", (key,))
        return None if value is None else int(value)

    # -- pending approvals ----------------------------------------------------------------

    def create_pending_approval(self, approval: rows.PendingApproval) -> bool:
        with self.db.write():
            self.db.execute(
                f"INSERT OR IGNORE INTO pending_approvals ({columns(rows.PendingApproval)})"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                msgspec.structs.astuple(approval),
            )
            return self.db.changes() == 1

    def get_pending_approval(self, approval_id: str) -> rows.PendingApproval | None:
        return self._row(rows.PendingApproval, "WHERE approval_id = ?", (approval_id,))

    def list_pending_approvals(self, status: str | None = None) -> list[rows.PendingApproval]:
        if status is None:
            return self._rows(rows.PendingApproval, "ORDER BY created_at_ms")
        return self._rows(
            rows.PendingApproval, "WHERE status = ? ORDER BY created_at_ms", (status,)
        )

    def set_approval_status(
        self, approval_id: str, status: str, *, expect: str = "pending"
    ) -> bool:
        """Move an approval from ``expect`` to ``status``. False when it was not in ``expect``
        any more: two clicks (or a click and the timeout) cannot both win."""
        with self.db.write():
            self.db.execute(
                "UPDATE pending_approvals SET status = ? WHERE approval_id = ? AND status = ?",
                (status, approval_id, expect),
            )
            return self.db.changes() == 1

    def decide_approval(
        self, approval_id: str, user_id: str, value: str, *, now: int | None = None
    ) -> ApprovalClick:
        """A click on an approval card. It counts only when the clicker has admin privilege
        over the approval's agent group (the designated approver, any other approver, or the
        owner); ``value == 'approve'`` approves, anything else rejects. The check and the
        status change share one transaction, so two clicks (or a click and the expiry) cannot
        both win. Returns what happened: ``approved``, ``rejected``, ``unauthorized`` (nothing
        changed), ``expired`` (past its deadline; delivery records the expiry) or ``gone``
        (unknown or already decided)."""
        stamp = now or now_ms()
        with self.db.write():
            approval = self.get_pending_approval(approval_id)
            if approval is None or approval.status != "pending":
                return "gone"
            if approval.expires_at_ms is not None and stamp >= approval.expires_at_ms:
                return "expired"
            if not self.has_admin_privilege(user_id, approval.agent_group_id):
                return "unauthorized"
            status: ApprovalClick = "approved" if value == "approve" else "rejected"
            self.db.execute(
                "UPDATE pending_approvals SET status = ?, decided_by = ?, decided_at_ms = ?"
                " WHERE approval_id = ? AND status = 'pending'",
                (status, user_id, stamp, approval_id),
            )
            return status

    def approval_decided_by(self, approval_id: str) -> str | None:
        value = self.db.scalar(
            "SELECT decided_by FROM pending_approvals WHERE approval_id = ?", (approval_id,)
        )
        return None if value is None else str(value)

    def set_approval_platform_message(self, approval_id: str, platform_message_id: str) -> None:
        with self.db.write():
            self.db.execute(
                "UPDATE pending_approvals SET platform_message_id = ? WHERE approval_id = ?",
                (platform_message_id, approval_id),
            )

    def delete_pending_approval(self, approval_id: str) -> bool:
        with self.db.write():
            self.db.execute("DELETE FROM pending_approvals WHERE approval_id = ?", (approval_id,))
            return self.db.changes() == 1

    def create_sender_approval(
        self, approval: rows.PendingSenderApproval, held: list[HeldFile] | None = None
    ) -> bool:
        """False when one is already pending for this chat and sender (the dedup). ``held``
        (the message's attachments) is stored with it, in the same transaction."""
        with self.db.write():
            self.db.execute(
                f"INSERT OR IGNORE INTO pending_sender_approvals"
                f" ({columns(rows.PendingSenderApproval)}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                msgspec.structs.astuple(approval),
            )
            if self.db.changes() != 1:
                return False
            self._hold("sender_approval_id", approval.id, held or [])
            return True

    def get_sender_approval(self, approval_id: str) -> rows.PendingSenderApproval | None:
        return self._row(rows.PendingSenderApproval, "WHERE id = ?", (approval_id,))

    def find_sender_approval(
        self, messaging_group_id: str, sender_identity: str
    ) -> rows.PendingSenderApproval | None:
        return self._row(
            rows.PendingSenderApproval,
            "WHERE messaging_group_id = ? AND sender_identity = ?",
            (messaging_group_id, sender_identity),
        )

    def list_sender_approvals(self) -> list[rows.PendingSenderApproval]:
        return self._rows(rows.PendingSenderApproval, "ORDER BY created_at_ms")

    def delete_sender_approval(self, approval_id: str) -> bool:
        with self.db.write():
            self.db.execute("DELETE FROM pending_sender_approvals WHERE id = ?", (approval_id,))
            return self.db.changes() == 1

    def create_channel_approval(
        self, approval: rows.PendingChannelApproval, held: list[HeldFile] | None = None
    ) -> bool:
        """False when one is pending for this chat already. ``held`` as for senders."""
        with self.db.write():
            self.db.execute(
                f"INSERT OR IGNORE INTO pending_channel_approvals"
                f" ({columns(rows.PendingChannelApproval)}) VALUES (?,?,?,?,?,?,?,?)",
                msgspec.structs.astuple(approval),
            )
            if self.db.changes() != 1:
                return False
            self._hold("channel_approval_id", approval.messaging_group_id, held or [])
            return True

    def _hold(
        self,
        column: Literal["sender_approval_id", "channel_approval_id"],
        key: str,
        held: list[HeldFile],
    ) -> None:
        for position, item in enumerate(held):
            self.db.execute(
                f"INSERT INTO held_attachments ({column}, position, name, kind, mime_type, data)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (key, position, item.name, item.kind, item.mime_type, item.data),
            )

    def held_files(
        self, *, sender_approval_id: str | None = None, channel_approval_id: str | None = None
    ) -> list[HeldFile]:
        """The attachments kept with a pending approval, in message order (deleted with the
        approval: ON DELETE CASCADE)."""
        column, key = (
            ("sender_approval_id", sender_approval_id)
            if sender_approval_id is not None
            else ("channel_approval_id", channel_approval_id)
        )
        return [
            HeldFile(str(name), str(kind), None if mime is None else str(mime), bytes(data))
            for name, kind, mime, data in self.db.all(
                f"SELECT name, kind, mime_type, data FROM held_attachments WHERE {column} = ?"
                " ORDER BY position",
                (key,),
            )
        ]

    def get_channel_approval(self, messaging_group_id: str) -> rows.PendingChannelApproval | None:
        return self._row(
            rows.PendingChannelApproval, "WHERE messaging_group_id = ?", (messaging_group_id,)
        )

    def list_channel_approvals(self) -> list[rows.PendingChannelApproval]:
        return self._rows(rows.PendingChannelApproval, "ORDER BY created_at_ms")

    def update_channel_approval(
        self,
        messaging_group_id: str,
        *,
        awaiting_name: bool | None = None,
        title: str | None = None,
        options_json: str | None = None,
    ) -> None:
        with self.db.write():
            self.db.execute(
                "UPDATE pending_channel_approvals SET awaiting_name = coalesce(?, awaiting_name),"
                " title = coalesce(?, title), options_json = coalesce(?, options_json)"
                " WHERE messaging_group_id = ?",
                (
                    None if awaiting_name is None else int(awaiting_name),
                    title,
                    options_json,
                    messaging_group_id,
                ),
            )

    def delete_channel_approval(self, messaging_group_id: str) -> bool:
        with self.db.write():
            self.db.execute(
                "DELETE FROM pending_channel_approvals WHERE messaging_group_id = ?",
                (messaging_group_id,),
            )
            return self.db.changes() == 1

    # -- dropped messages -----------------------------------------------------------------

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
        return self._rows(
            rows.DroppedMessage, "ORDER BY last_seen_ms DESC, reason LIMIT ?", (max(1, limit),)
        )

    # -- container configs ----------------------------------------------------------------

    def get_container_config(self, agent_group_id: str) -> rows.ContainerConfig | None:
        return self._row(rows.ContainerConfig, "WHERE agent_group_id = ?", (agent_group_id,))

    def update_container_config(
        self, agent_group_id: str, *, now: int | None = None, **changes: Any
    ) -> rows.ContainerConfig:
        """Set config columns; JSON columns take a str of JSON and are replaced wholesale."""
        allowed = set(rows.ContainerConfig.__struct_fields__) - {"agent_group_id", "updated_at_ms"}
        unknown = set(changes) - allowed
        if unknown or not changes:
            raise Refused(f"cannot update container config fields {sorted(unknown) or '(none)'}")
        assignments = ", ".join(f"{key} = ?" for key in changes)
        with self.db.write():
            self.db.execute(
                f"UPDATE container_configs SET {assignments}, updated_at_ms = ?"
                " WHERE agent_group_id = ?",
                (*changes.values(), now or now_ms(), agent_group_id),
            )
            config = self.get_container_config(agent_group_id)
        if config is None:
            raise NotFound(f"no container config for agent group {agent_group_id}")
        return config

    # -- token usage ----------------------------------------------------------------------

    def add_token_usage(
        self, agent_group_id: str, day: str, input_tokens: int, output_tokens: int
    ) -> rows.TokenUsage:
        with self.db.write():
            self.db.execute(
                "INSERT INTO token_usage (agent_group_id, day, input_tokens, output_tokens,"
                " requests) VALUES (?, ?, ?, ?, 1) ON CONFLICT (agent_group_id, day) DO UPDATE SET"
                " input_tokens = input_tokens + excluded.input_tokens,"
                " output_tokens = output_tokens + excluded.output_tokens,"
                " requests = requests + 1",
                (agent_group_id, day, input_tokens, output_tokens),
            )
            usage = self.get_token_usage(agent_group_id, day)
        assert usage is not None
        return usage

    def get_token_usage(self, agent_group_id: str, day: str) -> rows.TokenUsage | None:
        return self._row(
            rows.TokenUsage, "WHERE agent_group_id = ? AND day = ?", (agent_group_id, day)
        )

    # -- notices --------------------------------------------------------------------------

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

    # -- restart requests -----------------------------------------------------------------

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

    # -- overview -------------------------------------------------------------------------

    def counts(self) -> Counts:
        with self.db.read():
            values = [
                int(self.db.scalar(sql))
                for sql in (
                    "SELECT count(*) FROM agent_groups",
                    "SELECT count(*) FROM messaging_groups",
                    "SELECT count(*) FROM wirings",
                    "SELECT count(*) FROM users",
                    "SELECT count(*) FROM sessions",
                    "SELECT count(*) FROM sessions WHERE status = 'active'",
                    "SELECT count(*) FROM sessions WHERE container_status <> 'stopped'",
                    "SELECT ifnull(sum(message_count), 0) FROM dropped_messages",
                    "SELECT count(*) FROM pending_approvals WHERE status = 'pending'",
                )
            ]
        return Counts(*values)


_TABLES: dict[type[Any], str] = {
    rows.AgentGroup: "agent_groups",
    rows.MessagingGroup: "messaging_groups",
    rows.Wiring: "wirings",
    rows.User: "users",
    rows.RoleGrant: "user_roles",
    rows.Member: "agent_group_members",
    rows.UserDm: "user_dms",
    rows.Session: "sessions",
    rows.AgentDestination: "agent_destinations",
    rows.PendingQuestion: "pending_questions",
    rows.PendingApproval: "pending_approvals",
    rows.PendingSenderApproval: "pending_sender_approvals",
    rows.PendingChannelApproval: "pending_channel_approvals",
    rows.DroppedMessage: "dropped_messages",
    rows.ContainerConfig: "container_configs",
    rows.TokenUsage: "token_usage",
}
