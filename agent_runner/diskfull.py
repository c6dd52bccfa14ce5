"""A full disk (or a disk quota reached) is a wait, not a failure (issue 9 §4).

The runner's writes (``outbound.db``: claims, mid-turn sends, the final answer with its ack;
``agent/state/conversation.json``) all go to the session's ``agent/`` folder. When the
filesystem under it is full, SQLite raises ``FullError`` and plain writes ``ENOSPC`` (or
``EDQUOT`` under a project quota). Failing the batch then would lose it twice over: the ack
cannot be written either, and an error notice is one more write. So every such write goes
through ``DiskWait.until_written``: it retries with a capped backoff until the write succeeds
(the answer stays in memory meanwhile; nothing is acked before it is written), logging once
per episode. A stop (SIGTERM, or the sweeper stopping the container for its disk quota) ends
the wait: the claim stays unacked and the host's retry path (``tries + 1``) answers it later.

The heartbeat keeps beating through a wait (touching a file's mtime needs no free blocks), so
the sweeper does not take a waiting runner for a dead one; its claim ceiling still bounds how
long one batch may wait.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final, TypeVar

from loguru import logger

from nanoclaw_common.diskfull import is_disk_full

log = logger.bind(component="disk")

T = TypeVar("T")

FIRST_DELAY_S: Final = 0.2
MAX_DELAY_S: Final = 5.0


class DiskFullStop(BaseException):
    """The runner was stopped while waiting for disk space: the write did not happen. A
    ``BaseException``, like ``KeyboardInterrupt``: no tool's or turn's ``except Exception``
    may turn it into an error notice or an ack; it ends the batch unacked."""


class DiskWait:
    """Retries writes that fail for want of space. ``stop`` ends a wait (``DiskFullStop``);
    ``sleep`` is the stop event's wait (tests pass their own)."""

    def __init__(self, stop: threading.Event, sleep: Callable[[float], bool] | None = None) -> None:
        self.stop = stop
        self._sleep = sleep or stop.wait
        self.episodes = 0  # waits that ended with the write done (for the shutdown summary)

    def until_written(self, write: Callable[[], T], what: str) -> T:
        delay = FIRST_DELAY_S
        waited = False
        while True:
            try:
                result = write()
            except Exception as exc:
                if not is_disk_full(exc):
                    raise
                if not waited:
                    log.warning("disk full: {} waits until there is room ({})", what, exc)
                    waited = True
                if self._sleep(delay) or self.stop.is_set():
                    log.warning("stopped while waiting for disk space: {} not written", what)
                    raise DiskFullStop(what) from exc
                delay = min(delay * 2, MAX_DELAY_S)
                continue
            if waited:
                self.episodes += 1
                log.info("disk has room again: {} written", what)
            return result

    def best_effort(self, write: Callable[[], object], what: str) -> None:
        """Bookkeeping that may be skipped on a full disk (the turn counter, the tool in
        flight): not worth a wait, and never a reason to fail the batch."""
        try:
            write()
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            log.warning("disk full: {} not recorded ({})", what, exc)
