"""``tune_memory``: delivery's process-wide SQLite settings. They change global SQLite state
(``apsw.shutdown``), so each check runs in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from nanoclaw_common.store import InboundStore
from nanoclaw_common.store.sqlite import Database, Mode
from tests.waiting import wait_until

CHILD = """
import json, sys
import apsw
from nanoclaw_common.store import InboundStore
from nanoclaw_delivery.__main__ import tune_memory

if sys.argv[1] == "tuned":
    tune_memory()
paths = sys.argv[2:]
before = apsw.memory_used()
stores = [InboundStore(path) for path in paths]
for store in stores:
    store.delivery_watermark()
used = apsw.memory_used() - before
print(json.dumps({"per_connection": used / len(stores), "ok": True}))
"""


def child(mode: str, *paths: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, float] = json.loads(done.stdout)
    return result


def test_session_connections_hold_no_bulk_page_cache(tmp_path: Path) -> None:
    paths = []
    for n in range(20):
        path = tmp_path / f"inbound-{n}.db"
        InboundStore(path).close()  # created with the schema
        paths.append(path)
    default = child("default", *paths)["per_connection"]
    tuned = child("tuned", *paths)["per_connection"]
    # SQLite's bulk page allocation is about 88 KB a connection; tuned, a connection holds
    # its schema and the pages in use only.
    assert default - tuned > 60_000
    assert tuned < 40_000


LOCKED_CHILD = """
import sys
from nanoclaw_common.store import InboundStore
from nanoclaw_delivery.__main__ import tune_memory

tune_memory()
print("opening", flush=True)
store = InboundStore(sys.argv[1])
print("opened", store.delivery_watermark(), flush=True)
"""


def test_a_connection_opened_during_another_writers_commit_waits(tmp_path: Path) -> None:
    """The hook reads the schema before the store sets its busy timeout, so it must set the
    timeout itself: a connection opened while another process writes waits instead of
    failing with SQLITE_BUSY."""
    path = tmp_path / "inbound.db"
    InboundStore(path).close()
    holder = Database(path, Mode.SESSION)
    holder.execute("BEGIN EXCLUSIVE")  # what a writer holds while it commits
    process = subprocess.Popen(
        [sys.executable, "-c", LOCKED_CHILD, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "opening"

        # Release the lock only once the child waits for it in SQLite's busy handler (which
        # sleeps); without the timeout it would have failed at once and exited.
        def sleeps_in_busy_handler() -> bool:
            assert process.poll() is None, process.communicate()[1]
            return "nanosleep" in Path(f"/proc/{process.pid}/wchan").read_text()

        wait_until(
            sleeps_in_busy_handler,
            timeout_s=20,
            what="the child to wait for the lock",
            poll_s=0.005,
        )
    finally:
        holder.execute("COMMIT")
        holder.close()
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert out.strip() == "opened 0"
