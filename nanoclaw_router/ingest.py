"""From an event to committed rows, in three stages that each event passes once, in this
order (docs/internals.md, "Router"):

1. **plan**: the facts ``central.db`` holds about the event (``facts.CentralFacts``, cached)
   and the decision, a pure function of the two (``routing.plan_event``);
2. **cards or commit**: what the plan decided is recorded, the cards it asks for are sent
   and its rows are committed (``commit.Commit``, ``cards.Cards``);
3. **wake**: the sessions that got a row to answer are woken and typing is shown
   (``wakes.WakeStage``).

An approver's DM that names a new agent (``decisions.Decisions.name_reply``) is the one event
that takes another way: it answers a registration card, and the message that asked for the
registration is replayed through all three stages as an event of its own. It is recognised
in its chat's turn (under the chat's lock) and handled after it (the replayed message may be
of the same chat).

``route`` returns only after every row of the event is committed; the adapter acknowledges
the platform after that. A re-sent event therefore changes nothing, except that its session
is woken again if the first attempt died before waking it (``wakes``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import msgspec

from nanoclaw_common.channels.base import ChannelAdapter
from nanoclaw_common.messages import InboundEvent
from nanoclaw_common.store.rows import PendingChannelApproval
from nanoclaw_router.commit import Commit, Queued, Stored
from nanoclaw_router.decisions import Decisions
from nanoclaw_router.facts import CentralFacts
from nanoclaw_router.faults import Faults
from nanoclaw_router.locks import KeyedLocks
from nanoclaw_router.routing import plan_event
from nanoclaw_router.wakes import WakeStage


class Ingest:
    def __init__(
        self,
        adapters: Mapping[str, ChannelAdapter],
        *,
        facts: CentralFacts,
        decisions: Decisions,
        commit: Commit,
        wake: WakeStage,
        faults: Faults | None = None,
    ) -> None:
        self.adapters = adapters
        self.facts = facts
        self.decisions = decisions
        self.commit = commit
        self.wake = wake
        self.faults = faults or Faults()
        self.chat_locks = KeyedLocks()

    async def route(self, event: InboundEvent) -> list[Stored]:
        """Route one event; returns after its rows are committed (and, with the
        ``before_ack`` fault armed, after its wakes).

        Events of one chat are planned and queued for commit one at a time, in arrival
        order (a FIFO lock per chat, taken before the first await), so their rows get seqs
        in that order; the commits themselves are awaited outside the lock, so a chat's
        messages share transactions (group commit) instead of each waiting for the previous
        one's fsync."""
        where = {"channel": event.channel_type, "message": event.message_id}
        self.faults.crash("before_commit", **where)
        adapter = self.adapters.get(event.channel_type)
        threads = adapter.supports_threads if adapter is not None else False
        if event.thread_id is not None and adapter is not None and not threads:
            event = msgspec.structs.replace(event, thread_id=None)
        self.facts.refresh()
        # The chat's lock before any await: its place in the chat's order is its arrival.
        queued: list[Queued] = []
        async with self.chat_locks.hold((event.channel_type, event.platform_id)):
            naming = await self._naming(event)
            if naming is None:
                facts = await self.facts.gather(event, threads)
                plan = plan_event(event, facts)
                queued = await self.commit.carry_out(event, facts, plan)
        if naming is not None:
            # Outside the chat lock: a name reply replays an event of possibly the same chat.
            await self.decisions.name_reply(event, naming)
            self.facts.clear()
            return []
        stored = await self.commit.committed(queued)
        self.faults.crash("after_commit", **where)
        woken = await self.wake.after_commit(event, stored)
        if self.faults.armed("before_ack"):
            await asyncio.gather(*woken)
            self.faults.crash("before_ack", **where)
        return stored

    async def _naming(self, event: InboundEvent) -> PendingChannelApproval | None:
        """The registration a DM names an agent for (``Decisions.naming``); looked up only
        while some registration waits for a name (cached)."""
        if event.is_group or not await self.facts.awaiting_names():
            return None
        return await self.decisions.naming(event)

    async def replay(self, event: InboundEvent) -> None:
        """An approved event, routed again from the start (its rows dedupe by id). The
        approval just changed wirings or memberships: forget the cached facts first (the
        next ``refresh`` would, but a gather of the same event may come before it)."""
        self.facts.clear()
        await self.route(event)
