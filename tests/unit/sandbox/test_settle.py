"""Settling a dead run's leftover claims (docs/internals.md), with real SQLite files and
``now`` passed in."""

from __future__ import annotations

from pathlib import Path

import pytest

from nanoclaw_common.messages import ChatContent, decode_inbound_content
from nanoclaw_common.paths import Layout, SessionPaths
from nanoclaw_common.sandbox.settle import (
    Settled,
    failure_note_id,
    retry_backoff_ms,
    settle_leftover_claims,
)
from nanoclaw_common.sessions import ensure_session_files
from nanoclaw_common.store import CentralStore, InboundStore, NewInbound, OutboundStore, rows
from nanoclaw_common.store.runs import RunLedger, leftover_claims

NOW = 1_800_000_000_000


@pytest.fixture
def session(central: CentralStore) -> rows.Session:
    group = central.create_agent_group("Main", "main")
    return central.create_session(group.id, None, now=NOW - 60_000)


@pytest.fixture
def paths(layout: Layout, session: rows.Session) -> SessionPaths:
    return ensure_session_files(layout, session)


def add_message(inbound: InboundStore, message_id: str, *, tries: int = 0) -> None:
    inbound.insert_message(
        NewInbound(
            id=message_id,
            content=ChatContent(text="hi", sender_id="cli:local"),
            timestamp_ms=NOW - 1000,
            channel_type="cli",
            platform_id="local",
            thread_id="t1",
        ),
        now=NOW - 1000,
    )
    if tries:
        inbound.reschedule(message_id, tries=tries, process_after_ms=NOW - 1000)


def claim(paths: SessionPaths, ids: list[str], run_id: str) -> None:
    outbound = OutboundStore(paths.outbound_db)
    outbound.claim(ids, run_id, now=NOW - 500)
    outbound.close()


def settle(
    paths: SessionPaths,
    central: CentralStore,
    session: rows.Session,
    *,
    max_tries: int = 5,
    now: int = NOW,
    live_run_id: str | None = None,
    runs: tuple[str, ...] = ("run-old",),
) -> Settled:
    """Settle the claims of ``runs`` (in production: the session's recorded run)."""
    inbound = InboundStore(paths.inbound_db)
    try:
        return settle_leftover_claims(
            session_id=session.id,
            claims=[c for run in runs for c in leftover_claims(paths.outbound_db, run)],
            inbound=inbound,
            ledger=RunLedger(central),
            max_tries=max_tries,
            now=now,
            live_run_id=live_run_id,
        )
    finally:
        inbound.close()


def test_backoff() -> None:
    assert [retry_backoff_ms(t) for t in range(5)] == [5_000, 10_000, 20_000, 40_000, 80_000]
    assert retry_backoff_ms(50) == 600_000
    assert retry_backoff_ms(-1) == 5_000


def test_a_dead_runs_claim_is_retried_later(
    paths: SessionPaths, central: CentralStore, session: rows.Session
) -> None:
    inbound = InboundStore(paths.inbound_db)
    add_message(inbound, "m1")
    add_message(inbound, "m2", tries=2)
    claim(paths, ["m1", "m2"], "run-old")
    result = settle(paths, central, session)
    assert result.runs == ["run-old"]
    assert result.rescheduled == ["m1", "m2"]
    m1, m2 = inbound.get_message("m1"), inbound.get_message("m2")
    assert m1 is not None and m2 is not None
    assert (m1.status, m1.tries, m1.process_after_ms) == ("pending", 1, NOW + 5_000)
    assert (m2.status, m2.tries, m2.process_after_ms) == ("pending", 3, NOW + 20_000)
    # A due row stays out of the runner's batch until its backoff has passed.
    assert inbound.pending_messages(limit=10, first_poll=True, now=NOW) == []
    assert [r.id for r in inbound.pending_messages(limit=10, first_poll=True, now=NOW + 5_000)] == [
        "m1"
    ]
    inbound.close()


def test_each_run_is_settled_once(
    paths: SessionPaths, central: CentralStore, session: rows.Session
) -> None:
    inbound = InboundStore(paths.inbound_db)
    add_message(inbound, "m1")
    claim(paths, ["m1"], "run-old")
    settle(paths, central, session)
    # The claim is still in outbound.db (only a new run drops it); a second wake or sweep must
    # not count the same death again.
    again = settle(paths, central, session, now=NOW + 10_000)
    assert again.runs == [] and again.rescheduled == []
    row = inbound.get_message("m1")
    assert row is not None and row.tries == 1
    # A later run dying on it counts once more.
    claim(paths, ["m1"], "run-newer")
    settle(paths, central, session, now=NOW + 20_000, runs=("run-newer",))
    row = inbound.get_message("m1")
    assert row is not None and (row.tries, row.process_after_ms) == (2, NOW + 20_000 + 10_000)
    inbound.close()


def test_max_tries_fails_the_message_and_tells_the_user(
    paths: SessionPaths, central: CentralStore, session: rows.Session
) -> None:
    inbound = InboundStore(paths.inbound_db)
    add_message(inbound, "m1", tries=2)
    claim(paths, ["m1"], "run-old")
    result = settle(paths, central, session, max_tries=3)
    assert result.failed == ["m1"]
    row = inbound.get_message("m1")
    assert row is not None and (row.status, row.tries) == ("failed", 3)
    failures = RunLedger(central).list_failures(session.id)
    assert [(f.message_id, f.tries) for f in failures] == [("m1", 3)]
    note = inbound.get_message(failure_note_id("m1"))
    assert note is not None
    assert (note.status, note.trigger, note.channel_type, note.platform_id, note.thread_id) == (
        "pending",
        1,
        "cli",
        "local",
        "t1",
    )
    content = decode_inbound_content(note.content)
    assert isinstance(content, ChatContent) and content.sender_id == "system"
    assert f"#{row.seq}" in content.text and "failed" in content.text
    inbound.close()


def test_what_is_not_a_leftover_is_left_alone(
    paths: SessionPaths, central: CentralStore, session: rows.Session
) -> None:
    inbound = InboundStore(paths.inbound_db)
    for message_id in ("live", "done", "gone"):
        add_message(inbound, message_id)
    inbound.set_status("done", "completed")
    claim(paths, ["live"], "run-live")
    claim(paths, ["done"], "run-old")
    claim(paths, ["unknown"], "run-old")
    outbound = OutboundStore(paths.outbound_db)
    outbound.complete(["gone"], "run-old", now=NOW)
    outbound.close()
    result = settle(paths, central, session, live_run_id="run-live", runs=("run-old", "run-live"))
    assert result.runs == ["run-old"]
    assert result.rescheduled == [] and result.failed == []
    for message_id in ("live", "gone"):
        row = inbound.get_message(message_id)
        assert row is not None and row.tries == 0
    inbound.close()


def test_leftover_claims_survive_a_hot_journal(tmp_path: Path) -> None:
    """A container killed mid-write leaves outbound.db with a hot journal, which a read-only
    connection cannot roll back; the host still reads the claims."""
    db = tmp_path / "outbound.db"
    store = OutboundStore(db)
    store.claim(["m1"], "run-1", now=NOW)
    # Open a write and copy the files while it is in flight: a crash at that moment.
    store.db.conn.execute("PRAGMA cache_size=1")
    store.db.conn.execute("BEGIN IMMEDIATE")
    for number in range(300):
        store.db.conn.execute(
            "INSERT INTO session_state (key, value, updated_at_ms) VALUES (?, randomblob(4000), 0)",
            (f"k{number}",),
        )
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    (crashed / "outbound.db").write_bytes(db.read_bytes())
    journal = tmp_path / "outbound.db-journal"
    assert journal.exists()
    (crashed / "outbound.db-journal").write_bytes(journal.read_bytes())
    store.db.conn.execute("ROLLBACK")
    store.close()
    claims = leftover_claims(crashed / "outbound.db", "run-1")
    assert [(c.message_id, c.run_id, c.status) for c in claims] == [("m1", "run-1", "processing")]
    assert not (crashed / "outbound.db-journal").exists()
    assert leftover_claims(tmp_path / "missing.db", "run-1") == []


def test_claims_under_forged_run_ids_are_not_read(tmp_path: Path) -> None:
    """Only the run the host recorded can have left claims: a container that writes claims
    under made-up run ids makes the host read (and settle, one ``settled_runs`` row each)
    none of them."""
    outbound = OutboundStore(tmp_path / "outbound.db")
    outbound.claim(["m1"], "run-real", now=NOW)
    for n in range(200):
        outbound.claim([f"x{n}"], f"run-forged-{n}", now=NOW)
    outbound.close()
    claims = leftover_claims(tmp_path / "outbound.db", "run-real")
    assert [(c.message_id, c.run_id) for c in claims] == [("m1", "run-real")]
    assert leftover_claims(tmp_path / "outbound.db", None) == []  # no run: no leftovers
