"""The sweeper's disk pass over real folders and real session DBs, with the recording fake
sandbox and ``now``: a folder over its quota gets its containers stopped (claims retried), its
agent told what to delete (a trigger note that wakes the one cleanup run), the owner told (a
queued owner notice), further wakes held until the folder is under its quota again, and no
message lost meanwhile. Free space is the one thing faked (a unit test cannot fill the disk;
tests/sandbox/test_disk_quota.py does, for real)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from nanoclaw_common.disk import OWNER_NOTICE_KIND
from nanoclaw_common.disk.limits import MIB
from nanoclaw_common.disk.quotas import DiskQuotas
from nanoclaw_common.paths import Layout, SessionPaths
from nanoclaw_common.sessions import ensure_session_files
from nanoclaw_common.settings import Settings
from nanoclaw_common.store import CentralStore, InboundReader, rows
from nanoclaw_common.store.disk import BLOCK_CLEANUP, BLOCK_HELD, DiskBlock, DiskLedger
from nanoclaw_common.store.owner_notices import OwnerNotice, OwnerNotices
from nanoclaw_sweeper.disk import DiskWatch
from nanoclaw_sweeper.sweeper import PassReport, Sweeper
from tests.central_verbs import close_session
from tests.sweeper_world import T0, FakeSandbox, add_message, beat, claim, inbound_row

INTERVAL_MS = 10_000


@dataclass
class Disk:
    settings: Settings
    central: CentralStore
    layout: Layout
    sandbox: FakeSandbox
    sweeper: Sweeper
    group: rows.AgentGroup
    free: list[int]  # what statvfs "says"; the last item

    @property
    def ledger(self) -> DiskLedger:
        return DiskLedger(self.central)

    @property
    def group_dir(self) -> Path:
        path = self.layout.group_dir(self.group.folder)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def running_session(self, at: int = T0) -> tuple[rows.Session, SessionPaths]:
        session = self.central.create_session(self.group.id, None, now=at)
        paths = ensure_session_files(self.layout, session)
        self.sandbox.now = at
        self.sandbox.start(session)
        beat(paths, at + 500)
        return self.refreshed(session), paths

    def refreshed(self, session: rows.Session) -> rows.Session:
        current = self.central.get_session(session.id)
        assert current is not None
        return current

    def sweep(self, now: int) -> PassReport:
        self.sandbox.now = now
        return self.sweeper.sweep(now)

    def blocks(self) -> list[DiskBlock]:
        return self.ledger.list_blocks()


def fill(path: Path, megabytes: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, megabytes * MIB)


def make_disk(
    settings: Settings, central: CentralStore, layout: Layout, **overrides: object
) -> Disk:
    tuned = msgspec.structs.replace(
        settings,
        group_disk_quota_mb=8,
        group_disk_quota_entries=200,
        session_disk_quota_mb=4,
        session_disk_quota_entries=100,
        disk_check_interval_s=INTERVAL_MS / 1000,
        disk_min_free_mb=100,
        max_containers=3,
        **overrides,
    ).validate()
    sandbox = FakeSandbox(central)
    sweeper = Sweeper(tuned, central, sandbox)
    free = [10_000 * MIB]
    # The walk's time budget never runs out here (a loaded machine must not change a result).
    sweeper.disk = DiskWatch(
        tuned,
        central,
        layout,
        sandbox.stop,
        quotas=DiskQuotas(tuned, layout, free_space=lambda _path: free[-1]),
        clock=lambda: 0.0,
    )
    group = central.create_agent_group("Main", "main", now=T0)
    return Disk(tuned, central, layout, sandbox, sweeper, group, free)


@pytest.fixture
def disk(settings: Settings, central: CentralStore, layout: Layout) -> Disk:
    return make_disk(settings, central, layout)


DiskFactory = Callable[..., Disk]


@pytest.fixture
def make(settings: Settings, central: CentralStore, layout: Layout) -> DiskFactory:
    return lambda **overrides: make_disk(settings, central, layout, **overrides)


def notes(paths: SessionPaths) -> list[rows.InboundRow]:
    reader = InboundReader(paths.inbound_db)
    try:
        return [row for row in reader.list_messages() if row.id.startswith("disk-")]
    finally:
        reader.close()


def disk_notices(central: CentralStore) -> list[OwnerNotice]:
    """The sweeper's owner notices (coalesced: one pending per group, counting causes)."""
    return [n for n in OwnerNotices(central).list() if n.kind == OWNER_NOTICE_KIND]


def test_a_session_over_its_quota_is_stopped_told_and_loses_nothing(disk: Disk) -> None:
    session, paths = disk.running_session()
    add_message(paths, "m1")
    claim(paths, "run-1", "m1")
    fill(paths.agent_dir / "junk" / "big.bin", 6)  # 6 MiB in agent/, quota 4 MiB

    report = disk.sweep(T0 + 1_000)
    assert report.disk_stopped == [session.id]
    assert report.disk_blocked == [f"session:{session.id}"]
    assert ("stop", session.id) in disk.sandbox.calls
    assert session.id not in disk.sandbox.live
    # Its claim went to the normal retry path, in the same pass.
    m1 = inbound_row(paths, "m1")
    assert (m1.status, m1.tries) == ("pending", 1)
    # The agent is told, with a trigger: it wakes the one run allowed to delete.
    (note,) = notes(paths)
    assert note.trigger == 1 and note.status == "pending"
    assert "/session/agent" in note.content and "junk" in note.content
    assert "only for cleaning up" in note.content
    # The owner is told: a notice queued for delivery's notice pass.
    (notice,) = disk_notices(disk.central)
    assert (notice.agent_group_id, notice.count, notice.status) == (disk.group.id, 1, "pending")
    assert str(paths.agent_dir) in notice.text and "over its disk quota" in notice.text
    (block,) = disk.blocks()
    assert (block.state, block.cleanup_session_id) == (BLOCK_CLEANUP, session.id)
    assert block.notified_at_ms == T0 + 1_000

    # A message that arrives meanwhile waits (pending); the cleanup run is woken for the note
    # once the retry's backoff allows, and handles both.
    add_message(paths, "m2")
    woken = disk.sweep(T0 + 2_000)
    assert woken.woken == [session.id]
    beat(paths, T0 + 2_500)
    # The agent deletes; the next walk (one interval later) lifts the block.
    (paths.agent_dir / "junk" / "big.bin").unlink()
    assert disk.sweep(T0 + 5_000).disk_lifted == []
    lifted = disk.sweep(T0 + 1_000 + INTERVAL_MS)
    assert lifted.disk_lifted == [f"session:{session.id}"]
    assert disk.blocks() == [] and session.id in disk.sandbox.live
    assert inbound_row(paths, "m2").status == "pending"  # still there for the run: not lost
    assert [n.count for n in disk_notices(disk.central)] == [1]


def test_a_cleanup_run_that_grows_the_folder_is_stopped_and_held(disk: Disk) -> None:
    session, paths = disk.running_session()
    fill(paths.agent_dir / "a.bin", 5)
    report = disk.sweep(T0 + 1_000)  # over: stopped, and at once woken for its cleanup run
    assert report.disk_stopped == [session.id]
    assert report.woken == [session.id]
    assert disk.sandbox.calls == [("stop", session.id), ("wake", session.id)]
    beat(paths, T0 + 2_500)
    fill(paths.agent_dir / "b.bin", 20)  # the "cleanup" run writes more instead
    report = disk.sweep(T0 + 1_000 + INTERVAL_MS)
    assert report.disk_blocked == [f"session:{session.id}"]
    assert report.disk_stopped == [session.id]
    (block,) = disk.blocks()
    assert block.state == BLOCK_HELD and "grew" in block.reason
    held_note = [n for n in notes(paths) if n.id.endswith("-blocked")]
    assert len(held_note) == 1 and held_note[0].trigger == 0
    # The block, then the hold: two causes in the group's one pending notice (nobody sent
    # the first here), which now says the latest.
    (notice,) = disk_notices(disk.central)
    assert notice.count == 2 and "did not bring it under the quota" in notice.text

    # Now nothing wakes it: a new message waits, and the wake gate refuses it too.
    add_message(paths, "m3")
    later = T0 + 2 * INTERVAL_MS
    report = disk.sweep(later)
    assert report.woken == [] and report.disk_held == [session.id]
    gate = DiskQuotas(disk.settings, disk.layout, free_space=lambda _path: disk.free[-1])
    refusal = gate.refusal(disk.central, disk.refreshed(session), now=later)
    assert refusal is not None and refusal.startswith("disk quota: grew")
    assert disk.blocks()[0].refused_wakes == 1

    # The owner frees the space by hand: the next walk lifts the block and the same pass
    # wakes the session for the message that waited.
    for name in ("a.bin", "b.bin"):
        (paths.agent_dir / name).unlink()
    report = disk.sweep(later + INTERVAL_MS)
    assert report.disk_lifted == [f"session:{session.id}"]
    assert report.woken == [session.id]
    assert inbound_row(paths, "m3").status == "pending"


def test_a_cleanup_run_that_ends_still_over_holds_the_block(disk: Disk) -> None:
    session, paths = disk.running_session()
    fill(paths.agent_dir / "a.bin", 5)
    disk.sweep(T0 + 1_000)  # stopped, and woken for the cleanup run
    assert session.id in disk.sandbox.live
    disk.sandbox.live.pop(session.id)  # it ended without deleting anything
    add_message(paths, "m1")
    report = disk.sweep(T0 + 2_000)  # before the next walk: one cleanup run, not two
    assert report.woken == [] and report.disk_held == [session.id]
    report = disk.sweep(T0 + 1_000 + INTERVAL_MS)
    (block,) = disk.blocks()
    assert block.state == BLOCK_HELD and "after its cleanup run" in block.reason
    assert report.woken == []


def test_a_group_folder_over_quota_stops_every_session_of_the_group(disk: Disk) -> None:
    first, first_paths = disk.running_session()
    second, second_paths = disk.running_session()
    add_message(second_paths, "waiting")
    fill(disk.group_dir / "dataset" / "part1", 10)  # /workspace: quota 8 MiB

    report = disk.sweep(T0 + 1_000)
    assert sorted(report.disk_stopped) == sorted([first.id, second.id])
    assert report.disk_blocked == [f"group:{disk.group.id}"]
    (block,) = disk.blocks()
    assert block.cleanup_session_id == first.id  # one session may clean up
    (cleanup_note,) = notes(first_paths)
    assert cleanup_note.trigger == 1 and "/workspace" in cleanup_note.content
    assert "dataset" in cleanup_note.content
    (interrupted,) = notes(second_paths)
    assert interrupted.trigger == 0 and "over its disk quota" in interrupted.content

    # Only the cleanup session wakes (in the same pass); the other's message waits.
    assert report.woken == [first.id]
    report = disk.sweep(T0 + 2_000)
    assert report.woken == [] and report.disk_held == [second.id]
    beat(first_paths, T0 + 2_500)
    (disk.group_dir / "dataset" / "part1").unlink()
    report = disk.sweep(T0 + 1_000 + INTERVAL_MS)
    assert report.disk_lifted == [f"group:{disk.group.id}"]
    assert second.id in report.woken
    assert inbound_row(second_paths, "waiting").status == "pending"


def test_a_flood_of_empty_files_counts_as_over(disk: Disk) -> None:
    session, _ = disk.running_session()
    for number in range(250):  # entries quota 200, and not one byte of data
        (disk.group_dir / f"e{number}").touch()
    report = disk.sweep(T0 + 1_000)
    assert report.disk_stopped == [session.id]
    (block,) = disk.blocks()
    assert block.reason == "the group folder is over its disk quota: more than 200 entries"


def test_a_big_folder_is_measured_over_several_cheap_passes(make: DiskFactory) -> None:
    disk = make(disk_walk_entries_per_pass=10)
    session, _ = disk.running_session()
    for number in range(40):
        (disk.group_dir / "many" / f"f{number}").parent.mkdir(exist_ok=True)
        (disk.group_dir / "many" / f"f{number}").write_bytes(b"z")
    fill(disk.group_dir / "zz-big", 9)
    walked = []
    now = T0 + 1_000
    while not disk.blocks():
        report = disk.sweep(now)
        walked.append(report.disk_stopped)
        assert len(walked) < 20, "the walk never finished"
        now += 1_000
    # About 45 entries (agent/'s few included) at 10 per pass: no pass did it all, and the
    # verdict came only once the walk was complete.
    assert len(walked) >= 4
    assert walked[-1] == [session.id] and all(not stopped for stopped in walked[:-1])


def test_a_folder_is_walked_once_per_interval(disk: Disk) -> None:
    disk.running_session()
    first = disk.sweep(T0 + 1_000)
    assert first.disk_stopped == []
    walked_first = disk.sweeper.disk._walked.copy()
    assert len(walked_first) == 2  # the group folder and the session's agent/
    disk.sweep(T0 + 5_000)
    assert disk.sweeper.disk._walked == walked_first  # not walked again yet
    disk.sweep(T0 + 1_000 + INTERVAL_MS)
    assert all(m.at_ms == T0 + 1_000 + INTERVAL_MS for m in disk.sweeper.disk._walked.values())


def test_a_sharp_drop_in_free_space_walks_at_once(disk: Disk) -> None:
    session, paths = disk.running_session()
    disk.sweep(T0 + 1_000)  # measured: fine
    fill(paths.agent_dir / "sudden", 6)
    disk.free.append(disk.free[-1] - 6 * 1024 * MIB)  # the disk lost gigabytes in a second
    report = disk.sweep(T0 + 2_000)  # long before the interval
    assert report.disk_stopped == [session.id]


def test_below_the_free_space_floor_everything_stops_and_waits(disk: Disk) -> None:
    first, first_paths = disk.running_session()
    second, second_paths = disk.running_session()
    disk.free.append(50 * MIB)  # floor 100 MiB
    report = disk.sweep(T0 + 1_000)
    assert sorted(report.disk_stopped) == sorted([first.id, second.id])
    assert report.disk_blocked == ["floor:data"]
    for paths in (first_paths, second_paths):
        (note,) = notes(paths)
        assert note.trigger == 0 and "almost full" in note.content
    (notice,) = disk_notices(disk.central)
    assert notice.agent_group_id == "(all groups)" and "50.0 MiB free" in notice.text
    add_message(first_paths, "m1")
    assert disk.sweep(T0 + 2_000).disk_held == [first.id]
    disk.free.append(105 * MIB)  # above the floor, inside the 10 % margin: still held
    assert disk.sweep(T0 + 3_000).disk_held == [first.id]
    disk.free.append(200 * MIB)
    report = disk.sweep(T0 + 4_000)
    assert report.disk_lifted == ["floor:data"]
    assert report.woken == [first.id]


def test_a_run_that_slipped_past_the_gate_is_stopped(disk: Disk) -> None:
    """A wake that checked the gate just before the block was written: its run is newer
    than the block, but the block does not let it run."""
    cleanup, _ = disk.running_session()
    fill(disk.group_dir / "big", 10)
    disk.sweep(T0 + 1_000)
    assert cleanup.id in disk.sandbox.live  # its cleanup run
    late, _ = disk.running_session(at=T0 + 1_500)
    report = disk.sweep(T0 + 2_000)
    assert report.disk_stopped == [late.id]
    assert cleanup.id in disk.sandbox.live


def test_a_block_written_before_a_crash_is_told_about_after_it(disk: Disk) -> None:
    session, paths = disk.running_session()
    fill(paths.agent_dir / "a.bin", 5)
    disk.ledger.add_block(
        DiskBlock(
            scope="session",
            scope_id=session.id,
            agent_group_id=disk.group.id,
            state=BLOCK_CLEANUP,
            cleanup_session_id=session.id,
            bytes=5 * MIB,
            entries=3,
            limit_bytes=4 * MIB,
            limit_entries=100,
            reason="5.0 MiB in 3 entries",
            blocked_at_ms=T0 + 500,
        )
    )
    disk.sweep(T0 + 1_000)  # the sweeper restarted: block on disk, nobody told yet
    assert len(notes(paths)) == 1 and [n.count for n in disk_notices(disk.central)] == [1]
    disk.sweep(T0 + 2_000)
    assert len(notes(paths)) == 1 and [n.count for n in disk_notices(disk.central)] == [1]


def test_blocks_of_deleted_sessions_and_groups_go(disk: Disk) -> None:
    session, paths = disk.running_session()
    fill(paths.agent_dir / "a.bin", 5)
    disk.sweep(T0 + 1_000)
    assert disk.blocks()
    close_session(disk.central, session.id)
    disk.sweep(T0 + 2_000)
    assert disk.blocks() == []


def test_the_gate_refuses_by_block_and_by_floor(disk: Disk) -> None:
    session, _ = disk.running_session()
    other, _ = disk.running_session()
    gate = DiskQuotas(disk.settings, disk.layout, free_space=lambda _path: disk.free[-1])
    assert gate.refusal(disk.central, session, now=T0) is None
    disk.ledger.add_block(
        DiskBlock(
            scope="group",
            scope_id=disk.group.id,
            agent_group_id=disk.group.id,
            state=BLOCK_CLEANUP,
            cleanup_session_id=session.id,
            cleanup_after_run=session.run_id,  # the run that was going when it was blocked
            bytes=9 * MIB,
            entries=3,
            limit_bytes=8 * MIB,
            limit_entries=200,
            reason="9.0 MiB in 3 entries",
            blocked_at_ms=T0,
        )
    )
    assert gate.refusal(disk.central, session, now=T0) is None  # its cleanup run
    assert gate.refusal(disk.central, other, now=T0) == "disk quota: 9.0 MiB in 3 entries"
    disk.sandbox.start(session)  # the cleanup run: a new run id
    cleaned = disk.refreshed(session)
    assert gate.refusal(disk.central, cleaned, now=T0) == "disk quota: 9.0 MiB in 3 entries"
    disk.ledger.lift("group", disk.group.id)
    assert gate.refusal(disk.central, cleaned, now=T0) is None
    disk.free.append(10 * MIB)
    refusal = gate.refusal(disk.central, cleaned, now=T0)
    assert refusal is not None and "less than disk_min_free_mb" in refusal


def test_what_is_remembered_is_only_what_is_watched(disk: Disk) -> None:
    """A sweeper that runs for months sees thousands of sessions come and go: it keeps
    measurements only of folders it still watches (running, or blocked)."""
    session, _ = disk.running_session()
    disk.sweep(T0 + 1_000)
    assert len(disk.sweeper.disk._walked) == 2
    disk.sandbox.stop(session.id)
    disk.sweep(T0 + 2_000)
    watch = disk.sweeper.disk
    assert (watch._walked, watch._walk_ended, watch._largest, watch._walking) == ({}, {}, {}, {})
