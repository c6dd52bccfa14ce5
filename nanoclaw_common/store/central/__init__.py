"""The central store (``central.db``): the entity model, roles, sessions, destinations,
pending approvals and questions, the dropped-message audit and per-group container config.

WAL, busy_timeout 5 s, and every write is one ``BEGIN IMMEDIATE`` transaction (a nested
``write()`` is a savepoint: ``sqlite.Database.write``). Each program opens its own store after
start-up; a store is never shared across processes.

One module per entity, each a ``CentralPart`` over the shared connection (docs/internals.md,
"The central store", says which part owns which tables). ``CentralStore`` is all of them on
one connection; a program that uses little builds only its parts on ``open_central``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

import msgspec

from nanoclaw_common.store.central.base import (
    CentralPart,
    normalize_name,
    open_central,
    unguessable_id,
)
from nanoclaw_common.store.central.cards import ApprovalClick, Cards, HeldFile
from nanoclaw_common.store.central.destinations import Destinations
from nanoclaw_common.store.central.drops import Drops
from nanoclaw_common.store.central.entities import Entities
from nanoclaw_common.store.central.notices import Notices
from nanoclaw_common.store.central.people import People
from nanoclaw_common.store.central.sessions import RestartRequest, Sessions
from nanoclaw_common.store.migrations import apply_migrations, schema_version
from nanoclaw_common.store.sqlite import Database, Mode

__all__ = [
    "ApprovalClick",
    "Cards",
    "CentralPart",
    "CentralStore",
    "Counts",
    "Destinations",
    "Drops",
    "Entities",
    "HeldFile",
    "Notices",
    "People",
    "RestartRequest",
    "Sessions",
    "normalize_name",
    "open_central",
    "unguessable_id",
]


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


class CentralStore(Entities, People, Sessions, Destinations, Cards, Notices, Drops):
    """Every part's verbs over ``central.db``, on one connection. Callers never see SQL or
    cursors."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(Database(path, Mode.CENTRAL))

    @classmethod
    def open(cls, path: Path | str) -> CentralStore:
        """Open and bring the schema up to date."""
        store = cls(path)
        store.migrate()
        return store

    def close(self) -> None:
        """Close the connection (every part made from this store loses it too)."""
        self.db.close()

    def write(self) -> AbstractContextManager[None]:
        """One transaction for several verbs (``with store.write():``): they commit together
        or not at all (nested blocks are savepoints: ``sqlite.Database.write``)."""
        return self.db.write()

    def migrate(self) -> list[str]:
        """Apply the migrations not applied yet; their names, in order (empty: up to date)."""
        return apply_migrations(self.db)

    def schema_version(self) -> int:
        """The version of the newest migration applied."""
        return schema_version(self.db)

    def counts(self) -> Counts:
        """How many rows of each kind, read in one snapshot (``nanoclaw status``)."""
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
