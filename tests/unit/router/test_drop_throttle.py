"""Refused input is counted per (chat, reason) with one write a second at most: a flood costs
neither a ``central.db`` transaction nor a log line per request, and loses no count."""

from __future__ import annotations

import asyncio

from loguru import logger

from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.async_central import AsyncCentral
from nanoclaw_router.drops import DropThrottle


class Clock:
    def __init__(self) -> None:
        self.now_ms = 1_000_000

    def __call__(self) -> int:
        return self.now_ms


def counts(central: CentralStore) -> dict[tuple[str, str], int]:
    return {(d.platform_id, d.reason): d.message_count for d in central.list_drops(100)}


def test_a_flood_is_one_write_and_one_line_a_second(central: CentralStore) -> None:
    clock = Clock()
    throttle = DropThrottle(AsyncCentral.inline(central), clock=clock)

    def record(channel: str, chat: str, reason: str, detail: str) -> bool:
        return asyncio.run(throttle.record(channel, chat, reason, detail))

    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), format="{message}", level="WARNING")
    try:
        assert record("webhook", "ci", "rate_limited", "over the rate")
        assert not any(record("webhook", "ci", "rate_limited", "x") for _ in range(99))
        # Another chat or reason has its own window.
        assert record("webhook", "cd", "rate_limited", "over the rate")
        assert record("webhook", "ci", "invalid_input", "bad signature")
        assert counts(central) == {
            ("ci", "rate_limited"): 1,
            ("cd", "rate_limited"): 1,
            ("ci", "invalid_input"): 1,
        }
        asyncio.run(throttle.flush())  # the window has not ended: nothing to write yet
        assert counts(central)[("ci", "rate_limited")] == 1
        clock.now_ms += 1_000
        asyncio.run(throttle.flush())
        assert counts(central)[("ci", "rate_limited")] == 100
        # After the window, the next refusal is written at once with what was pending.
        assert not record("webhook", "ci", "rate_limited", "x")
        clock.now_ms += 1_000
        assert record("webhook", "ci", "rate_limited", "x")
        assert counts(central)[("ci", "rate_limited")] == 102
    finally:
        logger.remove(sink)
    assert len(lines) == 5
    assert "(99 in the last second or so)" in lines[3]


def test_stopping_writes_every_pending_count(central: CentralStore) -> None:
    throttle = DropThrottle(AsyncCentral.inline(central), clock=Clock())

    async def go() -> None:
        for _ in range(5):
            await throttle.record("cli", "local", "invalid_input", "bad line\n\x1b[2J")
        await throttle.flush(everything=True)

    asyncio.run(go())
    [drop] = central.list_drops(10)
    assert drop.message_count == 5
