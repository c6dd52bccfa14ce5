"""The router process: runs every configured channel's inbound half, hands their events to
``Ingest`` and their clicks to ``Clicks`` (it is the adapters' ``InboundSink``), and runs the
side loops: the router's own outbox, typing indicators, housekeeping.

A channel whose inbound half fails is restarted with backoff; the others keep running.
SIGTERM stops receiving, lets in-flight commits finish (unacknowledged events are re-sent by
their platforms), closes the adapters and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any, Final

from loguru import logger

from nanoclaw_common.channels.base import INVALID_INPUT, ChannelAdapter
from nanoclaw_common.channels.common import committed
from nanoclaw_common.clock import now_ms
from nanoclaw_common.messages import ActionEvent, InboundEvent
from nanoclaw_common.paths import Layout
from nanoclaw_common.settings import Settings
from nanoclaw_common.store.async_central import AsyncCentral
from nanoclaw_common.wake import Waker
from nanoclaw_router.bookkeeping import Bookkeeping
from nanoclaw_router.cards import Cards
from nanoclaw_router.clicks import Clicks
from nanoclaw_router.commit import Commit
from nanoclaw_router.decisions import Decisions
from nanoclaw_router.drops import DropThrottle
from nanoclaw_router.facts import CentralFacts
from nanoclaw_router.faults import Faults
from nanoclaw_router.ingest import Ingest
from nanoclaw_router.outbox import OutboxSender
from nanoclaw_router.typing_indicator import TypingTracker
from nanoclaw_router.wakes import WakeScheduler, WakeStage
from nanoclaw_router.writer import SessionWriter

log = logger.bind(component="router")

RESTART_BACKOFF_S: Final = (1.0, 2.0, 5.0, 10.0, 30.0)
HOUSEKEEPING_S: Final = 30.0
RECANCEL_S: Final = 1.0  # stop(): how long a cancelled task may take before it is asked again
BACKGROUND_GRACE_S: Final = 5.0  # stop(): card edits in flight may finish within this


class Router:
    def __init__(
        self,
        settings: Settings,
        central: AsyncCentral,
        adapters: Mapping[str, ChannelAdapter],
        waker: Waker,
        *,
        faults: Faults | None = None,
        commit_threads: int = 16,
        wake_threads: int = 4,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.settings = settings
        self.layout = Layout(settings.home_path)
        self.central = central
        self.adapters = dict(adapters)
        self.writer = SessionWriter(self.layout, threads=commit_threads)
        self.wakes = WakeScheduler(waker, self.layout, self.layout.central_db, threads=wake_threads)
        self.outbox = OutboxSender(central, self.adapters, clock=clock)
        self.typing = TypingTracker(
            self.layout,
            self.adapters,
            heartbeat_interval_s=settings.heartbeat_interval_s,
            clock=clock,
            io_limit_s=settings.session_io_limit_s,
        )
        self.drops = DropThrottle(central, clock=clock)
        # The stages of an event (ingest.py) and of a click (clicks.py).
        self.facts = CentralFacts(central)
        self.bookkeeping = Bookkeeping(central, remembered=self.facts.remember_user)
        self.cards = Cards(central, self.adapters, self.outbox, clock=clock)
        self.decisions = Decisions(
            central, self.layout, self.cards, self.outbox, self._replay, clock=clock
        )
        self.ingest = Ingest(
            self.adapters,
            facts=self.facts,
            decisions=self.decisions,
            commit=Commit(
                central,
                facts=self.facts,
                cards=self.cards,
                writer=self.writer,
                sender=self.outbox,
                bookkeeping=self.bookkeeping,
                clock=clock,
            ),
            wake=WakeStage(central, self.wakes, self.writer, self.typing),
            faults=faults,
        )
        self.clicks = Clicks(
            central,
            self.adapters,
            facts=self.facts,
            decisions=self.decisions,
            writer=self.writer,
            wakes=self.wakes,
            clock=clock,
        )
        self._tasks: list[asyncio.Task[Any]] = []
        self.recancel_s = RECANCEL_S
        self.background_grace_s = BACKGROUND_GRACE_S
        self.started = asyncio.Event()

    # -- InboundSink ----------------------------------------------------------------------

    async def on_event(self, event: InboundEvent) -> None:
        await self.ingest.route(event)
        committed(event.channel_type)

    async def on_action(self, action: ActionEvent) -> None:
        await self.clicks.handle_action(action)

    async def on_invalid(
        self, channel_type: str, platform_id: str, reason: str, *, code: str = INVALID_INPUT
    ) -> None:
        await self.drops.record(channel_type, platform_id, code, reason)

    async def _replay(self, event: InboundEvent) -> None:
        """An approved event, through every stage again (``decisions``)."""
        await self.ingest.replay(event)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        for channel_type, adapter in list(self.adapters.items()):
            try:
                await adapter.start()
            except Exception as exc:
                log.error("channel {} failed to start ({}); running without it", channel_type, exc)
                self.adapters.pop(channel_type)
                continue
            self._tasks.append(asyncio.create_task(self._supervise(channel_type, adapter)))
        self._tasks.append(asyncio.create_task(self.outbox.run()))
        self._tasks.append(asyncio.create_task(self.typing.run()))
        self._tasks.append(asyncio.create_task(self._housekeeping()))
        self._tasks.append(asyncio.create_task(self.drops.run()))
        self._tasks.append(asyncio.create_task(self.bookkeeping.run()))
        log.info("router running with channels: {}", ", ".join(sorted(self.adapters)) or "none")
        self.started.set()

    async def _supervise(self, channel_type: str, adapter: ChannelAdapter) -> None:
        failures = 0
        while True:
            try:
                await adapter.run_inbound(self)
                log.warning("channel {} stopped receiving; restarting", channel_type)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("channel {} inbound failed: {}", channel_type, exc)
            delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
            failures += 1
            await asyncio.sleep(delay)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            self.writer.evict_idle()

    async def stop(self) -> None:
        """Stop receiving, let commits and wakes in flight finish, close everything."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            # Python 3.11 can lose a cancellation (an ``asyncio.wait_for`` whose inner
            # awaitable finished as it was cancelled returns instead of raising): ask again
            # until the task has really ended, rather than wait for it forever.
            while not task.done():
                await asyncio.wait({task}, timeout=self.recancel_s)
                if not task.done():
                    log.warning("a router task ignored its cancellation; cancelling again")
                    task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.clicks.settle_background(self.background_grace_s)
        await self.drops.flush(everything=True)
        await self.bookkeeping.flush()
        await self.wakes.idle()
        for channel_type, adapter in self.adapters.items():
            try:
                await adapter.close()
            except Exception as exc:
                log.warning("closing channel {} failed: {}", channel_type, exc)
        await asyncio.to_thread(self.writer.close)
        await asyncio.to_thread(self.wakes.close)
        log.info(
            "router stopped: {} rows committed in {} transactions, {} wakes ({} failed), "
            "{} router messages sent",
            self.writer.committed_rows,
            self.writer.transactions,
            self.wakes.wakes,
            self.wakes.failures,
            self.outbox.sent,
        )

    async def run(self, stopped: asyncio.Event) -> None:
        await self.start()
        try:
            await stopped.wait()
        finally:
            await self.stop()
