"""Users, their roles, group membership and DM chats: who may do what, and who approves."""

from __future__ import annotations

from typing import Any

from nanoclaw_common.clock import now_ms
from nanoclaw_common.errors import NotFound, Refused
from nanoclaw_common.states import Role, UnknownSenderPolicy
from nanoclaw_common.store import rows
from nanoclaw_common.store.central.base import CentralPart
from nanoclaw_common.store.central.entities import Entities


class People(CentralPart):
    """Verb-named methods over ``users``, ``user_roles``, ``agent_group_members`` and
    ``user_dms``."""

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
        """The user with this id (None: unknown)."""
        return self._row(rows.User, "WHERE id = ?", (user_id,))

    def list_users(self) -> list[rows.User]:
        """Every user, by id."""
        return self._rows(rows.User, "ORDER BY id")

    def delete_user(self, user_id: str) -> None:
        """Delete a user with their roles, memberships and DMs (by cascade); ``NotFound`` when
        there is none."""
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
        """Take a role away at exactly this scope; ``NotFound`` when the user did not hold it
        there."""
        with self.db.write():
            self.db.execute(
                "DELETE FROM user_roles WHERE user_id = ? AND role = ? AND agent_group_id IS ?",
                (user_id, role, agent_group_id),
            )
            if not self.db.changes():
                raise NotFound(f"{user_id} has no {role} role at that scope")

    def list_roles(self, user_id: str | None = None) -> list[rows.RoleGrant]:
        """Every role grant, or one user's, oldest first."""
        if user_id is None:
            return self._rows(rows.RoleGrant, "ORDER BY granted_at_ms, user_id")
        return self._rows(rows.RoleGrant, "WHERE user_id = ? ORDER BY granted_at_ms", (user_id,))

    def owners(self) -> list[str]:
        """The owners' user ids, oldest grant first."""
        return [
            u
            for (u,) in self.db.all(
                "SELECT user_id FROM user_roles WHERE role = 'owner' ORDER BY granted_at_ms"
            )
        ]

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
        """Make the user a member of the group; False when they already were."""
        with self.db.write():
            self.db.execute(
                "INSERT OR IGNORE INTO agent_group_members"
                " (user_id, agent_group_id, added_by, added_at_ms) VALUES (?, ?, ?, ?)",
                (user_id, agent_group_id, added_by, now or now_ms()),
            )
            return self.db.changes() == 1

    def remove_member(self, user_id: str, agent_group_id: str) -> None:
        """End a membership; ``NotFound`` when the user was not a member."""
        with self.db.write():
            self.db.execute(
                "DELETE FROM agent_group_members WHERE user_id = ? AND agent_group_id = ?",
                (user_id, agent_group_id),
            )
            if not self.db.changes():
                raise NotFound(f"{user_id} is not a member of {agent_group_id}")

    def list_members(self, agent_group_id: str | None = None) -> list[rows.Member]:
        """Every membership, or one group's, oldest first."""
        if agent_group_id is None:
            return self._rows(rows.Member, "ORDER BY agent_group_id, added_at_ms")
        return self._rows(
            rows.Member, "WHERE agent_group_id = ? ORDER BY added_at_ms", (agent_group_id,)
        )

    def set_user_dm(
        self, user_id: str, channel_type: str, messaging_group_id: str, *, now: int | None = None
    ) -> None:
        """Record the chat that is the user's DM on this channel (replacing an older one)."""
        with self.db.write():
            self.db.execute(
                "INSERT INTO user_dms (user_id, channel_type, messaging_group_id, resolved_at_ms)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (user_id, channel_type) DO UPDATE SET"
                " messaging_group_id = excluded.messaging_group_id,"
                " resolved_at_ms = excluded.resolved_at_ms",
                (user_id, channel_type, messaging_group_id, now or now_ms()),
            )

    def get_user_dm(self, user_id: str, channel_type: str) -> rows.UserDm | None:
        """The user's DM chat on this channel (None: not known yet)."""
        return self._row(
            rows.UserDm, "WHERE user_id = ? AND channel_type = ?", (user_id, channel_type)
        )

    def dm_chat(self, user_id: str, channel_type: str) -> rows.MessagingGroup | None:
        """The user's DM chat on this channel as ``user_dms`` remembers it (None: not known
        yet, or its chat is gone)."""
        cached = self.get_user_dm(user_id, channel_type)
        if cached is None:
            return None
        return Entities(self.db).get_messaging_group(cached.messaging_group_id)

    def remember_dm(
        self, user_id: str, channel_type: str, platform_id: str, *, now: int
    ) -> rows.MessagingGroup:
        """A DM an adapter just opened: its chat (one to one, strict with unknown senders)
        and the user's ``user_dms`` row, in one transaction."""
        with self.db.write():
            user = self.get_user(user_id)
            chat = Entities(self.db).create_messaging_group(
                channel_type,
                platform_id,
                name=user.display_name if user else None,
                is_group=False,
                unknown_sender_policy=UnknownSenderPolicy.STRICT,
                now=now,
            )
            self.set_user_dm(user_id, channel_type, chat.id, now=now)
        return chat
