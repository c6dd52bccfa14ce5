"""The sweeper's free-space floor on a disk that is really full: its data folder on a small
tmpfs of the test's own, filled to the last block by a filler file. Writing the floor's block
to ``central.db`` is then refused (``SQLITE_FULL``), and the floor must work anyway: every
container stopped, wakes held, one log line for the condition, and the owner told exactly
once when there is room again (the block recorded first, lifted after)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from loguru import logger

from nanoclaw_common.disk import OWNER_NOTICE_KIND
from nanoclaw_common.disk.quotas import DiskQuotas
from nanoclaw_common.paths import Layout
from nanoclaw_common.sessions import ensure_session_files
from nanoclaw_common.settings import Settings
from nanoclaw_common.store import CentralStore, rows
from nanoclaw_common.store.disk import DiskLedger
from nanoclaw_common.store.owner_notices import OwnerNotice, OwnerNotices
from nanoclaw_sweeper.disk import DiskWatch
from tests.sweeper_world import T0, FakeSandbox, beat

TMPFS_MB = 24
FLOOR_MB = 4


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """The data folder on a tmpfs of its own (overrides the conftest's)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path = tmp_path / "data"
    path.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(path)], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> None:
    """Every free block of the filesystem into one file."""
    with path.open("wb", buffering=0) as handle:
        stats = os.statvfs(path.parent)
        os.posix_fallocate(handle.fileno(), 0, stats.f_bavail * stats.f_frsize)
        block = b"\0" * 4096
        try:
            while True:
                handle.write(block)
        except OSError:
            pass
    assert os.statvfs(path.parent).f_bavail == 0


def disk_notices(central: CentralStore) -> list[OwnerNotice]:
    return [n for n in OwnerNotices(central).list() if n.kind == OWNER_NOTICE_KIND]


def test_the_floor_works_on_a_full_disk_and_tells_the_owner_once(
    settings: Settings, central: CentralStore, layout: Layout
) -> None:
    tuned = msgspec.structs.replace(settings, disk_min_free_mb=FLOOR_MB).validate()
    sandbox = FakeSandbox(central)
    watch = DiskWatch(
        tuned, central, layout, sandbox.stop, quotas=DiskQuotas(tuned, layout), clock=lambda: 0.0
    )
    group = central.create_agent_group("Main", "main", now=T0)
    sessions: list[rows.Session] = []
    for _ in range(2):
        session = central.create_session(group.id, None, now=T0)
        beat(ensure_session_files(layout, session), T0 + 500)
        sandbox.start(session)
        sessions.append(session)
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="INFO")
    filler = layout.home / "filler"
    try:
        fill(filler)
        # Full: the block cannot be written, and every container is stopped all the same.
        checked = watch.check(list(sandbox.live), T0 + 1_000)
        assert sorted(checked.stopped) == sorted(s.id for s in sessions)
        assert sandbox.live == {}
        assert DiskLedger(central).list_blocks() == []  # refused by the full disk
        for now in range(T0 + 2_000, T0 + 12_000, 1_000):
            watch.check([], now)  # passes go on, nothing raised
            assert all(watch.holds(central.get_session(s.id) or s) for s in sessions)
        assert disk_notices(central) == []
        # One line for the floor and one for the refused block, not one a pass.
        assert sum("stopping every container" in line for line in lines) == 1, lines
        assert sum("the disk floor's block waits" in line for line in lines) == 1, lines

        filler.unlink()
        # Room again: recorded (the owner's notice queued), not lifted, nothing stopped.
        woken = sandbox.start(sessions[0]) and central.get_session(sessions[0].id)
        assert woken
        checked = watch.check(list(sandbox.live), T0 + 13_000)
        assert checked.stopped == [] and sessions[0].id in sandbox.live
        [block] = DiskLedger(central).list_blocks()
        assert block.scope == "floor" and block.notified_at_ms is not None
        [notice] = disk_notices(central)
        assert notice.count == 1 and "only 0 B free" in notice.text
        # Then lifted; the owner was told once for the whole episode.
        watch.check(list(sandbox.live), T0 + 14_000)
        assert DiskLedger(central).list_blocks() == []
        watch.check(list(sandbox.live), T0 + 15_000)
        assert [n.count for n in disk_notices(central)] == [1]
        assert any("disk has room again: the disk floor's block" in line for line in lines)
    finally:
        logger.remove(sink)
        filler.unlink(missing_ok=True)
