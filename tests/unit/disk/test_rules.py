"""The disk-quota decisions, pure and driven by ``now``: limits and their grace, when a folder
is over, blocked, held or lifted, when a walk is due, and the free-space floor."""

from __future__ import annotations

import msgspec
import pytest

from nanoclaw_common.disk.limits import MIB, Limit, group_limit, human_bytes, session_limit
from nanoclaw_common.settings import Settings
from nanoclaw_common.store.disk import BLOCK_CLEANUP, BLOCK_HELD, DiskBlock
from nanoclaw_common.store.rows import ContainerConfig
from nanoclaw_sweeper.disk_rules import (
    SHARP_DROP_BYTES,
    FloorVerdict,
    FolderState,
    Measured,
    Verdict,
    cleanup_ceiling,
    judge_floor,
    judge_folder,
    measurement_due,
    sharp_drop,
)

T0 = 1_800_000_000_000
LIMIT = Limit(100 * MIB, 1_000)


def block(**changes: object) -> DiskBlock:
    base = DiskBlock(
        scope="group",
        scope_id="ag-1",
        agent_group_id="ag-1",
        state=BLOCK_CLEANUP,
        cleanup_session_id="sess-1",
        bytes=120 * MIB,
        entries=10,
        limit_bytes=LIMIT.bytes,
        limit_entries=LIMIT.entries,
        reason="120 MiB in 10 entries",
        blocked_at_ms=T0,
    )
    return msgspec.structs.replace(base, **changes)


def state(measured: Measured | None, blocked: DiskBlock | None = None, **changes: bool) -> Verdict:
    return judge_folder(FolderState(limit=LIMIT, measured=measured, block=blocked, **changes))


def test_limits_come_from_the_settings_and_the_groups_override() -> None:
    settings = Settings(group_disk_quota_mb=10, session_disk_quota_mb=3)
    assert group_limit(settings, None) == Limit(10 * MIB, settings.group_disk_quota_entries)
    assert session_limit(settings, None) == Limit(3 * MIB, settings.session_disk_quota_entries)
    config = ContainerConfig(
        agent_group_id="ag-1",
        provider=None,
        model=None,
        effort=None,
        image_tag=None,
        assistant_name=None,
        max_messages_per_prompt=None,
        skills='"all"',
        mcp_servers="{}",
        packages_apt="[]",
        packages_pip="[]",
        additional_mounts="[]",
        cli_scope="group",
        token_budget_daily=None,
        updated_at_ms=T0,
        group_disk_quota_mb=0,  # 0: no limit on bytes for this group
        session_disk_quota_mb=7,
    )
    assert group_limit(settings, config).bytes == 0
    assert session_limit(settings, config).bytes == 7 * MIB


def test_over_means_strictly_more_and_zero_means_no_limit() -> None:
    assert not LIMIT.over(100 * MIB, 1_000)
    assert LIMIT.over(100 * MIB + 1, 0)
    assert LIMIT.over(0, 1_001)
    assert not Limit(0, 0).over(10**15, 10**9)
    assert Limit(0, 0).unlimited and not LIMIT.unlimited


def test_grace_is_five_percent_with_a_floor() -> None:
    assert Limit(1024 * MIB, 200_000).plus_grace() == Limit(
        1024 * MIB + 51 * MIB + 209_715, 210_000
    )
    assert Limit(10 * MIB, 100).plus_grace() == Limit(26 * MIB, 600)  # at least 16 MiB / 500
    assert Limit(0, 0).plus_grace() == Limit(0, 0)


def test_a_folder_over_its_quota_is_blocked() -> None:
    assert state(None) is Verdict.OK  # never measured
    assert state(Measured(100 * MIB, 1_000, at_ms=T0)) is Verdict.OK
    assert state(Measured(100 * MIB + 1, 1, at_ms=T0)) is Verdict.OVER
    assert state(Measured(1, 1_001, at_ms=T0)) is Verdict.OVER


def test_a_walk_that_stopped_early_counts_as_over() -> None:
    """Too many entries or too deep: the walk's numbers are a lower bound, never a pass."""
    partial = Measured(1, 5, complete=False, at_ms=T0, stopped_because="more than 1000 entries")
    assert state(partial) is Verdict.OVER
    assert state(partial, block(state=BLOCK_HELD)) is Verdict.KEEP


def test_a_block_is_judged_again_only_on_a_walk_that_started_after_it() -> None:
    under_before = Measured(1, 1, at_ms=T0 - 1)
    assert state(under_before, block()) is Verdict.KEEP
    assert state(Measured(1, 1, at_ms=T0), block()) is Verdict.KEEP  # the walk that blocked it
    assert state(Measured(1, 1, at_ms=T0 + 1), block()) is Verdict.LIFT
    assert state(None, block()) is Verdict.KEEP


def test_under_quota_lifts_a_block_whoever_freed_the_space() -> None:
    for blocked in (block(), block(state=BLOCK_HELD)):
        assert state(Measured(100 * MIB, 1_000, at_ms=T0 + 1), blocked) is Verdict.LIFT


def test_a_cleanup_run_may_not_grow_the_folder() -> None:
    blocked = block()  # 120 MiB at the block; the grace is 16 MiB (5 % of 100 MiB is less)
    assert cleanup_ceiling(blocked, LIMIT) == Limit(136 * MIB, 1_500)
    running = {"cleanup_running": True, "cleanup_ran": True}
    assert state(Measured(136 * MIB, 10, at_ms=T0 + 1), blocked, **running) is Verdict.KEEP
    assert state(Measured(136 * MIB + 1, 10, at_ms=T0 + 1), blocked, **running) is Verdict.HOLD
    # Not started yet: still judged by the ceiling (another session may be writing).
    assert state(Measured(137 * MIB, 10, at_ms=T0 + 1), blocked) is Verdict.HOLD
    # A held block stays held however it grows; only getting under lifts it.
    held = block(state=BLOCK_HELD)
    assert state(Measured(500 * MIB, 10, at_ms=T0 + 1), held, **running) is Verdict.KEEP


def test_a_cleanup_run_that_ended_over_quota_holds_the_block() -> None:
    over = Measured(110 * MIB, 10, at_ms=T0 + 5)
    assert state(over, block(), cleanup_running=True, cleanup_ran=True) is Verdict.KEEP
    assert state(over, block(), cleanup_running=False, cleanup_ran=True) is Verdict.HOLD
    assert state(over, block(), cleanup_running=False, cleanup_ran=False) is Verdict.KEEP


def test_a_ceiling_below_the_quota_is_never_used() -> None:
    """A folder blocked for its entries has bytes under the quota: its cleanup run may still
    use the bytes quota (plus grace), not only what it held."""
    by_entries = block(bytes=1 * MIB, entries=1_200)
    assert cleanup_ceiling(by_entries, LIMIT) == Limit(116 * MIB, 1_700)


def test_walks_are_due_every_interval_or_at_once_when_urgent() -> None:
    assert measurement_due(None, interval_ms=10_000, now=T0, urgent=False)
    assert not measurement_due(T0, interval_ms=10_000, now=T0 + 9_999, urgent=False)
    assert measurement_due(T0, interval_ms=10_000, now=T0 + 10_000, urgent=False)
    assert measurement_due(T0, interval_ms=10_000, now=T0 + 1, urgent=True)


def test_a_sharp_drop_in_free_space_is_urgent() -> None:
    gib = 1024 * MIB
    assert sharp_drop(10 * gib, 10 * gib - SHARP_DROP_BYTES)
    assert not sharp_drop(10 * gib, 10 * gib - SHARP_DROP_BYTES + 1)
    assert not sharp_drop(None, gib) and not sharp_drop(gib, None)
    assert not sharp_drop(gib, 2 * gib)  # space freed


@pytest.mark.parametrize(
    ("free", "blocked", "verdict"),
    [
        (600 * MIB, False, FloorVerdict.OK),
        (500 * MIB, False, FloorVerdict.LOW),
        (520 * MIB, True, FloorVerdict.STILL_LOW),  # above the floor, inside the margin
        (512 * MIB * 11 // 10, True, FloorVerdict.STILL_LOW),
        (512 * MIB * 11 // 10 + 1, True, FloorVerdict.RECOVERED),
        (None, True, FloorVerdict.RECOVERED),  # statvfs failed: never hold on a guess
        (None, False, FloorVerdict.OK),
    ],
)
def test_the_free_space_floor(free: int | None, blocked: bool, verdict: FloorVerdict) -> None:
    assert judge_floor(free, 512 * MIB, blocked=blocked) is verdict


def test_no_floor_lifts_an_old_floor_block() -> None:
    assert judge_floor(0, 0, blocked=True) is FloorVerdict.RECOVERED
    assert judge_floor(0, 0, blocked=False) is FloorVerdict.OK


def test_measurements_combine_part_by_part_and_keep_the_walks_time() -> None:
    walk = Measured(10, 500, at_ms=T0)
    kernel = Measured(900, 20, at_ms=T0 + 9)
    assert walk.combined(kernel) == Measured(900, 500, at_ms=T0)
    assert walk.combined(None) == walk


def test_human_bytes() -> None:
    assert human_bytes(900) == "900 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(312 * MIB) == "312 MiB"
    assert human_bytes(2 * 1024 * MIB + 512 * MIB) == "2.5 GiB"
