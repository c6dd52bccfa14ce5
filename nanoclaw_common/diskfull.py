"""A full disk is a wait, not a failure (issue 9 §4): what every program shares about it.

When the filesystem under the data folder is full, SQLite raises ``FullError``
(``SQLITE_FULL``) and plain writes ``ENOSPC`` (``EDQUOT`` under a project quota). Nothing is
wrong with the data or the program: the write simply has to happen later. So:

- nothing is acknowledged that was not written (the router's channels answer "retry", the
  runner does not ack, delivery keeps the row in its state);
- a write that **follows an effect outside** (a message the platform accepted, an owner's
  DM sent) is not given up: the outcome is held in memory and the write retried in place
  (``until_written``), since giving up would do the effect again (a duplicate);
- it is logged as **one condition**: a line when it starts, at most one a minute while it
  lasts (with how many writes it refused meanwhile), and one when it ends (``FullDiskLog``),
  never a traceback per pass or per retry.

The agent runner's side (claims, answers, acks) is ``agent_runner/diskfull.py``.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, TypeVar

import apsw
from loguru import logger

if TYPE_CHECKING:
    from loguru import Logger

T = TypeVar("T")

_FULL_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
REPEAT_S: Final = 60.0  # while a condition lasts, at most one line per this long
FIRST_DELAY_S: Final = 0.2
MAX_DELAY_S: Final = 5.0


def is_disk_full(exc: BaseException) -> bool:
    """A write refused for want of space: SQLite's ``SQLITE_FULL``, ``ENOSPC`` or ``EDQUOT``
    (also when wrapped: an error raised *from* one)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, apsw.FullError):
            return True
        if isinstance(current, OSError) and current.errno in _FULL_ERRNOS:
            return True
        current = current.__cause__
    return False


@dataclass
class _Episode:
    since: float
    last_logged: float
    refused: int = 0


@dataclass
class FullDiskLog:
    """One program's (or one component's) full-disk conditions, by what could not be
    written. ``refused`` logs the start of a condition and then at most once per
    ``repeat_s``; ``written`` logs its end. ``clock`` is a parameter (tests pass theirs)."""

    log: Logger = field(default_factory=lambda: logger.bind(component="disk"))
    repeat_s: float = REPEAT_S
    clock: Callable[[], float] = time.monotonic
    _open: dict[str, _Episode] = field(default_factory=dict)

    def refused(self, what: str, exc: BaseException) -> bool:
        """Whether ``exc`` is a full disk; if so it is counted under ``what`` (and logged
        when the condition is new, or every ``repeat_s`` while it lasts)."""
        if not is_disk_full(exc):
            return False
        now = self.clock()
        episode = self._open.get(what)
        if episode is None:
            self._open[what] = _Episode(since=now, last_logged=now, refused=1)
            self.log.warning("disk full: {} waits until there is room ({})", what, exc)
            return True
        episode.refused += 1
        if now - episode.last_logged >= self.repeat_s:
            episode.last_logged = now
            self.log.warning(
                "disk still full: {} has waited {:.0f} s ({} writes refused)",
                what,
                now - episode.since,
                episode.refused,
            )
        return True

    def written(self, what: str) -> None:
        """``what`` was written: its condition (if any) is over."""
        episode = self._open.pop(what, None)
        if episode is not None:
            self.log.info(
                "disk has room again: {} written after {:.0f} s ({} writes refused)",
                what,
                self.clock() - episode.since,
                episode.refused,
            )

    @property
    def waiting(self) -> list[str]:
        return sorted(self._open)


async def until_written(
    write: Callable[[], Awaitable[T]],
    what: str,
    disk: FullDiskLog,
    *,
    stopping: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> T:
    """Run ``write`` until it is not refused for want of space (any other error is raised).
    For the record of an effect already done outside: held in memory, retried in place with
    a capped backoff, never given up while the program runs. ``stopping`` ends the wait with
    the last ``FullError`` (a shutdown: the record stays undone, as after a crash)."""
    delay = FIRST_DELAY_S
    while True:
        try:
            result = await write()
        except Exception as exc:
            if not disk.refused(what, exc) or stopping():
                raise
            await sleep(delay)
            delay = min(delay * 2, MAX_DELAY_S)
            continue
        disk.written(what)
        return result
