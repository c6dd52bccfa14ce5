"""Disk-quota decisions: pure functions from what the sweeper knows about one folder (or the
data folder's free space) to what it should do. No clock, no I/O; tests pass ``now``.

Why each rule exists (docs/security.md "Disk quotas"):
- Over quota (or a walk that had to stop early: too many entries, nested too deep) → stop the
  folder's running containers and block its wakes. Their claims are settled like any dead
  run's (retried later), and messages that arrive meanwhile wait, pending: nothing is lost.
- A stopped agent cannot delete its own files, so a block starts in ``cleanup``: one session
  (the one that was running) may run once more, woken by the note that tells it what to
  delete. That run may not grow the folder past its usage at the block plus the grace; if it
  does, or if it ends with the folder still over, the block is held (``blocked``): only the
  owner can help then (delete files by hand, raise the quota, or ``nanoclaw disk cleanup``).
- A block is lifted by a measurement that finds the folder under its quota: whoever freed the
  space, the held messages are then woken as usual.
- A measurement is due every ``interval`` for each watched folder, and at once when the data
  folder's free space fell sharply since the last pass (``fallocate`` fills a disk in a
  moment, and the walk should not wait out its interval then).
- Free space below the floor → stop every container and refuse every wake until it is back
  above the floor with some margin (so a disk near the line does not start and stop agents
  every second): central.db and the logs must keep room to write.
"""

from __future__ import annotations

import enum
from typing import Final

import msgspec

from nanoclaw_common.disk.limits import Limit
from nanoclaw_common.store.disk import BLOCK_CLEANUP, DiskBlock

SHARP_DROP_BYTES: Final = 64 * 1024 * 1024  # free space lost in one pass that calls for a look
FLOOR_MARGIN_PERCENT: Final = 110  # a floor block is lifted at 110 % of the floor


class Measured(msgspec.Struct, frozen=True):
    """A folder's latest finished measurement (a walk's, the kernel's, or both combined)."""

    bytes: int
    entries: int
    complete: bool = True  # False: the walk stopped early; the numbers are a lower bound
    at_ms: int = 0
    stopped_because: str | None = None

    def combined(self, kernel: Measured | None) -> Measured:
        """This walk's measurement with the kernel's count, the larger part by part: the
        kernel's count misses files whose project id was changed, a walk misses what moved
        behind it. The walk's time stays the measurement's time: a block is judged again
        (lifted, held) only on a walk that started after it."""
        if kernel is None:
            return self
        return Measured(
            bytes=max(self.bytes, kernel.bytes),
            entries=max(self.entries, kernel.entries),
            complete=self.complete,
            at_ms=self.at_ms,
            stopped_because=self.stopped_because,
        )


class FolderState(msgspec.Struct, frozen=True, kw_only=True):
    """What the sweeper knows about one folder in one pass."""

    limit: Limit
    measured: Measured | None  # None: never measured yet
    block: DiskBlock | None
    cleanup_running: bool = False  # the block's cleanup session runs a run started after it
    cleanup_ran: bool = False  # ...or ran one that has ended


class Verdict(enum.StrEnum):
    OK = "ok"  # under quota (or not measured yet), not blocked
    OVER = "over"  # stop its containers, block it, tell the agent and the owner
    LIFT = "lift"  # blocked, and now under quota: lift the block
    HOLD = "hold"  # the cleanup run grew the folder or ended over quota: block fully
    KEEP = "keep"  # blocked and still over (or not measured since): nothing new


def over_quota(measured: Measured, limit: Limit) -> bool:
    return not measured.complete or limit.over(measured.bytes, measured.entries)


def cleanup_ceiling(block: DiskBlock, limit: Limit) -> Limit:
    """What a cleanup run may grow the folder to: its usage at the block (at least the
    quota) plus the grace."""
    grace = limit.plus_grace()
    return Limit(
        max(block.bytes, limit.bytes) + (grace.bytes - limit.bytes) if limit.bytes else 0,
        max(block.entries, limit.entries) + (grace.entries - limit.entries) if limit.entries else 0,
    )


def judge_folder(state: FolderState) -> Verdict:
    measured, block = state.measured, state.block
    if block is None:
        if measured is None or not over_quota(measured, state.limit):
            return Verdict.OK
        return Verdict.OVER
    if measured is None or measured.at_ms <= block.blocked_at_ms:
        # Nothing measured since the block (the walk that found it over, or one before a
        # cleanup grant, says nothing about what the cleanup did).
        return Verdict.KEEP
    if not over_quota(measured, state.limit):
        return Verdict.LIFT
    if block.state == BLOCK_CLEANUP:
        if state.cleanup_ran and not state.cleanup_running:
            return Verdict.HOLD
        if cleanup_ceiling(block, state.limit).over(measured.bytes, measured.entries):
            return Verdict.HOLD
    return Verdict.KEEP


def measurement_due(last_at_ms: int | None, *, interval_ms: int, now: int, urgent: bool) -> bool:
    """Whether a folder should be walked again now."""
    return urgent or last_at_ms is None or now - last_at_ms >= interval_ms


def sharp_drop(previous_free: int | None, free: int | None) -> bool:
    """Free space fell by ``SHARP_DROP_BYTES`` or more since the last pass."""
    if previous_free is None or free is None:
        return False
    return previous_free - free >= SHARP_DROP_BYTES


class FloorVerdict(enum.StrEnum):
    OK = "ok"
    LOW = "low"  # just fell below the floor: stop every container, refuse wakes, tell
    STILL_LOW = "still-low"
    RECOVERED = "recovered"  # back above the floor (with the margin): lift


def judge_floor(free: int | None, floor_bytes: int, *, blocked: bool) -> FloorVerdict:
    if not floor_bytes or free is None:
        # No floor, or statvfs failed: never hold everything back on a guess.
        return FloorVerdict.RECOVERED if blocked else FloorVerdict.OK
    if blocked:
        recovered = free * 100 > floor_bytes * FLOOR_MARGIN_PERCENT
        return FloorVerdict.RECOVERED if recovered else FloorVerdict.STILL_LOW
    return FloorVerdict.LOW if free < floor_bytes else FloorVerdict.OK
