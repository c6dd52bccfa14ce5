"""The session VFS: the host opens a container's database and journal only when they are
regular files, and none of its opens can block (``store/session_vfs.py``)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from nanoclaw_common.store import OutboundReader, OutboundStore, rows
from nanoclaw_common.store.runs import leftover_claims
from nanoclaw_common.store.session_vfs import LAYERS, MAX_JOURNAL_BYTES, UnsafeSessionFile

QUICK_S = 2.0  # a refusal is immediate; a blocked open would never return


@pytest.fixture
def outbound(tmp_path: Path) -> Path:
    agent = tmp_path / "agent"
    agent.mkdir()
    path = agent / "outbound.db"
    store = OutboundStore(path)
    store.start_run("run-1", now=1)
    store.claim(["m1"], "run-1", now=1)
    store.close()
    return path


@pytest.fixture
def layers() -> Iterator[None]:
    yield
    LAYERS.type_check = LAYERS.probe = LAYERS.rw_open = True


def bounded(func: object, timeout_s: float = QUICK_S) -> BaseException | object:
    """Call ``func`` on a thread; fail the test if it does not return in time (a blocked
    open), else return its result or the exception it raised."""
    box: list[object] = []

    def run() -> None:
        try:
            box.append(func())  # type: ignore[operator]
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert box, f"blocked for more than {timeout_s} s"
    return box[0]


def claims(path: Path) -> list[str]:
    reader = OutboundReader(path)
    try:
        return [a.message_id for a in reader.acks("processing")]
    finally:
        reader.close()


def test_a_fifo_journal_is_refused_at_once_on_every_read(outbound: Path) -> None:
    reader = OutboundReader(outbound)
    assert [a.message_id for a in reader.acks()] == ["m1"]
    os.mkfifo(f"{outbound}-journal")
    # The hot-journal check runs at every read transaction, not only at open.
    error = bounded(reader.acks)
    assert isinstance(error, UnsafeSessionFile) and "FIFO" in str(error)
    error = bounded(lambda: claims(outbound))  # and on a fresh connection
    assert isinstance(error, UnsafeSessionFile)
    os.unlink(f"{outbound}-journal")
    assert [a.message_id for a in reader.acks()] == ["m1"]  # the file itself was fine
    reader.close()


def test_a_fifo_database_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "outbound.db")
    error = bounded(lambda: OutboundReader(tmp_path / "outbound.db"))
    assert isinstance(error, UnsafeSessionFile) and "FIFO" in str(error)


def test_the_database_open_cannot_block_even_past_the_type_check(
    tmp_path: Path, layers: None
) -> None:
    """A FIFO renamed into place after the check: the database is opened O_RDWR (Linux
    never blocks that on a FIFO), so the read fails instead of hanging."""
    LAYERS.type_check = False
    os.mkfifo(tmp_path / "outbound.db")
    error = bounded(lambda: OutboundReader(tmp_path / "outbound.db").acks())
    assert isinstance(error, apsw.Error)


def test_the_journal_probe_cannot_block_even_past_the_type_check(
    outbound: Path, layers: None
) -> None:
    LAYERS.type_check = False
    os.mkfifo(f"{outbound}-journal")
    error = bounded(lambda: claims(outbound))
    assert isinstance(error, UnsafeSessionFile)


def test_read_only_stays_read_only_with_the_read_write_descriptor(outbound: Path) -> None:
    before = outbound.read_bytes()
    reader = OutboundReader(outbound)
    assert reader.db.conn.readonly("main")
    with pytest.raises(apsw.ReadOnlyError):
        reader.db.execute("DELETE FROM processing_ack")
    reader.close()
    assert outbound.read_bytes() == before


def test_links_are_refused(outbound: Path, tmp_path: Path) -> None:
    other = tmp_path / "central.db"
    OutboundStore(other).close()
    (tmp_path / "agent" / "linked.db").symlink_to(other)
    error = bounded(lambda: OutboundReader(tmp_path / "agent" / "linked.db"))
    assert isinstance(error, UnsafeSessionFile) and "symlink" in str(error)
    (tmp_path / "host-file").write_bytes(b"a host file SQLite must not open as a journal")
    os.symlink(tmp_path / "host-file", f"{outbound}-journal")
    error = bounded(lambda: claims(outbound))
    assert isinstance(error, UnsafeSessionFile)


def test_a_wal_database_is_refused(outbound: Path) -> None:
    conn = apsw.Connection(str(outbound))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("INSERT INTO processing_ack VALUES ('m2', 'processing', 'run-1', 2)")
    conn.close()
    error = bounded(lambda: claims(outbound))
    assert isinstance(error, UnsafeSessionFile) and "WAL" in str(error)


def crash_mid_write(path: Path) -> None:
    """A runner killed in the middle of a write: a hot journal beside the database."""
    code = (
        "import apsw, os, sys\n"
        "c = apsw.Connection(sys.argv[1]); c.execute('PRAGMA cache_size=1'); c.execute('BEGIN')\n"
        "c.execute(\"UPDATE processing_ack SET status = 'completed'\")\n"
        "for i in range(300): c.execute('INSERT INTO session_state VALUES (?, ?, 0)',"
        " (str(i), 'x' * 1000))\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    assert os.path.getsize(f"{path}-journal") > 0


def test_a_hot_journal_is_still_rolled_back_by_the_recovery(outbound: Path) -> None:
    crash_mid_write(outbound)
    reader = OutboundReader(outbound)
    with pytest.raises(apsw.ReadOnlyError):  # read-only: never rolls back itself
        reader.acks()
    reader.close()
    assert os.path.exists(f"{outbound}-journal")
    found = leftover_claims(outbound, "run-1")  # the one read-write recovery
    assert [(a.message_id, a.status) for a in found] == [("m1", "processing")]
    assert not os.path.exists(f"{outbound}-journal")


def test_a_huge_planted_journal_is_not_rolled_back(outbound: Path) -> None:
    crash_mid_write(outbound)
    with open(f"{outbound}-journal", "r+b") as handle:
        handle.truncate(MAX_JOURNAL_BYTES + 1)
    error = bounded(lambda: leftover_claims(outbound, "run-1"))
    assert isinstance(error, UnsafeSessionFile) and "bytes" in str(error)


def test_only_the_hosts_connections_are_guarded(outbound: Path) -> None:
    store = OutboundStore(outbound)  # the runner's own writer: its folder is its own
    assert store.db.conn.open_vfs == "unix"
    store.close()
    reader = OutboundReader(outbound)  # the host's view
    assert reader.db.conn.open_vfs == "nanoclaw-session"
    reader.close()


def test_the_hosts_reader_waits_at_most_a_second_for_a_held_lock(outbound: Path) -> None:
    holder = apsw.Connection(str(outbound))
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        error = bounded(lambda: claims(outbound), timeout_s=10)
        assert isinstance(error, apsw.BusyError)
        assert time.monotonic() - started < 5  # not the 5 s of the host's own files
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_waiting_for_a_lock_never_holds_up_other_threads(outbound: Path) -> None:
    """The VFS runs with the GIL held; SQLite's busy handler naps through ``xSleep``, which
    must let every other thread run meanwhile."""
    holder = apsw.Connection(str(outbound))
    holder.execute("BEGIN EXCLUSIVE")
    ticks: list[float] = []
    waiting = threading.Event()

    def ticker() -> None:
        while not waiting.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.002)

    beat = threading.Thread(target=ticker, daemon=True)
    beat.start()
    try:
        assert isinstance(bounded(lambda: claims(outbound), timeout_s=10), apsw.BusyError)
    finally:
        waiting.set()
        beat.join()
        holder.execute("ROLLBACK")
        holder.close()
    gaps = sorted(b - a for a, b in itertools.pairwise(ticks))
    # The unix VFS's own sleep held the GIL for naps of up to 100 ms, 12 of them a second.
    assert sum(gap > 0.08 for gap in gaps) <= 1, gaps[-5:]


def test_rows_read_through_the_vfs_are_the_rows(outbound: Path) -> None:
    reader = OutboundReader(outbound)
    assert reader.acks() == [rows.Ack("m1", "processing", "run-1", 1)]
    reader.close()
