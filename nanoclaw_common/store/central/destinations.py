"""Each agent group's named destinations (``agent_destinations``): the chats and groups its
agent may send to, and the ACL delivery checks."""

from __future__ import annotations

import msgspec

from nanoclaw_common.clock import now_ms
from nanoclaw_common.errors import Refused
from nanoclaw_common.states import (
    DestinationType,
)
from nanoclaw_common.store import rows
from nanoclaw_common.store.central.base import CentralPart, normalize_name
from nanoclaw_common.store.sqlite import columns


class Destinations(CentralPart):
    """Verb-named methods over ``agent_destinations``."""

    def add_destination(
        self,
        agent_group_id: str,
        local_name: str,
        target_type: str,
        target_id: str,
        *,
        now: int | None = None,
    ) -> rows.AgentDestination:
        """Grant the group a destination called ``local_name`` to a chat or agent group;
        ``Refused`` unless the name is normalized, ``ConstraintError`` when the group uses it."""
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

    def list_destinations(self, agent_group_id: str | None = None) -> list[rows.AgentDestination]:
        """Every destination, or one group's, by group and name."""
        if agent_group_id is None:
            return self._rows(rows.AgentDestination, "ORDER BY agent_group_id, local_name")
        return self._rows(
            rows.AgentDestination, "WHERE agent_group_id = ? ORDER BY local_name", (agent_group_id,)
        )

    def has_destination(self, agent_group_id: str, target_type: str, target_id: str) -> bool:
        """True when the group has any destination to this target."""
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
        """The group's destination called ``local_name`` (None: none by that name)."""
        return self._row(
            rows.AgentDestination,
            "WHERE agent_group_id = ? AND local_name = ?",
            (agent_group_id, local_name),
        )

    def unique_local_name(self, agent_group_id: str, wanted: str) -> str:
        """``normalize_name(wanted)``, with ``-2``, ``-3``… until no destination of the group
        uses it."""
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
