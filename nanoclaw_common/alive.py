"""Proof of life: each long-running program touches ``run/alive/<program>`` from its main loop.

supervisord restarts a program that exits, not one that hangs: a sweeper blocked forever in one
``open()`` is RUNNING to supervisord while no session's liveness is judged. So each program
proves that the loop whose progress matters is still going round, by setting the mtime of its
proof file, and the watchdog (``nanoclaw_watchdog``, a supervisord event listener) restarts a
program whose proof goes stale.

The beat must come from that loop itself, never from a helper thread that would go on beating
while the loop is stuck:
- asyncio programs (router, delivery, proxy) run ``async with beating(layout, "router"):``
  around their service: a task on the loop beats every second, so a blocked loop stops it;
- the sweeper calls ``Proof.beat()`` after each pass and between two sessions of a pass, so a
  pass stuck on one session stops it while a long pass over many sessions does not.

A beat is one ``utime`` at most once a second (``Proof`` throttles), so calling it often costs
a clock read. The folder is the host's (``run/`` is mode 0700 and never mounted into a
container), and the file is opened without following links anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Final

from loguru import logger

from nanoclaw_common.paths import Layout

#: The programs that beat, by their supervisord program names (each ``main()`` names itself).
BEATING_PROGRAMS: Final = ("router", "delivery", "sweeper", "proxy")
#: At most one ``utime`` per this many seconds, however often ``beat()`` is called.
MIN_BEAT_INTERVAL_S: Final = 1.0

log = logger.bind(component="alive")


class Proof:
    """``run/alive/<program>``; its mtime is the program's last beat."""

    def __init__(
        self,
        path: Path,
        *,
        min_interval_s: float = MIN_BEAT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._last_beat: float | None = None
        self._failing = False

    @classmethod
    def of(cls, layout: Layout, program: str) -> Proof:
        return cls(layout.alive_dir / program)

    def beat(self) -> bool:
        """Touch the proof unless it was touched less than ``min_interval_s`` ago; True if it
        was touched."""
        now = self._clock()
        if self._last_beat is not None and now - self._last_beat < self.min_interval_s:
            return False
        return self.touch()

    def touch(self) -> bool:
        """Touch the proof now; True if it was written. Never raises: a proof that cannot be
        written is logged (once per failure streak), and the watchdog will see it stale."""
        self._last_beat = self._clock()
        try:
            self._touch()
        except OSError as exc:
            if not self._failing:
                log.warning("cannot write the proof of life {}: {!r}", self.path, exc)
            self._failing = True
            return False
        if self._failing:
            log.info("the proof of life {} is written again", self.path)
        self._failing = False
        return True

    def _touch(self) -> None:
        try:
            os.utime(self.path, follow_symlinks=False)
        except FileNotFoundError:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            os.close(os.open(self.path, flags, 0o600))


async def beat_forever(proof: Proof, interval_s: float = MIN_BEAT_INTERVAL_S) -> None:
    """Beat every ``interval_s`` from the running event loop, until cancelled."""
    while True:
        proof.touch()  # not beat(): a timer that fires a hair early must not skip a beat
        await asyncio.sleep(interval_s)


@contextlib.asynccontextmanager
async def beating(
    layout: Layout, program: str, interval_s: float = MIN_BEAT_INTERVAL_S
) -> AsyncIterator[Proof]:
    """Beat ``program``'s proof from this event loop while the block runs."""
    proof = Proof.of(layout, program)
    task = asyncio.create_task(beat_forever(proof, interval_s), name=f"{program}-proof-of-life")
    try:
        yield proof
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
