"""What every part of the central store shares: the connection, the row helpers, and the
name and id rules several parts apply.

A *part* is the verbs over some of ``central.db``'s tables (docs/internals.md, "The central
store"). Every part made from one ``Database`` (or from another part, or from the whole
``CentralStore``) works on that one connection, so its ``db.write()`` blocks join the same
transactions: a cross-part change stays atomic.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any, TypeVar

from nanoclaw_common.clock import now_ms
from nanoclaw_common.store import rows
from nanoclaw_common.store.migrations import apply_migrations
from nanoclaw_common.store.sqlite import Database, Mode, columns

R = TypeVar("R", bound=rows.Row)


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


def open_central(path: Path | str) -> Database:
    """A connection to ``central.db`` with its schema brought up to date, for a program that
    builds only the parts it uses (the caller closes it)."""
    db = Database(path, Mode.CENTRAL)
    try:
        apply_migrations(db)
    except BaseException:
        db.close()
        raise
    return db


class CentralPart:
    """The verbs over some tables of ``central.db``, on the connection of ``source`` (a
    ``Database``, or any part, whose connection it shares)."""

    def __init__(self, source: Database | CentralPart) -> None:
        self.db: Database = source if isinstance(source, Database) else source.db

    def _rows(self, row_type: type[R], where: str = "", params: Any = ()) -> list[R]:
        table = _TABLES[row_type]
        sql = f"SELECT {columns(row_type)} FROM {table} {where}"
        return [row_type(*values) for values in self.db.all(sql, params)]

    def _row(self, row_type: type[R], where: str, params: Any) -> R | None:
        found = self._rows(row_type, where + " LIMIT 1", params)
        return found[0] if found else None


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
}
