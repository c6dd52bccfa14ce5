"""Central writes that no event waits for: a session's last activity (``touch_session``) and a
sender's user row (new, or renamed).

Neither decides anything about the event that causes it, so an event does not hold its
acknowledgement for them: they are collected and written together about once a second
(``run``), in one transaction, on the central writer (``AsyncCentral.write``). So an event
into a known session needs no central write at all, and is committed and answered while
another process holds ``central.db``'s lock; the bookkeeping catches up after it. One
transaction a second, not one per event, also moves ``data_version`` (which drops the
router's cached facts) once a second at most.

A write that fails (the lock outlasted the busy timeout) keeps what it had for the next
pass; newer values of the same session or sender replace older ones. A router killed
between two passes loses at most a second of last-activity times and user names, which the
next event of each brings back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from loguru import logger

from nanoclaw_common.messages import InboundEvent
from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.async_central import AsyncCentral
from nanoclaw_common.store.rows import User

log = logger.bind(component="router")

INTERVAL_S: Final = 1.0


@dataclass(frozen=True)
class Sender:
    user_id: str
    kind: str
    display_name: str | None
    now: int


def sender_of(event: InboundEvent, now: int) -> Sender:
    kind = event.sender_id.split(":", 1)[0] if ":" in event.sender_id else event.channel_type
    return Sender(event.sender_id, kind, event.sender_name or None, now)


def write_down(
    central: CentralStore, touches: dict[str, int], senders: dict[str, Sender]
) -> list[User]:
    """One transaction: every session's last activity and every sender's row; the rows."""
    with central.write():
        for session_id, now in touches.items():
            central.touch_session(session_id, now=now)
        return [
            central.upsert_user(s.user_id, s.kind, s.display_name, now=s.now)
            for s in senders.values()
        ]


class Bookkeeping:
    def __init__(
        self, central: AsyncCentral, *, remembered: Callable[[User], None] | None = None
    ) -> None:
        self.central = central
        self.remembered = remembered  # told each user row written (the facts cache)
        self._touches: dict[str, int] = {}
        self._senders: dict[str, Sender] = {}
        self._lock = asyncio.Lock()

    def touch(self, session_id: str, now: int) -> None:
        self._touches[session_id] = now

    def remember(self, sender: Sender) -> None:
        self._senders[sender.user_id] = sender

    @property
    def pending(self) -> int:
        return len(self._touches) + len(self._senders)

    async def flush(self) -> bool:
        """Write what is pending; True when it was written (or nothing was)."""
        async with self._lock:  # one pass at a time: the run loop, a test, stop()
            touches, self._touches = self._touches, {}
            senders, self._senders = self._senders, {}
            if not touches and not senders:
                return True
            try:
                users = await self.central.write(write_down, touches, senders)
            except Exception as exc:
                # Kept for the next pass, unless something newer came meanwhile.
                self._touches = {**touches, **self._touches}
                self._senders = {**senders, **self._senders}
                log.warning("session activity and sender names not written yet: {!r}", exc)
                return False
        if self.remembered is not None:
            for user in users:
                self.remembered(user)
        return True

    async def run(self) -> None:
        """Flush every ``INTERVAL_S`` until cancelled."""
        while True:
            await asyncio.sleep(INTERVAL_S)
            await self.flush()
