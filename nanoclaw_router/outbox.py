"""Sending the router's own messages (``router_outbox``): registration and sender-approval
cards, command denials, prompts. Queued in ``central.db`` first (``queue_text``,
``queue_question``: plain functions of the store, called in the queuing step's own write),
then sent through the adapter; a retryable failure (no terminal attached, network, rate
limit) backs off and tries again, a permanent one (or a day of trying) marks the message
failed and logs it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Final

import msgspec
from loguru import logger

from nanoclaw_common.channels.base import ChannelAdapter
from nanoclaw_common.clock import now_ms
from nanoclaw_common.diskfull import FullDiskLog, until_written
from nanoclaw_common.errors import PermanentFailure, RetryLater
from nanoclaw_common.messages import AskQuestion
from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.async_central import AsyncCentral
from nanoclaw_common.store.router_outbox import MAX_AGE_MS, OutboxItem, RouterOutbox, encode_body
from nanoclaw_common.untrusted import shown, shown_text
from nanoclaw_router.waiting import wait_event

log = logger.bind(component="router")

BACKOFF_BASE_S: Final = 2.0
BACKOFF_MAX_S: Final = 300.0
IDLE_WAIT_S: Final = 5.0


class TextBody(msgspec.Struct, frozen=True):
    text: str


def backoff_ms(attempts: int, hint_s: float | None = None) -> int:
    delay = hint_s if hint_s is not None else BACKOFF_BASE_S * 2 ** min(attempts, 20)
    return int(min(BACKOFF_MAX_S, max(0.5, delay)) * 1000)


def queue_text(
    central: CentralStore,
    item_id: str,
    *,
    channel_type: str,
    platform_id: str,
    thread_id: str | None = None,
    text: str,
    now: int,
) -> bool:
    """Queue a text for ``OutboxSender`` (then ``kick`` it); False when the id is queued
    already (its cause was handled)."""
    return RouterOutbox(central).enqueue(
        item_id,
        channel_type=channel_type,
        platform_id=platform_id,
        thread_id=thread_id,
        kind="text",
        body=encode_body(TextBody(text)),
        now=now,
    )


def queue_question(
    central: CentralStore,
    item_id: str,
    *,
    channel_type: str,
    platform_id: str,
    thread_id: str | None = None,
    question: AskQuestion,
    now: int,
) -> bool:
    """Queue a card, like ``queue_text``."""
    return RouterOutbox(central).enqueue(
        item_id,
        channel_type=channel_type,
        platform_id=platform_id,
        thread_id=thread_id,
        kind="question",
        body=encode_body(question),
        now=now,
    )


def _due(central: CentralStore, now: int) -> list[OutboxItem]:
    return RouterOutbox(central).due(now=now)


def _next_due(central: CentralStore) -> int | None:
    return RouterOutbox(central).next_due_ms()


def _sent(central: CentralStore, item_id: str, platform_message_id: str | None, now: int) -> None:
    RouterOutbox(central).mark_sent(item_id, platform_message_id, now=now)


def _retry(central: CentralStore, item_id: str, error: str, at_ms: int, now: int) -> None:
    RouterOutbox(central).mark_retry(item_id, error, at_ms, now=now)


def _failed(central: CentralStore, item_id: str, error: str, now: int) -> None:
    RouterOutbox(central).mark_failed(item_id, error, now=now)


class OutboxSender:
    def __init__(
        self,
        central: AsyncCentral,
        adapters: Mapping[str, ChannelAdapter],
        *,
        clock: Callable[[], int] = now_ms,
        disk: FullDiskLog | None = None,
    ) -> None:
        self.central = central
        self.adapters = adapters
        self.clock = clock
        self.disk = disk or FullDiskLog()
        self._kick = asyncio.Event()
        self.sent = 0

    def kick(self) -> None:
        """Something was queued: send it now rather than at the next due time."""
        self._kick.set()

    async def run(self) -> None:
        """Send due messages until cancelled; sleep until the next due one or a kick."""
        while True:
            self._kick.clear()
            wait_s = IDLE_WAIT_S
            try:
                await self.drain()
                next_due = await self.central.read(_next_due)
                if next_due is not None:
                    wait_s = min(IDLE_WAIT_S, max(0.0, (next_due - self.clock()) / 1000))
            except Exception as exc:  # a DB hiccup must not end the loop
                if not self.disk.refused("the router outbox", exc):
                    log.error("router outbox pass failed: {}", exc)
            else:
                self.disk.written("the router outbox")
            await wait_event(self._kick, wait_s)

    async def drain(self) -> int:
        """Try every due message once; returns how many were sent."""
        sent = 0
        for item in await self.central.read(_due, self.clock()):
            if await self.send(item):
                sent += 1
        return sent

    async def send(self, item: OutboxItem) -> bool:
        now = self.clock()
        adapter = self.adapters.get(item.channel_type)
        try:
            if adapter is None:
                raise RetryLater(f"no {item.channel_type} adapter in the router")
            if item.kind == "question":
                question = msgspec.json.decode(item.body, type=AskQuestion)
                platform_message_id = await adapter.send_question(
                    item.platform_id, item.thread_id, question
                )
            else:
                text = msgspec.json.decode(item.body, type=TextBody).text
                platform_message_id = await adapter.send_text(
                    item.platform_id, item.thread_id, text
                )
        except PermanentFailure as exc:
            await self.central.write(_failed, item.id, exc.reason, now)
            log.error(
                "router message {} failed for good: {}", shown(item.id), shown_text(exc.reason)
            )
            return False
        except Exception as exc:  # RetryLater, or anything unclassified: retry
            hint = exc.delay_s if isinstance(exc, RetryLater) else None
            if now - item.created_at_ms > MAX_AGE_MS:
                await self.central.write(_failed, item.id, f"gave up after a day: {exc}", now)
                log.error("router message {} given up: {}", shown(item.id), shown_text(exc))
                return False
            await self.central.write(
                _retry, item.id, str(exc), now + backoff_ms(item.attempts, hint), now
            )
            log.info(
                "router message {} not sent yet ({}); will retry", shown(item.id), shown_text(exc)
            )
            return False

        async def record_sent() -> None:
            await self.central.write(_sent, item.id, platform_message_id, now)

        # Sent: on a full disk the record waits for room (else it would be sent again).
        await until_written(record_sent, f"router message {item.id}", self.disk)
        self.sent += 1
        log.info(
            "router message {} sent to {}/{}",
            shown(item.id),
            item.channel_type,
            shown(item.platform_id),
        )
        return True
