"""Disk quotas against real Podman, on this machine's filesystem (no project quotas: the
sweeper's walk): a container fills ``/workspace`` (``fallocate``) or its ``agent/`` folder
(``dd``) as the agent user, and the real sweeper, passing about every 200 ms, stops it within
the bound, tells the agent and the owner, lets exactly one cleanup run start, refuses the
group's other sessions, and lifts the block once the agent deleted what it wrote."""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
import pytest

from nanoclaw_common.clock import now_ms
from nanoclaw_common.disk import OWNER_NOTICE_KIND
from nanoclaw_common.paths import Layout
from nanoclaw_common.sandbox import Sandbox
from nanoclaw_common.sessions import refresh_projections
from nanoclaw_common.settings import Settings
from nanoclaw_common.store import CentralStore, InboundReader, rows
from nanoclaw_common.store.disk import BLOCK_CLEANUP, DiskLedger
from nanoclaw_common.store.owner_notices import OwnerNotices
from nanoclaw_sweeper.sweeper import PassReport, Sweeper
from tests.sandbox.conftest import SandboxFactory, SessionFactory
from tests.waiting import wait_until

pytestmark = pytest.mark.podman

INTERVAL_S = 1.0
PASS_S = 0.2
# From the fill to the stop: one interval until the folder's next walk, a pass or two for the
# walk and the stop (TERM, exit), and slack for a machine shared by many.
STOP_BOUND_S = INTERVAL_S + 6.0


@pytest.fixture
def quota_settings(box_settings: Settings) -> Settings:
    return msgspec.structs.replace(
        box_settings,
        group_disk_quota_mb=64,
        session_disk_quota_mb=32,
        disk_check_interval_s=INTERVAL_S,
        disk_quota_mechanism="walk",
        spawn_grace_s=600.0,  # the containers only sleep and never beat: not liveness' test
    ).validate()


def sweep_until(
    sweeper: Sweeper, done: Callable[[PassReport], object], timeout_s: float, what: str
) -> tuple[PassReport, float]:
    """Sweep every PASS_S, as the service does (faster, to time the stop), until
    ``done(report)``; returns that report and the seconds it took."""
    started = time.monotonic()

    def swept() -> PassReport | None:
        report = sweeper.sweep(now_ms())
        return report if done(report) else None

    report = wait_until(swept, timeout_s=timeout_s, what=what, poll_s=PASS_S)
    return report, time.monotonic() - started


def disk_notes(layout: Layout, session: rows.Session) -> list[rows.InboundRow]:
    reader = InboundReader(layout.session(session.agent_group_id, session.id).inbound_db)
    try:
        return [row for row in reader.list_messages() if row.id.startswith("disk-")]
    finally:
        reader.close()


def running_ids(box: Sandbox) -> set[str]:
    return {info.session_id for info in box.running()}


def test_a_container_filling_the_workspace_is_stopped_told_and_cleans_up(
    make_sandbox: SandboxFactory,
    make_session: SessionFactory,
    central: CentralStore,
    layout: Layout,
    quota_settings: Settings,
) -> None:
    box = make_sandbox(settings=quota_settings)
    sweeper = Sweeper(quota_settings, central, box)
    session = make_session()
    assert box.wake(session)
    sweeper.sweep(now_ms())  # measured once: under quota
    assert session.id in running_ids(box)

    code, _, err = box.exec_in(session.id, ["fallocate", "-l", "200M", "/workspace/big"])
    assert code == 0, err  # nothing stops the write itself: the walk mechanism is after it
    report, took = sweep_until(
        sweeper, lambda r: r.disk_stopped, STOP_BOUND_S, "stop after filling /workspace"
    )
    assert report.disk_stopped == [session.id]
    assert report.disk_blocked == [f"group:{session.agent_group_id}"]
    assert took <= STOP_BOUND_S
    # Told: the agent (a trigger note naming the folder and the file), the owner (a notice).
    (note,) = disk_notes(layout, session)
    assert note.trigger == 1 and "/workspace" in note.content and "big" in note.content
    (notice,) = [n for n in OwnerNotices(central).list() if n.kind == OWNER_NOTICE_KIND]
    assert "over its disk quota" in notice.text
    (block,) = DiskLedger(central).list_blocks()
    assert (block.state, block.cleanup_session_id) == (BLOCK_CLEANUP, session.id)

    # The cleanup run: the same pass woke a fresh container for the note.
    assert report.woken == [session.id]
    fresh = central.get_session(session.id)
    assert fresh is not None and (fresh.run_started_at_ms or 0) >= block.blocked_at_ms
    # Another session of the group is refused while the block lasts; its message waits.
    other = central.create_session(session.agent_group_id, session.messaging_group_id)
    refresh_projections(central, layout, other)
    assert not box.wake(other)
    assert other.id not in running_ids(box)
    assert DiskLedger(central).list_blocks()[0].refused_wakes == 1

    # The agent deletes its file: the next walk lifts the block.
    code, _, err = box.exec_in(session.id, ["rm", "/workspace/big"])
    assert code == 0, err
    report, _ = sweep_until(
        sweeper, lambda r: r.disk_lifted, INTERVAL_S + 6.0, "lift after the cleanup"
    )
    assert report.disk_lifted == [f"group:{session.agent_group_id}"]
    assert DiskLedger(central).list_blocks() == []
    assert session.id in running_ids(box)  # the cleanup run simply goes on
    assert box.wake(other)


def test_a_container_filling_its_agent_folder_is_stopped(
    make_sandbox: SandboxFactory,
    make_session: SessionFactory,
    central: CentralStore,
    layout: Layout,
    quota_settings: Settings,
) -> None:
    box = make_sandbox(settings=quota_settings)
    sweeper = Sweeper(quota_settings, central, box)
    session = make_session()
    assert box.wake(session)
    sweeper.sweep(now_ms())
    code, _, err = box.exec_in(
        session.id,
        ["dd", "if=/dev/zero", "of=/session/agent/fill", "bs=1M", "count=48", "status=none"],
    )
    assert code == 0, err
    report, took = sweep_until(
        sweeper, lambda r: r.disk_stopped, STOP_BOUND_S, "stop after filling agent/"
    )
    assert report.disk_blocked == [f"session:{session.id}"]
    assert took <= STOP_BOUND_S
    (note,) = disk_notes(layout, session)
    assert "/session/agent" in note.content and "fill" in note.content
