"""Waiting for an ``asyncio.Event`` with a timeout, in a task that may be cancelled.

``asyncio.wait_for(event.wait(), timeout)`` loses a cancellation on Python 3.11 when the event
is set in the same loop iteration as the task is cancelled: ``wait_for`` sees the inner wait
done and returns its result instead of raising (fixed in 3.12). A loop built on it then never
ends, and ``Router.stop`` waits for that task forever (seen as a hung SIGTERM). ``asyncio.wait``
keeps the cancellation.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until ``event`` is set or ``timeout_s`` passes; True when it was set. A
    cancellation of the caller always propagates."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout_s)
    finally:
        waiter.cancel()
    return event.is_set()
