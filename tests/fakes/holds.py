"""Holding one request in a fake server until the test lets it go: how a test makes a crash
land at an exact moment of a real network call (the chaos suite SIGKILLs delivery while
the fake Telegram holds a ``sendMessage`` it has, or has not yet, accepted).

A test arms a ``Hold`` with a predicate; the first request the fake's handler matches takes
it (``Holds.take``), marks it arrived and waits on the fake's event loop until ``release``
(bounded by ``max_hold_s``, so a forgotten hold cannot wedge the fake). The fake decides
what the hold means (before or after it accepts the request) and records the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, Final

MAX_HOLD_S: Final = 30.0

Predicate = Callable[[dict[str, Any]], bool]


class Hold:
    """One armed hold. ``arrived`` is set (from the fake's thread) when a request took it;
    ``detail`` is what the fake chose to say about that request; ``outcome`` what became of
    it once released (fake-specific: "accepted", "dropped"…)."""

    def __init__(self, match: Predicate, stage: str = "") -> None:
        self.match = match
        self.stage = stage
        self.arrived = threading.Event()
        self.done = threading.Event()
        self.arrived_at = 0.0  # time.time()
        self.released_at = 0.0
        self.detail: dict[str, Any] = {}
        self.outcome = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._release: asyncio.Event | None = None
        self._released_early = False
        self._lock = threading.Lock()

    def release(self) -> None:
        """Let the request go on (safe to call before it arrived, or twice)."""
        with self._lock:
            self._released_early = True
            loop, event = self._loop, self._release
        if loop is not None and event is not None:
            loop.call_soon_threadsafe(event.set)

    def wait_arrived(self, timeout_s: float) -> bool:
        return self.arrived.wait(timeout_s)

    async def hold(self, detail: dict[str, Any], max_hold_s: float = MAX_HOLD_S) -> None:
        """Called by the fake's handler (on its loop) for the request that took this hold."""
        event = asyncio.Event()
        with self._lock:
            self._loop, self._release = asyncio.get_running_loop(), event
            if self._released_early:
                event.set()
        self.detail = detail
        self.arrived_at = time.time()
        self.arrived.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), max_hold_s)
        self.released_at = time.time()

    def finish(self, outcome: str) -> None:
        self.outcome = outcome
        self.done.set()


class Holds:
    """The armed holds of one fake (its handlers call ``take`` on their loop)."""

    def __init__(self) -> None:
        self._armed: list[Hold] = []
        self._lock = threading.Lock()

    def arm(self, match: Predicate, stage: str = "") -> Hold:
        hold = Hold(match, stage)
        with self._lock:
            self._armed.append(hold)
        return hold

    def take(self, stage: str, request: dict[str, Any]) -> Hold | None:
        """The first armed hold of ``stage`` matching ``request``, disarmed, or None."""
        with self._lock:
            for hold in self._armed:
                if hold.stage == stage and hold.match(request):
                    self._armed.remove(hold)
                    return hold
        return None

    def disarm(self, hold: Hold) -> bool:
        """Take an unused hold back; False when a request already took it."""
        with self._lock:
            if hold in self._armed:
                self._armed.remove(hold)
                return True
        return False
