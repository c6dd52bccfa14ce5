"""Which inotify events in ``agent/`` poke a session (``watch.is_commit``), checked against
what a real SQLite commit in ``journal_mode=DELETE`` makes the kernel report."""

from __future__ import annotations

from pathlib import Path

import apsw

from nanoclaw_common.store import OutboundReader
from nanoclaw_delivery.watch import (
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_MOVED_TO,
    is_commit,
    open_inotify,
)
from tests.waiting import wait_until


def test_only_a_commits_end_or_the_database_itself_pokes() -> None:
    assert is_commit(IN_DELETE, "outbound.db-journal")
    assert not is_commit(IN_CREATE, "outbound.db-journal")  # a transaction starting
    assert not is_commit(IN_CLOSE_WRITE, "outbound.db-journal")  # still locked
    for mask in (IN_CREATE, IN_MOVED_TO, IN_DELETE):
        assert is_commit(mask, "outbound.db")
    assert not is_commit(IN_CLOSE_WRITE, "outbound.db")  # a reader of ours closing it
    assert not is_commit(IN_CLOSE_WRITE, "heartbeat")
    assert not is_commit(IN_DELETE, "outbound.db-wal")


def test_a_real_commit_is_seen_once_it_has_ended(tmp_path: Path) -> None:
    inotify = open_inotify()
    assert inotify is not None
    conn = apsw.Connection(str(tmp_path / "outbound.db"))
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("CREATE TABLE t (x)")
    try:
        inotify.add(tmp_path)
        with conn:
            conn.execute("INSERT INTO t VALUES (1)")
            inside = [e for e in inotify.read() if is_commit(e[1], e[2])]
        after = wait_until(
            lambda: [e for e in inotify.read() if is_commit(e[1], e[2])],
            timeout_s=5,
            what="the commit's events",
        )
        assert inside == []  # nothing pokes while the transaction is open
        assert [name for _wd, _mask, name in after] == ["outbound.db-journal"]
    finally:
        conn.close()
        inotify.close()


def test_the_hosts_own_reader_closing_the_file_pokes_nothing(tmp_path: Path) -> None:
    """The host reader holds outbound.db O_RDWR (session_vfs), so its close is an
    IN_CLOSE_WRITE: it used to poke the session (delivery's idle release poked itself).
    Events come in order: up to a later real commit, the commit's end is all that pokes."""
    path = tmp_path / "outbound.db"
    writer = apsw.Connection(str(path))
    writer.execute("PRAGMA journal_mode=DELETE")
    writer.execute("CREATE TABLE t (x)")
    inotify = open_inotify()
    assert inotify is not None
    try:
        inotify.add(tmp_path)
        reader = OutboundReader(path)
        reader.data_version()
        reader.close()
        with writer:
            writer.execute("INSERT INTO t VALUES (1)")
        seen: list[tuple[int, int, str]] = []

        def commit_seen() -> bool:
            seen.extend(inotify.read())
            return any(is_commit(mask, name) for _wd, mask, name in seen)

        wait_until(commit_seen, timeout_s=5, what="the commit's end")
        pokes = [name for _wd, mask, name in seen if is_commit(mask, name)]
        assert pokes == ["outbound.db-journal"], seen
    finally:
        writer.close()
        inotify.close()
