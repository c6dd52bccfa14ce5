"""The typing indicator while a session works on a message (reference §3.7).

After an engaged message is committed and its session woken, the router shows "typing…" in
the message's chat: at once, then every ``REFRESH_MS``. It stops when the container has acked
every message it was started for, or when the run looks dead: past the start grace the
heartbeat file (touched by the runner's own timer) must be fresh. It pauses for a while after
a reply was delivered, so the indicator does not linger under the answer.

``decide`` is the whole policy, a pure function of the facts and ``now``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from loguru import logger

from nanoclaw_common.channels.base import ChannelAdapter
from nanoclaw_common.clock import now_ms
from nanoclaw_common.hostfs import Dir, UnsafePath, unblock
from nanoclaw_common.paths import Layout
from nanoclaw_common.stall import Stalled, StallGuard
from nanoclaw_common.store import InboundReader, OutboundReader
from nanoclaw_router.waiting import wait_event

log = logger.bind(component="router")

REFRESH_MS: Final = 4_000
GRACE_MS: Final = 15_000
PAUSE_AFTER_DELIVERY_MS: Final = 10_000
MAX_TYPING_MS: Final = 30 * 60 * 1000
TICK_S: Final = 1.0


class TypingAction(StrEnum):
    FIRE = "fire"
    WAIT = "wait"
    STOP = "stop"


@dataclass(frozen=True)
class Facts:
    heartbeat_ms: int | None  # mtime of agent/heartbeat
    work_done: bool  # every tracked message acked completed/failed
    last_delivery_ms: int | None


def decide(
    now: int,
    started_ms: int,
    last_fired_ms: int | None,
    facts: Facts,
    heartbeat_fresh_ms: int,
) -> TypingAction:
    if facts.work_done or now - started_ms > MAX_TYPING_MS:
        return TypingAction.STOP
    in_grace = now - started_ms < GRACE_MS
    alive = facts.heartbeat_ms is not None and now - facts.heartbeat_ms < heartbeat_fresh_ms
    if not in_grace and not alive:
        return TypingAction.STOP
    if (
        facts.last_delivery_ms is not None
        and now - facts.last_delivery_ms < PAUSE_AFTER_DELIVERY_MS
    ):
        return TypingAction.WAIT
    if last_fired_ms is None or now - last_fired_ms >= REFRESH_MS:
        return TypingAction.FIRE
    return TypingAction.WAIT


@dataclass
class Typing:
    session_id: str
    agent_group_id: str
    channel_type: str
    platform_id: str
    thread_id: str | None
    started_ms: int
    message_ids: set[str] = field(default_factory=set)
    last_fired_ms: int | None = None


class TypingTracker:
    def __init__(
        self,
        layout: Layout,
        adapters: Mapping[str, ChannelAdapter],
        *,
        heartbeat_interval_s: float,
        clock: Callable[[], int] = now_ms,
        io_limit_s: float = 10.0,
    ) -> None:
        self.layout = layout
        self.adapters = adapters
        # The facts come from the container's files: read with a deadline, so one session
        # whose files stall (stall.py) ends its own indicator, not everyone's.
        self.session_io = StallGuard(io_limit_s, threads=1, name="typing-io")
        # Fresh means within three runner heartbeats, and never under upstream's 6 s.
        self.heartbeat_fresh_ms = max(6_000, int(heartbeat_interval_s * 3000))
        self.clock = clock
        self.active: dict[tuple[str, str, str, str | None], Typing] = {}
        self._kick: asyncio.Event | None = None  # set by start(): show it now, not next tick

    def start(
        self,
        *,
        session_id: str,
        agent_group_id: str,
        channel_type: str,
        platform_id: str,
        thread_id: str | None,
        message_id: str,
    ) -> None:
        key = (session_id, channel_type, platform_id, thread_id)
        state = self.active.get(key)
        now = self.clock()
        if state is None:
            state = self.active[key] = Typing(
                session_id, agent_group_id, channel_type, platform_id, thread_id, now
            )
        else:
            state.started_ms = now  # a new message restarts the grace window
            state.last_fired_ms = None  # and shows the indicator at once
        state.message_ids.add(message_id)
        if self._kick is not None:
            self._kick.set()

    def facts(self, state: Typing) -> Facts:
        """Read the session's files (blocking; called in a thread)."""
        paths = self.layout.session(state.agent_group_id, state.session_id)
        heartbeat: int | None = None
        with contextlib.suppress(OSError, UnsafePath), Dir.trusted(paths.agent_dir) as agent:
            heartbeat = agent.mtime_ms("heartbeat")  # a regular file's, never through a link
        work_done = False
        try:
            outbound = OutboundReader(paths.outbound_db)
            try:
                work_done = state.message_ids <= outbound.settled_ids()
            finally:
                outbound.close()
        except Exception:  # no outbound.db yet, or busy: not done
            work_done = False
        last_delivery = None
        try:
            inbound = InboundReader(paths.inbound_db)
            try:
                last_delivery = inbound.last_delivered_ms()
            finally:
                inbound.close()
        except Exception:
            last_delivery = None
        return Facts(heartbeat, work_done, last_delivery)

    async def _facts(self, state: Typing) -> Facts | None:
        """``facts`` on a worker, bounded in time; None when the session's files stalled."""
        first = not self.session_io.is_cut_off(state.session_id)
        paths = self.layout.session(state.agent_group_id, state.session_id)
        try:
            return await self.session_io.acall(
                state.session_id,
                "reading the heartbeat and outbound.db",
                lambda: self.facts(state),
                release=lambda: unblock(paths.agent_dir),
            )
        except Stalled as exc:
            if first:
                log.warning("typing stopped: {}", exc, session=state.session_id)
            return None

    async def tick(self) -> int:
        """One pass over the active indicators; returns how many fired."""
        if not self.active:
            return 0
        states = list(self.active.items())
        facts: list[Facts | None] = []
        for _key, state in states:
            facts.append(await self._facts(state))
        fired = 0
        now = self.clock()
        for (key, state), fact in zip(states, facts, strict=True):
            if fact is None:
                self.active.pop(key, None)
                continue
            action = decide(
                now, state.started_ms, state.last_fired_ms, fact, self.heartbeat_fresh_ms
            )
            if action is TypingAction.STOP:
                self.active.pop(key, None)
                log.debug("typing stopped", session=state.session_id)
            elif action is TypingAction.FIRE:
                state.last_fired_ms = now
                adapter = self.adapters.get(state.channel_type)
                if adapter is not None:
                    try:
                        await adapter.set_typing(state.platform_id, state.thread_id)
                        fired += 1
                    except Exception as exc:  # best effort, by design
                        log.debug("typing indicator failed: {}", exc, session=state.session_id)
        return fired

    async def run(self) -> None:
        self._kick = kick = asyncio.Event()
        while True:
            kick.clear()
            try:
                await self.tick()
            except Exception as exc:
                log.error("typing pass failed: {}", exc)
            await wait_event(kick, TICK_S)
