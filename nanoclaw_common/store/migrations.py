"""Applies ``schema/central/NNNN_name.sql`` in order. Each file runs in one ``BEGIN IMMEDIATE``
transaction together with its ``schema_migrations`` row, so a crash leaves either both or
neither, and two processes starting at once apply each migration exactly once."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import msgspec

from nanoclaw_common.clock import now_ms
from nanoclaw_common.store.sqlite import Database, Mode

_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class Migration(msgspec.Struct, frozen=True):
    version: int
    name: str
    sql: str


def schema_text(name: str) -> str:
    """The text of a file under ``schema/`` (``inbound.sql``, ``outbound.sql``)."""
    return resources.files("nanoclaw_schema").joinpath(name).read_text()


def open_session_db(
    path: Path | str, schema_name: str, *, container_file: bool = False
) -> Database:
    """Open a session DB for writing, creating its schema (``schema/<schema_name>``) when the
    file is new. The check runs inside the write lock: two processes creating the same file
    at once apply the schema once. ``container_file``: see ``Database``."""
    db = Database(path, Mode.SESSION, container_file=container_file)
    if not db.scalar("PRAGMA user_version"):
        with db.write():
            if not db.scalar("PRAGMA user_version"):
                db.executescript(schema_text(schema_name))
    return db


def central_migrations() -> list[Migration]:
    found: list[Migration] = []
    for entry in resources.files("nanoclaw_schema").joinpath("central").iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two central migrations share a number: {versions}")
    return found


def apply_migrations(db: Database, migrations: list[Migration] | None = None) -> list[str]:
    """Apply what is missing; return the names applied now (empty when up to date)."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, applied_at_ms INTEGER NOT NULL)"
    )
    applied_now: list[str] = []
    # One read finds what is missing, so an up-to-date file (every open but the first) takes
    # no write lock at all: the doors open a connection per thread, and a write lock here
    # would wait behind another process's transaction.
    done = {row[0] for row in db.all("SELECT version FROM schema_migrations")}
    for migration in central_migrations() if migrations is None else migrations:
        if migration.version in done:
            continue
        with db.write():
            # Checked inside the write lock: another process may have applied it meanwhile.
            if db.scalar("SELECT 1 FROM schema_migrations WHERE version = ?", (migration.version,)):
                continue
            db.executescript(migration.sql)
            db.execute(
                "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES (?, ?, ?)",
                (migration.version, migration.name, now_ms()),
            )
        applied_now.append(f"{migration.version:04d}_{migration.name}")
    return applied_now


def schema_version(db: Database) -> int:
    exists = db.scalar(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    )
    if not exists:
        return 0
    return int(db.scalar("SELECT ifnull(max(version), 0) FROM schema_migrations"))
