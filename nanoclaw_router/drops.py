"""Recording refused input (undecodable, unsigned, over a rate limit) so that a flood costs
neither a ``central.db`` write nor a log line per request.

Per (channel, chat, reason) the first refusal is written and logged at once; later ones
within ``interval_ms`` are only counted, and the count is written (and logged, once) when
the window ends: by the next refusal after it, or by ``run``'s periodic flush. A router
that dies loses at most one window's count. A write that fails raises to the adapter for a
refusal that was to be written at once (the adapter then does not acknowledge, and the
platform re-sends); a deferred count that cannot be written is kept for the next flush.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from loguru import logger

from nanoclaw_common.clock import now_ms
from nanoclaw_common.diskfull import FullDiskLog
from nanoclaw_common.messages import ChatContent
from nanoclaw_common.store import CentralStore, InsertResult, NewInbound
from nanoclaw_common.store.async_central import AsyncCentral
from nanoclaw_common.store.rows import Session
from nanoclaw_common.untrusted import shown, shown_text
from nanoclaw_router.routing import DropReason

log = logger.bind(component="router")

INTERVAL_MS: Final = 1_000
MAX_WINDOWS: Final = 10_000  # distinct (chat, reason) keys held; past it, flush and forget
DETAIL_CHARS: Final = 500

Key = tuple[str, str, str]


@dataclass
class _Window:
    until_ms: int
    unwritten: int = 0
    detail: str | None = None


class DropThrottle:
    def __init__(
        self,
        central: AsyncCentral,
        *,
        interval_ms: int = INTERVAL_MS,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.central = central
        self.interval_ms = interval_ms
        self.clock = clock
        self._windows: dict[Key, _Window] = {}
        self.disk = FullDiskLog(log=log)  # a full disk: one line, not one per flush

    async def record(self, channel_type: str, platform_id: str, reason: str, detail: str) -> bool:
        """Count one refusal: written now (True) or added to its window's count (False)."""
        now = self.clock()
        key = (channel_type, platform_id or "unknown", reason)
        detail = detail[:DETAIL_CHARS]
        window = self._windows.get(key)
        if window is not None and now < window.until_ms:
            window.unwritten += 1
            window.detail = detail
            return False
        if len(self._windows) >= MAX_WINDOWS:
            await self.flush(everything=True)
            self._windows.clear()
        count = 1 + (window.unwritten if window is not None else 0)
        # The new window opens before the write: refusals that come while it waits for the
        # writer are counted into it, not written one by one.
        opened = self._windows[key] = _Window(now + self.interval_ms)
        try:
            await self._write(key, count, detail, now)
        except BaseException:
            # This refusal is not acknowledged (its platform sends it again and it is counted
            # then); the earlier ones wait for the next write, which may come at once.
            opened.unwritten += count - 1
            opened.until_ms = now
            raise
        return True

    async def flush(self, *, everything: bool = False) -> None:
        """Write the counts of windows that ended (of all of them, when stopping) and forget
        windows with nothing to write."""
        now = self.clock()
        for key, window in list(self._windows.items()):
            if not everything and now < window.until_ms:
                continue
            if window.unwritten == 0:
                del self._windows[key]
                continue
            count, detail = window.unwritten, window.detail
            opened = self._windows[key] = _Window(now + self.interval_ms)
            try:
                await self._write(key, count, detail, now)
            except Exception as exc:
                if not self.disk.refused("the counts of refused input", exc):
                    log.warning("{} refusals not recorded yet: {}", count, exc)
                opened.unwritten += count
                opened.detail = opened.detail or detail
                opened.until_ms = now  # ended: the next flush tries again
                continue
            self.disk.written("the counts of refused input")

    async def _write(self, key: Key, count: int, detail: str | None, now: int) -> None:
        channel_type, platform_id, reason = key
        await self.central.write(_record_refusals, key, count=count, detail=detail, now=now)
        log.warning(
            "dropped {} input from {}/{}{}: {}",
            reason,
            shown(channel_type),
            shown(platform_id),
            f" ({count} in the last second or so)" if count > 1 else "",
            shown_text(detail),
        )

    async def run(self) -> None:
        """Flush ended windows every interval, until cancelled."""
        while True:
            await asyncio.sleep(self.interval_ms / 1000)
            await self.flush()


def _record_refusals(
    central: CentralStore, key: Key, *, count: int, detail: str | None, now: int
) -> None:
    channel_type, platform_id, reason = key
    central.record_drop(channel_type, platform_id, reason, detail=detail, count=count, now=now)


def record_collision(
    central: CentralStore, session: Session, row: NewInbound, result: InsertResult, now: int
) -> None:
    """A message whose row id a different row held (``result.collided_with``): it was stored
    under ``result.id``. Recorded once, when that row is created (a re-send finds it again
    and is only logged), as an ``id_collision`` drop of the chat: the audit trail of an id
    someone took, since nothing of the message was lost."""
    sender = row.content.sender_id if isinstance(row.content, ChatContent) else None
    if result.created:
        central.record_drop(
            row.channel_type or "unknown",
            row.platform_id or "unknown",
            DropReason.ID_COLLISION,
            user_id=sender,
            messaging_group_id=session.messaging_group_id,
            agent_group_id=session.agent_group_id,
            detail=(
                f"id {shown(row.id)} was held by {result.collided_with};"
                f" the message was stored as {shown(result.id)}"
            ),
            now=now,
        )
    log.warning(
        "id collision: {} was held by {}; the message is {} as {}",
        shown(row.id),
        result.collided_with,
        "stored" if result.created else "already stored",
        shown(result.id),
        session=session.id,
        message=shown(result.id),
    )
