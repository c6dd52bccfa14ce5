"""Waking sessions after their rows are committed, without blocking the event loop: an
event's third stage (``WakeStage``) and the scheduler that does the waking.

Only rows the agent must answer wake (accumulated ``trigger=0`` rows never do). A re-sent
event's row (a duplicate) wakes only if the first attempt died before waking: the session's
container is ``stopped`` and the row still waits for the agent (not yet settled by a run). A
re-send that arrives after a run answered the row wakes nothing.

A wake refreshes the session's ``destinations`` and ``session_routing`` projections from
the central DB and then calls the ``Waker`` (``Sandbox.wake`` in production: Podman, maybe
seconds for a cold start). Both run on the ``wake`` lane, off the loop; each of its threads
has its own central DB connection, and a wake that waits for a locked ``central.db`` holds
up only other wakes.

Wakes are coalesced per session: while one is in flight, any number of new requests become
one follow-up wake (so a burst of messages costs two wakes, not one per message).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from nanoclaw_common.messages import InboundEvent
from nanoclaw_common.offload import Lane, PerThread
from nanoclaw_common.paths import Layout
from nanoclaw_common.sessions import refresh_projections, session_routing
from nanoclaw_common.states import ContainerStatus, SessionStatus
from nanoclaw_common.store import CentralStore, InboundReader
from nanoclaw_common.store.async_central import AsyncCentral
from nanoclaw_common.store.rows import Session
from nanoclaw_common.wake import Waker
from nanoclaw_router.commit import Stored
from nanoclaw_router.typing_indicator import TypingTracker
from nanoclaw_router.writer import SessionWriter

log = logger.bind(component="router")


@dataclass
class _Slot:
    current: asyncio.Future[bool]
    follow_up: asyncio.Future[bool] | None = None
    task: asyncio.Future[None] | None = None  # the loop serving this slot


class WakeScheduler:
    def __init__(
        self, waker: Waker, layout: Layout, central_path: Path, *, threads: int = 4
    ) -> None:
        self.waker = waker
        self.layout = layout
        self.central_path = central_path
        self._lane = Lane("wake", threads)
        # Wake threads call the central store directly: they are not on the loop.
        self._stores = PerThread(lambda: CentralStore(self.central_path))
        self._slots: dict[str, _Slot] = {}
        self.wakes = 0
        self.failures = 0

    def request(self, session_id: str) -> asyncio.Future[bool]:
        """Schedule a wake; the future says whether the wake that covers this request
        succeeded."""
        loop = asyncio.get_running_loop()
        slot = self._slots.get(session_id)
        if slot is None:
            future: asyncio.Future[bool] = loop.create_future()
            self._slots[session_id] = _Slot(future)
            self._slots[session_id].task = asyncio.ensure_future(self._run(session_id, future))
            return future
        if slot.follow_up is None:
            slot.follow_up = loop.create_future()
        return slot.follow_up

    async def _run(self, session_id: str, future: asyncio.Future[bool]) -> None:
        while True:
            try:
                woke = await self._lane.run(self._wake, session_id)
            except Exception as exc:  # the thread already logs; never lose the loop
                log.error("wake crashed: {}", exc, session=session_id)
                woke = False
            if not future.done():
                future.set_result(woke)
            slot = self._slots[session_id]
            if slot.follow_up is None:
                del self._slots[session_id]
                return
            future, slot.current, slot.follow_up = slot.follow_up, slot.follow_up, None

    def _wake(self, session_id: str) -> bool:
        central = self._stores.get()
        session = central.get_session(session_id)
        if session is None or session.status != SessionStatus.ACTIVE:
            log.warning("not waking: session gone or closed", session=session_id)
            return False
        try:
            self._refresh(central, session)
        except Exception as exc:
            log.error("projection refresh failed: {}", exc, session=session_id)
            self.failures += 1
            return False
        woke = self.waker.wake(session)
        self.wakes += 1
        if woke:
            log.debug("woken", session=session_id)
        else:
            self.failures += 1
            log.warning("wake failed; the sweeper retries", session=session_id)
        return woke

    def _refresh(self, central: CentralStore, session: Session) -> None:
        """Bring the projections up to date. They rarely change, and writing them takes the
        session DB's write lock (and fsyncs) that the row commits need, so they are compared
        first and written only when they differ."""
        paths = self.layout.session(session.agent_group_id, session.id)
        wanted_destinations = central.resolve_destinations(session.agent_group_id)
        wanted_routing = session_routing(central, session)
        if paths.inbound_db.exists():
            reader = InboundReader(paths.inbound_db)
            try:
                current = (reader.destinations(), reader.routing())
            finally:
                reader.close()
            if current == (wanted_destinations, wanted_routing):
                return
        refresh_projections(central, self.layout, session)

    async def idle(self) -> None:
        """Wait until no wake is in flight (tests, shutdown)."""
        while self._slots:
            pending = [s.follow_up or s.current for s in self._slots.values()]
            await asyncio.wait(pending)

    def close(self) -> None:
        self._lane.shutdown(wait=True)
        self._stores.close_all()


def _session(central: CentralStore, session_id: str) -> Session | None:
    return central.get_session(session_id)


class WakeStage:
    """Wake the sessions an event's rows went to, and show typing in its chat."""

    def __init__(
        self,
        central: AsyncCentral,
        wakes: WakeScheduler,
        writer: SessionWriter,
        typing: TypingTracker | None = None,
    ) -> None:
        self.central = central
        self.wakes = wakes
        self.writer = writer
        self.typing = typing

    async def after_commit(
        self, event: InboundEvent, stored: list[Stored]
    ) -> list[asyncio.Future[bool]]:
        """Request the wakes (they run on the pool); their futures, for the ``before_ack``
        fault, which waits for them."""
        woken = []
        for item in stored:
            if not item.trigger:
                continue
            if not item.result.created and not await self._woken_too_early(item):
                continue
            woken.append(self.wakes.request(item.session.id))
            if self.typing is not None:
                self.typing.start(
                    session_id=item.session.id,
                    agent_group_id=item.session.agent_group_id,
                    channel_type=event.channel_type,
                    platform_id=event.platform_id,
                    thread_id=event.thread_id,
                    message_id=item.row_id,
                )
        return woken

    async def _woken_too_early(self, item: Stored) -> bool:
        """For a re-sent row: did the first attempt die before it woke the session? Only
        then does the re-send wake (see the module docstring)."""
        current = await self.central.read(_session, item.session.id)
        if current is None or current.container_status != ContainerStatus.STOPPED:
            return False
        return await self.writer.still_pending(item.session, item.row_id)
