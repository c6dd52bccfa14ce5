"""Waiting in tests for something another thread, process or container does: a row committed,
a log line written, a frame on a socket, a container's state.

``wait_until`` (and ``wait_until_async`` inside an event loop) polls a check until it returns
something truthy and returns that value. Past the deadline it raises ``WaitTimeout`` naming
what it waited for, how long, and (``detail``) the state at that moment: a timeout is never
taken for success. Tests never sleep for a fixed time instead; the deadline is an upper bound
that a passing run stays far below, chosen per call for a loaded two-core machine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final, TypeVar

T = TypeVar("T")

#: Between two checks. Short enough that a passing run waits a few milliseconds at most, long
#: enough that a check reading a file or a database does not load the machine.
POLL_S: Final = 0.02


class WaitTimeout(AssertionError):
    """The check did not hold by the deadline (an ``AssertionError``: the test fails with it,
    unless a caller records the miss on purpose, as the chaos run does)."""


def wait_until(
    check: Callable[[], T | None],
    *,
    timeout_s: float,
    what: str,
    poll_s: float = POLL_S,
    detail: Callable[[], object] | None = None,
) -> T:
    """Call ``check`` every ``poll_s`` until it returns a truthy value, and return it.

    ``what`` names the awaited event in the failure ("the reply in chat 100"). ``detail``,
    called only on a timeout, adds the state that explains it (a log, the rows seen)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timeout(what, timeout_s, detail)
        time.sleep(poll_s)


async def wait_until_async(
    check: Callable[[], T | None],
    *,
    timeout_s: float,
    what: str,
    poll_s: float = POLL_S,
    detail: Callable[[], object] | None = None,
) -> T:
    """``wait_until`` for a test running in the event loop: it sleeps with ``asyncio.sleep``,
    so the loop's other tasks (the code under test) run between two checks."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timeout(what, timeout_s, detail)
        await asyncio.sleep(poll_s)


def _timeout(what: str, timeout_s: float, detail: Callable[[], object] | None) -> WaitTimeout:
    message = f"timed out after {timeout_s:g} s waiting for {what}"
    if detail is not None:
        message += f"\n{detail()}"
    return WaitTimeout(message)
