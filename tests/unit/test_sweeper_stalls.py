"""No single session's files can stall the sweeper's pass (issue 8 §1): a real FIFO planted
as ``outbound.db-journal`` or as ``heartbeat``, or a lock held on ``outbound.db``, costs that
session alone, and the pass still wakes everyone else, within a bound. A session whose files
were refused (or stalled a read) is quarantined once: never read again, its container
stopped."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import apsw
import msgspec
import pytest

from nanoclaw_common.store.quarantine import Quarantine
from nanoclaw_common.store.session_vfs import LAYERS
from nanoclaw_sweeper.sweeper import PassReport, Sweeper
from tests.sweeper_world import T0, World, add_message, beat, world
from tests.waiting import wait_until

__all__ = ["world"]  # the fixture, from tests/sweeper_world.py

PASS_BOUND_S = 5.0  # a pass over two sessions, one of them attacked


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    from loguru import logger

    lines: list[str] = []
    handler = logger.add(lambda message: lines.append(str(message)), format="{message}")
    yield lines
    logger.remove(handler)


def timed_sweep(sweeper: Sweeper, now: int) -> PassReport:
    started = time.monotonic()
    report = sweeper.sweep(now)
    assert time.monotonic() - started < PASS_BOUND_S
    return report


def test_a_fifo_journal_is_quarantined_and_the_pass_serves_the_others(
    world: World, log_lines: list[str]
) -> None:
    attacked, attacked_paths = world.session()
    other, other_paths = world.session()
    add_message(attacked_paths, "a1")
    add_message(other_paths, "o1")
    world.sandbox.start(attacked)  # running: examined every pass
    os.mkfifo(f"{attacked_paths.outbound_db}-journal")
    report = timed_sweep(world.sweeper, T0 + 1_000)
    assert report.woken == [other.id]
    assert report.quarantined == [attacked.id]
    assert ("stop", attacked.id) in world.sandbox.calls  # a hostile agent does not run on
    (entry,) = Quarantine(world.central).list()
    assert (entry.session_id, entry.program) == (attacked.id, "sweeper")
    assert "outbound.db-journal is a FIFO" in entry.reason
    # Later passes never read it again (and say nothing more about it).
    add_message(other_paths, "o2")
    report = timed_sweep(world.sweeper, T0 + 2_000)
    assert report.quarantined == [] and attacked.id not in report.woken
    assert sum("SESSION QUARANTINED" in line for line in log_lines) == 1


def test_a_fifo_heartbeat_counts_as_no_heartbeat(world: World) -> None:
    attacked, attacked_paths = world.session()
    other, other_paths = world.session()
    world.sandbox.start(attacked)
    os.mkfifo(attacked_paths.heartbeat)
    add_message(other_paths, "o1")
    report = timed_sweep(world.sweeper, T0 + 1_000)
    assert report.woken == [other.id] and report.killed == []  # within the spawn grace
    grace = int(world.settings.spawn_grace_s * 1000)
    report = timed_sweep(world.sweeper, T0 + grace + 1)
    assert attacked.id in report.killed  # never a heartbeat: the run is stopped


def test_a_held_lock_costs_one_session_this_pass(world: World, log_lines: list[str]) -> None:
    attacked, attacked_paths = world.session()
    other, other_paths = world.session()
    world.sandbox.start(attacked)
    beat(attacked_paths, T0 + 500)
    add_message(other_paths, "o1")
    holder = apsw.Connection(str(attacked_paths.outbound_db))
    holder.execute("BEGIN EXCLUSIVE")
    try:
        report = timed_sweep(world.sweeper, T0 + 1_000)
        assert report.woken == [other.id]
        timed_sweep(world.sweeper, T0 + 2_000)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert Quarantine(world.central).ids() == set()  # busy is not hostile by itself
    assert sum("session skipped this pass" in line for line in log_lines) == 1
    assert timed_sweep(world.sweeper, T0 + 3_000).killed == []  # read fine again


def test_the_stall_backstop_cuts_off_a_read_that_blocks(world: World) -> None:
    """SQLite's own VFS (the old code): its hot-journal open really blocks on the FIFO. The
    read is cut off after the limit, the session quarantined, the stuck thread freed, and
    the same pass goes on to wake the other session."""
    sweeper = Sweeper(
        msgspec.structs.replace(world.settings, session_io_limit_s=0.5),
        world.central,
        world.sandbox,
    )
    attacked, attacked_paths = world.session()
    other, other_paths = world.session()
    add_message(attacked_paths, "a1")
    add_message(other_paths, "o1")
    os.mkfifo(f"{attacked_paths.outbound_db}-journal")
    LAYERS.vfs = False
    try:
        report = timed_sweep(sweeper, T0 + 1_000)
    finally:
        LAYERS.vfs = True
    assert report.quarantined == [attacked.id] and report.woken == [other.id]
    assert "took longer than" in Quarantine(world.central).list()[0].reason
    # Released: the FIFO's reader got end-of-file.
    wait_until(
        lambda: sweeper.session_io.in_flight == 0,
        timeout_s=PASS_BOUND_S,
        what="no session read in flight",
    )


def test_a_quarantined_session_is_never_examined_until_released(world: World) -> None:
    session, paths = world.session()
    add_message(paths, "m1")
    world.sandbox.start(session)
    assert Quarantine(world.central).add(session.id, program="delivery", reason="test")
    report = timed_sweep(world.sweeper, T0 + 1_000)
    assert report.examined == 0 and ("stop", session.id) in world.sandbox.calls
    world.sandbox.live.pop(session.id, None)
    assert timed_sweep(world.sweeper, T0 + 2_000).woken == []
    Quarantine(world.central).release(session.id)
    assert timed_sweep(world.sweeper, T0 + 3_000).woken == [session.id]
