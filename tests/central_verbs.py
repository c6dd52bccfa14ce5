"""Verbs over ``central.db`` that only tests use: arranging a state no program writes that way
(a closed session, a renamed group, a day's token use) and reading what no program reads."""

from __future__ import annotations

from nanoclaw_common.errors import NotFound
from nanoclaw_common.store import rows
from nanoclaw_common.store.central import CentralPart
from nanoclaw_common.store.metering import TokenLedger
from nanoclaw_common.store.sqlite import columns


def schema_dump(central: CentralPart) -> list[tuple[str, str, str]]:
    """(type, name, sql) of every schema object, for comparing schemas."""
    return [
        (str(kind), str(name), str(sql))
        for kind, name, sql in central.db.all(
            "SELECT type, name, ifnull(sql, '') FROM sqlite_master ORDER BY type, name"
        )
    ]


def rename_agent_group(central: CentralPart, agent_group_id: str, name: str) -> None:
    """Rename a group; ``NotFound`` when there is none."""
    with central.db.write():
        central.db.execute("UPDATE agent_groups SET name = ? WHERE id = ?", (name, agent_group_id))
        if not central.db.changes():
            raise NotFound(f"agent group {agent_group_id} not found")


def is_owner(central: CentralPart, user_id: str) -> bool:
    """True when ``user_id`` holds the owner role."""
    return bool(
        central.db.scalar(
            "SELECT 1 FROM user_roles WHERE user_id = ? AND role = 'owner'", (user_id,)
        )
    )


def list_user_dms(central: CentralPart) -> list[rows.UserDm]:
    """Every user's DM chat per channel, by user and channel."""
    return [
        rows.UserDm(*values)
        for values in central.db.all(
            f"SELECT {columns(rows.UserDm)} FROM user_dms ORDER BY user_id, channel_type"
        )
    ]


def close_session(central: CentralPart, session_id: str) -> None:
    """Mark a session closed (no program closes sessions yet)."""
    with central.db.write():
        central.db.execute("UPDATE sessions SET status = 'closed' WHERE id = ?", (session_id,))


def remove_destination(central: CentralPart, agent_group_id: str, local_name: str) -> None:
    """Delete one of a group's destinations; ``NotFound`` when it has none by that name."""
    with central.db.write():
        central.db.execute(
            "DELETE FROM agent_destinations WHERE agent_group_id = ? AND local_name = ?",
            (agent_group_id, local_name),
        )
        if not central.db.changes():
            raise NotFound(f"{agent_group_id} has no destination {local_name!r}")


def get_token_usage(central: CentralPart, agent_group_id: str, day: str) -> rows.TokenUsage | None:
    """The group's ``token_usage`` row for ``day`` (None: nothing counted that day)."""
    found = central.db.one(
        f"SELECT {columns(rows.TokenUsage)} FROM token_usage WHERE agent_group_id = ? AND day = ?",
        (agent_group_id, day),
    )
    return rows.TokenUsage(*found) if found else None


def add_token_usage(
    central: CentralPart, agent_group_id: str, day: str, input_tokens: int, output_tokens: int
) -> rows.TokenUsage:
    """Count one call's usage the way the proxy does (``TokenLedger.add_usage``); the day's
    row after it."""
    with central.db.write():
        TokenLedger(central).add_usage(agent_group_id, day, input_tokens, output_tokens)
        usage = get_token_usage(central, agent_group_id, day)
    assert usage is not None
    return usage
