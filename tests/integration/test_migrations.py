"""Migrations: applied once each, recorded in the same transaction, idempotent, and safe when
several programs start at the same moment."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import apsw
import pytest

from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.migrations import Migration, apply_migrations, central_migrations
from nanoclaw_common.store.sqlite import Database, Mode
from tests.central_verbs import schema_dump


def open_and_migrate(path: str) -> list[str]:
    store = CentralStore(path)
    try:
        return store.migrate()
    finally:
        store.close()


def test_migrations_applied_twice_give_the_same_schema(tmp_path: Path) -> None:
    store = CentralStore.open(tmp_path / "central.db")
    first = schema_dump(store)
    assert store.migrate() == []
    assert schema_dump(store) == first
    store.close()
    again = CentralStore.open(tmp_path / "central.db")
    assert schema_dump(again) == first
    assert again.schema_version() == central_migrations()[-1].version
    again.close()


def test_migration_files_are_numbered_and_unique() -> None:
    found = central_migrations()
    assert found and found[0].version == 1
    assert len({m.version for m in found}) == len(found)


def test_concurrent_starts_apply_each_migration_once(tmp_path: Path) -> None:
    path = str(tmp_path / "central.db")
    Database(path, Mode.CENTRAL).close()  # the file exists, so every process races on WAL setup
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.map(open_and_migrate, [path] * 4)
    applied = [name for result in results for name in result]
    assert sorted(applied) == sorted(f"{m.version:04d}_{m.name}" for m in central_migrations())
    store = CentralStore(path)
    assert store.db.scalar("SELECT count(*) FROM schema_migrations") == len(central_migrations())
    store.close()


def test_a_failing_migration_leaves_no_trace(tmp_path: Path) -> None:
    db = Database(tmp_path / "central.db", Mode.CENTRAL)
    broken = [
        Migration(1, "good", "CREATE TABLE a (x);"),
        Migration(2, "bad", "CREATE TABLE b (y); INSERT INTO nowhere VALUES (1);"),
    ]
    with pytest.raises(apsw.SQLError):
        apply_migrations(db, broken)
    tables = {n for (n,) in db.all("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "a" in tables and "b" not in tables  # the failed file's DDL was rolled back
    assert db.all("SELECT version, name FROM schema_migrations") == [(1, "good")]
    db.close()


def test_an_up_to_date_file_takes_no_write_lock(tmp_path: Path) -> None:
    """Every open but the first finds nothing to apply without a write lock, so it never
    waits behind another process's transaction (the proxy's doors open one connection per
    thread). The opener's busy timeout is zero: any attempt at the lock would raise."""
    path = tmp_path / "central.db"
    CentralStore.open(path).close()
    holder = Database(path, Mode.CENTRAL)
    holder.execute("BEGIN IMMEDIATE")
    opener = Database(path, Mode.CENTRAL)
    opener.conn.setbusytimeout(0)
    try:
        assert apply_migrations(opener) == []
        with pytest.raises(apsw.BusyError):  # the lock really is held
            opener.execute("BEGIN IMMEDIATE")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        opener.close()
