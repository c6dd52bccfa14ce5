"""What routing reads from ``central.db``, cached between changes.

Every event needs the chat, its wirings, whether each group exists, what the sender may do
and which session is open: about ten small queries, which made the central DB the router's
bottleneck. These facts change rarely (an admin command, an approval), so they are cached
and the whole cache is dropped when ``PRAGMA data_version`` says another connection
committed to ``central.db`` — one cheap pragma per event. The router's own writes do not
move its connection's ``data_version``, so every code path that writes facts the cache holds
calls ``clear()`` (approvals, new sessions are stored into the cache directly).
"""

from __future__ import annotations

from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.rows import MessagingGroup, PendingChannelApproval, Session, Wiring

_MISSING = object()


class CentralFacts:
    def __init__(self, central: CentralStore) -> None:
        self.central = central
        self._version = -1
        self.hits = 0
        self.clear()

    def clear(self) -> None:
        self._chats: dict[tuple[str, str], MessagingGroup | None] = {}
        self._wirings: dict[str, list[Wiring]] = {}
        self._groups: dict[str, bool] = {}
        self._access: dict[tuple[str, str], tuple[bool, bool]] = {}
        self._sessions: dict[tuple[str, str | None, str | None, bool], Session | None] = {}
        self._awaiting: list[PendingChannelApproval] | None = None
        self.users: dict[str, str | None] = {}  # user id -> display name last upserted

    def refresh(self) -> None:
        """Drop everything if another process changed central.db since the last look."""
        version = self.central.db.data_version()
        if version != self._version:
            self.clear()
            self._version = version

    def chat(self, channel_type: str, platform_id: str) -> MessagingGroup | None:
        key = (channel_type, platform_id)
        if key not in self._chats:
            self._chats[key] = self.central.find_messaging_group(channel_type, platform_id)
        else:
            self.hits += 1
        return self._chats[key]

    def remember_chat(self, chat: MessagingGroup) -> None:
        self._chats[(chat.channel_type, chat.platform_id)] = chat

    def wirings(self, chat_id: str) -> list[Wiring]:
        if chat_id not in self._wirings:
            self._wirings[chat_id] = self.central.list_wirings(chat_id)
        return self._wirings[chat_id]

    def group_exists(self, agent_group_id: str) -> bool:
        if agent_group_id not in self._groups:
            self._groups[agent_group_id] = self.central.get_agent_group(agent_group_id) is not None
        return self._groups[agent_group_id]

    def access(self, user_id: str, agent_group_id: str) -> tuple[bool, bool]:
        """(known: member or privileged, admin: owner or admin of the group)."""
        key = (user_id, agent_group_id)
        if key not in self._access:
            self._access[key] = (
                self.central.can_access_agent_group(user_id, agent_group_id),
                self.central.has_admin_privilege(user_id, agent_group_id),
            )
        return self._access[key]

    def session(
        self, agent_group_id: str, chat_id: str | None, thread_id: str | None, *, newest: bool
    ) -> Session | None:
        """The active session for exactly (group, chat, thread), or with ``newest`` the
        group's newest active session (agent-shared)."""
        key = (agent_group_id, None if newest else chat_id, None if newest else thread_id, newest)
        if key not in self._sessions:
            if newest:
                found = self.central.newest_active_session(agent_group_id)
            else:
                found = self.central.find_active_session(agent_group_id, chat_id, thread_id)
            self._sessions[key] = found
        return self._sessions[key]

    def remember_session(self, session: Session, thread_id: str | None, *, newest: bool) -> None:
        key = (
            session.agent_group_id,
            None if newest else session.messaging_group_id,
            None if newest else thread_id,
            newest,
        )
        self._sessions[key] = session

    def awaiting_names(self) -> list[PendingChannelApproval]:
        """Registrations waiting for an approver to name a new agent."""
        if self._awaiting is None:
            self._awaiting = [a for a in self.central.list_channel_approvals() if a.awaiting_name]
        return self._awaiting
