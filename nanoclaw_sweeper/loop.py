"""The sweeper's loop: one pass about every second, a capped backoff after a failed pass.

``SweepLoop.step(now)`` is one pass and returns how long to wait before the next;
``SweepLoop.run(stop)`` repeats it until a stop is requested. The clock (``monotonic_s``)
and the sleep (``stop.wait``) are parameters, so tests drive the loop pass by pass without
sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

import msgspec
from loguru import logger

from nanoclaw_common.clock import now_ms
from nanoclaw_sweeper.sweeper import PassReport

log = logger.bind(component="sweeper")

PASS_INTERVAL_S: Final = 1.0  # due work is woken within about this long of its time
MAX_ERROR_BACKOFF_S: Final = 30.0
FULL_DISK_BACKOFF_S: Final = 5.0  # passes go on often enough to resume soon after there is room
FULL_DISK_PASS: Final = "a sweep pass"


class Sweeps(Protocol):
    """What the loop needs from ``Sweeper``."""

    def sweep(self, now: int) -> PassReport: ...


class FullDisk(Protocol):
    """What the loop needs from ``diskfull.FullDiskLog``: a full disk is one condition,
    logged when it starts and ends, not a traceback a pass."""

    def refused(self, what: str, exc: BaseException) -> bool: ...

    def written(self, what: str) -> None: ...


class Stop(Protocol):
    """What the loop needs from ``lifecycle.GracefulStop``."""

    @property
    def stopping(self) -> bool: ...

    def wait(self, timeout_s: float) -> bool: ...


def noteworthy(report: PassReport) -> bool:
    """Whether a pass changed anything worth a log line (most passes change nothing)."""
    return bool(
        report.killed
        or report.stopped_idle
        or report.settled
        or report.woken
        or report.restarted
        or report.quarantined
        or report.deferred
        or report.orphans_removed
        or report.recurrences
        or report.disk_stopped
        or report.disk_blocked
        or report.disk_lifted
    )


@dataclass
class SweepLoop:
    sweeper: Sweeps
    # Proof of life for the watchdog, touched before each pass (the sweeper beats between
    # sessions within one).
    touch: Callable[[], object] = lambda: None
    monotonic_s: Callable[[], float] = time.monotonic
    wall_ms: Callable[[], int] = now_ms
    interval_s: float = PASS_INTERVAL_S
    max_backoff_s: float = MAX_ERROR_BACKOFF_S
    full_disk: FullDisk | None = None
    passes: int = 0
    errors: int = 0
    _error_delay_s: float = field(init=False)

    def __post_init__(self) -> None:
        self._error_delay_s = self.interval_s

    def step(self, now: int) -> float:
        """One pass at wall time ``now`` (epoch ms); the seconds to wait before the next.

        After a pass: what is left of ``interval_s`` since the pass started (a deadline, not
        a fixed pause after a slow pass; after a pass longer than the interval, none: the
        missed periods are skipped, not replayed). After a failed pass (Podman restarting, a
        locked file): the error is logged and the wait doubles from ``interval_s`` up to
        ``max_backoff_s``, back to normal after the next good pass; a pass refused by a full
        disk is counted by ``full_disk`` instead of logged, and its wait is capped at
        ``FULL_DISK_BACKOFF_S``. Never raises an ``Exception``."""
        self.touch()
        started = self.monotonic_s()
        try:
            report = self.sweeper.sweep(now)
        except Exception as exc:
            self.errors += 1
            full = self.full_disk is not None and self.full_disk.refused(FULL_DISK_PASS, exc)
            if not full:
                log.opt(exception=exc).error("sweep failed: {!r}", exc)
            delay_s = self._error_delay_s
            cap = min(FULL_DISK_BACKOFF_S, self.max_backoff_s) if full else self.max_backoff_s
            self._error_delay_s = min(delay_s * 2, cap)
            return min(delay_s, cap)
        if self.full_disk is not None:
            self.full_disk.written(FULL_DISK_PASS)
        self._error_delay_s = self.interval_s
        self.passes += 1
        if noteworthy(report):
            log.info("pass: {}", msgspec.json.encode(report).decode())
        return max(0.0, self.interval_s - (self.monotonic_s() - started))

    def run(self, stop: Stop) -> None:
        """Passes until a stop is requested; the wait between two is ``stop.wait``, so a
        signal ends it at once. The pass in progress when the signal comes finishes."""
        while not stop.stopping:
            if stop.wait(self.step(self.wall_ms())):
                break
