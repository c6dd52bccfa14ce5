"""The sweeper's loop (``nanoclaw_sweeper.loop``) pass by pass: the deadline after a pass,
the capped backoff after a failed one, the stop. The clock and the sleep are the test's;
nothing here sleeps."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import apsw
import pytest
from loguru import logger

from nanoclaw_common.diskfull import FullDiskLog
from nanoclaw_sweeper.loop import (
    FULL_DISK_BACKOFF_S,
    MAX_ERROR_BACKOFF_S,
    PASS_INTERVAL_S,
    SweepLoop,
)
from nanoclaw_sweeper.sweeper import PassReport


@dataclass
class Clock:
    now_s: float = 1000.0

    def __call__(self) -> float:
        return self.now_s


@dataclass
class ScriptedSweeper:
    """Each pass takes ``duration_s`` of the clock and then returns or raises the next
    scripted outcome (an empty report once the script is done)."""

    clock: Clock
    outcomes: list[PassReport | BaseException] = field(default_factory=list)
    duration_s: float = 0.0
    seen: list[int] = field(default_factory=list)

    def sweep(self, now: int) -> PassReport:
        self.seen.append(now)
        self.clock.now_s += self.duration_s
        outcome = self.outcomes.pop(0) if self.outcomes else PassReport()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


@dataclass
class Stop:
    """``GracefulStop`` with the test's sleep: each wait moves the clock; the stop comes
    during wait number ``stop_at_wait`` (1-based)."""

    clock: Clock
    stop_at_wait: int
    waits: list[float] = field(default_factory=list)
    stopping: bool = False

    def wait(self, timeout_s: float) -> bool:
        self.waits.append(timeout_s)
        self.clock.now_s += timeout_s
        if len(self.waits) >= self.stop_at_wait:
            self.stopping = True
        return self.stopping


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def lines() -> Iterator[list[str]]:
    found: list[str] = []
    sink = logger.add(lambda message: found.append(str(message)), format="{message}")
    yield found
    logger.remove(sink)


def test_a_pass_waits_out_the_rest_of_the_interval(clock: Clock) -> None:
    sweeper = ScriptedSweeper(clock, duration_s=0.25)
    loop = SweepLoop(sweeper, monotonic_s=clock)
    assert loop.step(now=5_000) == pytest.approx(PASS_INTERVAL_S - 0.25)
    assert sweeper.seen == [5_000]
    assert (loop.passes, loop.errors) == (1, 0)


def test_a_pass_longer_than_the_interval_is_followed_at_once_without_replay(
    clock: Clock,
) -> None:
    sweeper = ScriptedSweeper(clock, duration_s=3.5 * PASS_INTERVAL_S)
    loop = SweepLoop(sweeper, monotonic_s=clock)
    assert loop.step(now=1) == 0.0
    sweeper.duration_s = 0.0
    assert loop.step(now=2) == PASS_INTERVAL_S  # the three missed periods are not run
    assert loop.passes == 2


def test_failed_passes_back_off_doubling_to_the_cap_and_reset_after_a_good_pass(
    clock: Clock, lines: list[str]
) -> None:
    failures: list[PassReport | BaseException] = [OSError("podman restarting")] * 7
    sweeper = ScriptedSweeper(clock, [*failures, PassReport(), OSError("again")])
    loop = SweepLoop(sweeper, monotonic_s=clock)
    waits = [loop.step(now=n) for n in range(9)]
    backoff = [1.0, 2.0, 4.0, 8.0, 16.0, MAX_ERROR_BACKOFF_S, MAX_ERROR_BACKOFF_S]
    # After the good pass, the interval; the next failure starts over from the interval.
    assert waits == [*backoff, PASS_INTERVAL_S, PASS_INTERVAL_S]
    assert (loop.passes, loop.errors) == (1, 8)
    assert sum("sweep failed: OSError('podman restarting')" in line for line in lines) == 7


def test_an_error_that_is_not_an_exception_is_not_swallowed(clock: Clock) -> None:
    """KeyboardInterrupt, SystemExit: the process is ending; the loop does not retry."""
    sweeper = ScriptedSweeper(clock, [KeyboardInterrupt()])
    with pytest.raises(KeyboardInterrupt):
        SweepLoop(sweeper, monotonic_s=clock).step(now=1)


def test_run_sweeps_until_the_stop_then_returns(clock: Clock) -> None:
    sweeper = ScriptedSweeper(clock, [PassReport(), RuntimeError("locked"), PassReport()])
    sweeper.duration_s = 0.5
    touched: list[float] = []
    loop = SweepLoop(
        sweeper,
        touch=lambda: touched.append(clock.now_s),
        monotonic_s=clock,
        wall_ms=lambda: int(clock.now_s * 1000),
    )
    stop = Stop(clock, stop_at_wait=3)
    loop.run(stop)
    assert stop.waits == [0.5, 1.0, 0.5]
    # Each pass gets the wall clock of its start; the proof is touched before each.
    assert sweeper.seen == [1_000_000, 1_001_000, 1_002_500]
    assert touched == [1000.0, 1001.0, 1002.5]
    assert (loop.passes, loop.errors) == (2, 1)


def test_run_does_not_start_a_pass_once_stopping(clock: Clock) -> None:
    sweeper = ScriptedSweeper(clock)
    stop = Stop(clock, stop_at_wait=1, stopping=True)
    SweepLoop(sweeper, monotonic_s=clock).run(stop)
    assert sweeper.seen == [] and stop.waits == []


def test_only_a_pass_that_changed_something_is_logged(clock: Clock, lines: list[str]) -> None:
    sweeper = ScriptedSweeper(clock, [PassReport(sessions=4, examined=2), PassReport(woken=["s1"])])
    loop = SweepLoop(sweeper, monotonic_s=clock)
    loop.step(now=1)
    assert not any(line.startswith("pass:") for line in lines)
    loop.step(now=2)
    (logged,) = (line for line in lines if line.startswith("pass:"))
    assert '"woken":["s1"]' in logged


def test_a_full_disk_is_one_condition_with_a_short_backoff(clock: Clock, lines: list[str]) -> None:
    """Passes refused by a full disk: one warning (no traceback per pass), waits capped at
    ``FULL_DISK_BACKOFF_S`` so the sweeper resumes soon after there is room, and one line
    when a pass goes through again."""
    full = apsw.FullError("database or disk is full")
    sweeper = ScriptedSweeper(clock, outcomes=[full] * 6)
    disk = FullDiskLog(log=logger, clock=clock)
    loop = SweepLoop(sweeper, monotonic_s=clock, full_disk=disk)
    waits = [loop.step(now=5_000) for _ in range(6)]
    assert waits == [1.0, 2.0, 4.0, FULL_DISK_BACKOFF_S, FULL_DISK_BACKOFF_S, FULL_DISK_BACKOFF_S]
    assert FULL_DISK_BACKOFF_S < MAX_ERROR_BACKOFF_S
    assert loop.errors == 6
    assert not any("sweep failed" in line for line in lines)
    assert sum("disk full: a sweep pass" in line for line in lines) == 1
    assert loop.step(now=6_000) == pytest.approx(PASS_INTERVAL_S)
    assert any("disk has room again: a sweep pass" in line for line in lines)


def test_other_errors_still_log_with_a_full_disk_watch(clock: Clock, lines: list[str]) -> None:
    sweeper = ScriptedSweeper(clock, outcomes=[RuntimeError("podman went away")])
    loop = SweepLoop(sweeper, monotonic_s=clock, full_disk=FullDiskLog(log=logger, clock=clock))
    assert loop.step(now=5_000) == PASS_INTERVAL_S
    assert any("sweep failed" in line and "podman went away" in line for line in lines)
