"""A full disk under the session's ``agent/`` folder: the runner acks nothing it could not
write, waits, and answers once when space returns (issue 9 §4).

The session's ``agent/`` is a small real tmpfs (root mounts it; CI runs as root), filled with
a file until writes fail with ENOSPC / SQLITE_FULL; the real runner process, the real proxy
and SDK, the fake Messages API.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from nanoclaw_common.runner_config import write_proxy_token
from nanoclaw_common.store import OutboundStore
from nanoclaw_common.store.sqlite import Database, Mode
from tests.fakes.anthropic_api import FakeAnthropic, text
from tests.integration.agents.harness import (
    AgentSession,
    Proxy,
    ack_status,
    send_chat,
    start_runner,
    texts,
    write_config,
)
from tests.waiting import wait_until

MODEL = "claude-sonnet-4-6"
TMPFS_KB = 2048


@pytest.fixture
def small_agent_dir(agent: AgentSession) -> Iterator[Path]:
    """The session's ``agent/`` on a 2 MB tmpfs, with a fresh ``outbound.db`` on it."""
    folder = agent.paths.agent_dir
    shutil.rmtree(folder)
    folder.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_KB}k,mode=0755", "tmpfs", str(folder)],
        check=True,
    )
    try:
        OutboundStore(agent.paths.outbound_db).close()
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Take every free block of the filesystem under ``folder``."""
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        chunk = b"\0" * 65536
        try:
            while True:
                handle.write(chunk)
                handle.flush()
        except OSError:
            pass
    # What a page-sized write needs may still fit in the last partial block: leave none.
    while True:
        try:
            with open(filler, "ab") as handle:
                handle.write(b"\0" * 512)
        except OSError:
            return filler


def test_sqlite_full_surfaces_as_a_full_error(tmp_path: Path) -> None:
    """SQLite rolls back by itself after SQLITE_FULL; the store must not hide the error
    behind a failing ROLLBACK (it did: "cannot rollback - no transaction is active")."""
    import apsw

    db = Database(tmp_path / "s.db", Mode.SESSION)
    db.execute("CREATE TABLE t (x BLOB)")
    db.execute("PRAGMA max_page_count = 8")
    with pytest.raises(apsw.FullError), db.write():
        db.execute("INSERT INTO t VALUES (zeroblob(100000))")
    with db.write():  # the connection is usable again
        db.execute("INSERT INTO t VALUES (x'00')")
    assert db.scalar("SELECT count(*) FROM t") == 1
    db.close()


def test_a_full_disk_holds_the_answer_until_space_returns(
    proxy: Proxy,
    fake_api: FakeAnthropic,
    agent: AgentSession,
    small_agent_dir: Path,
) -> None:
    write_config(agent, proxy.socket, model=MODEL)
    fake_api.reply(text('<message to="main">the answer</message>'))
    runner = start_runner(agent, log_name="run.log")
    try:
        wait_until(
            lambda: "runner started" in runner.log() or runner.log(),
            timeout_s=20.0,
            what="the runner",
        )
        filler = fill(small_agent_dir)
        message = send_chat(agent, "a question")  # inbound.db is on the host's disk
        runner.wait_for_log("disk full", timeout_s=30)
        # Nothing is acked that was not written: no failed ack, no error notice.
        assert ack_status(agent, message) in (None, "processing")
        assert texts(agent) == []
        assert runner.process.poll() is None  # waiting, not dead
        filler.unlink()
        wait_until(
            lambda: ack_status(agent, message) == "completed",
            timeout_s=20.0,
            what="the ack",
        )
        assert texts(agent) == ["the answer"]
        assert len(fake_api.message_requests()) == 1  # answered once, no second turn
        runner.wait_for_log("disk has room again")
    finally:
        assert runner.terminate() == 0, runner.log()


def test_a_runner_started_on_a_full_disk_waits_to_record_its_run(
    proxy: Proxy,
    fake_api: FakeAnthropic,
    agent: AgentSession,
    small_agent_dir: Path,
) -> None:
    """The run's own record (``start_run``: container_state, the earlier runs' claims
    dropped) is a write too: a runner started on a full disk waits for room instead of
    dying (it exited 1, and its container would be retried into the same full disk)."""
    write_config(agent, proxy.socket, model=MODEL)
    fake_api.reply(text('<message to="main">the answer</message>'))
    # As the disk fills between the wake (which wrote the token) and the runner's start.
    write_proxy_token(agent.paths.agent_dir, agent.token)
    filler = fill(small_agent_dir)
    runner = start_runner(agent, log_name="run.log", token_file=False)
    try:
        runner.wait_for_log("disk full: the run's start waits", timeout_s=60)
        assert runner.process.poll() is None  # waiting, not dead
        message = send_chat(agent, "a question")
        filler.unlink()
        wait_until(lambda: ack_status(agent, message) == "completed", timeout_s=30, what="the ack")
        assert texts(agent) == ["the answer"]
    finally:
        assert runner.terminate() == 0, runner.log()
