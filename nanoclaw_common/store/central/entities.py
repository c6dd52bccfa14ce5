"""Agent groups, chats (``messaging_groups``), the wirings between them, and each group's
container config: the entity model of ``central.db``."""

from __future__ import annotations

from typing import Any

import msgspec

from nanoclaw_common.clock import now_ms
from nanoclaw_common.errors import NotFound, Refused
from nanoclaw_common.ids import new_id
from nanoclaw_common.states import (
    DestinationType,
    EngageMode,
    IgnoredMessagePolicy,
    SenderScope,
    SessionMode,
    UnknownSenderPolicy,
)
from nanoclaw_common.store import rows
from nanoclaw_common.store.central.base import CentralPart, normalize_name
from nanoclaw_common.store.central.destinations import Destinations
from nanoclaw_common.store.sqlite import columns, refusing_duplicates


class Entities(CentralPart):
    """Verb-named methods over ``agent_groups``, ``messaging_groups``, ``wirings`` and
    ``container_configs``."""

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
        """The group with this id (None: unknown)."""
        return self._row(rows.AgentGroup, "WHERE id = ?", (agent_group_id,))

    def find_agent_group(self, id_or_folder: str) -> rows.AgentGroup | None:
        """The group with this id or folder (None: neither)."""
        return self._row(rows.AgentGroup, "WHERE id = ?1 OR folder = ?1", (id_or_folder,))

    def list_agent_groups(self) -> list[rows.AgentGroup]:
        """Every agent group, by name."""
        return self._rows(rows.AgentGroup, "ORDER BY name, id")

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
        """The chat with this id (None: unknown)."""
        return self._row(rows.MessagingGroup, "WHERE id = ?", (messaging_group_id,))

    def find_messaging_group(
        self, channel_type: str, platform_id: str
    ) -> rows.MessagingGroup | None:
        """The chat with this channel and platform id (None: not registered)."""
        return self._row(
            rows.MessagingGroup,
            "WHERE channel_type = ? AND platform_id = ?",
            (channel_type, platform_id),
        )

    def list_messaging_groups(self) -> list[rows.MessagingGroup]:
        """Every chat, by channel and platform id."""
        return self._rows(rows.MessagingGroup, "ORDER BY channel_type, platform_id")

    def update_messaging_group(
        self,
        messaging_group_id: str,
        *,
        name: str | None = None,
        unknown_sender_policy: str | None = None,
        is_group: bool | None = None,
    ) -> rows.MessagingGroup:
        """Change the given fields of a chat (None: unchanged); the chat after it, ``NotFound``
        when there is none."""
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
        """Mark a chat denied at ``denied_at_ms`` (None: no longer denied)."""
        with self.db.write():
            self.db.execute(
                "UPDATE messaging_groups SET denied_at_ms = ? WHERE id = ?",
                (denied_at_ms, messaging_group_id),
            )

    def delete_messaging_group(self, messaging_group_id: str) -> None:
        """Delete a chat, its wirings (by cascade) and every group's destination to it;
        ``NotFound`` when there is none."""
        with self.db.write():
            self.db.execute(
                "DELETE FROM agent_destinations WHERE target_type = 'channel' AND target_id = ?",
                (messaging_group_id,),
            )
            self.db.execute("DELETE FROM messaging_groups WHERE id = ?", (messaging_group_id,))
            if not self.db.changes():
                raise NotFound(f"messaging group {messaging_group_id} not found")

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
            destinations = Destinations(self.db)
            if not destinations.has_destination(agent_group_id, DestinationType.CHANNEL, chat.id):
                wanted = chat.name or f"{chat.channel_type}-{chat.id.rsplit('-', 1)[-1]}"
                destinations.add_destination(
                    agent_group_id,
                    destinations.unique_local_name(agent_group_id, wanted),
                    DestinationType.CHANNEL,
                    chat.id,
                    now=stamp,
                )
        return wiring

    def get_wiring(self, wiring_id: str) -> rows.Wiring | None:
        """The wiring with this id (None: unknown)."""
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
        """Change the given fields of a wiring (validated; an unknown field is ``Refused``); the
        wiring after it, ``NotFound`` when there is none."""
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
        """Delete a wiring (the group keeps its destination to the chat); ``NotFound`` when there
        is none."""
        with self.db.write():
            self.db.execute("DELETE FROM wirings WHERE id = ?", (wiring_id,))
            if not self.db.changes():
                raise NotFound(f"wiring {wiring_id} not found")

    def get_container_config(self, agent_group_id: str) -> rows.ContainerConfig | None:
        """The group's container config (None: unknown group)."""
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
