"""An event's second stage: carry out its plan (``routing.plan_event``). What the plan decided
about ``central.db`` is recorded (a new chat, drops, command denials: one write each step),
the cards it asks for are sent (``cards.Cards``), the sessions its rows go to are found (in
the facts ``gather`` read) or created, and the rows are queued for their sessions' next
transactions (``writer``). ``committed`` then waits for those transactions and records what
they found. The sender's user row and the sessions' last activity are ``bookkeeping``: no
event waits for them, so an event into a known session writes nothing to ``central.db``.

Exactly-once: a row's id is ``<platform message id>:<agent group id>`` and the insert ignores
an id that holds the same message. An id held by a *different* row (another kind, chat,
sender or text) is a collision: the message goes to an alternative id, and the collision is
a recorded ``id_collision`` drop and a log line (``drops.record_collision``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from loguru import logger

from nanoclaw_common.channels.common import parse_webhook_text
from nanoclaw_common.clock import now_ms
from nanoclaw_common.errors import DecodeError
from nanoclaw_common.messages import ChatContent, InboundContent, InboundEvent, WebhookContent
from nanoclaw_common.states import SessionMode, UnknownSenderPolicy
from nanoclaw_common.store import CentralStore, InsertResult, NewInbound
from nanoclaw_common.store.async_central import AsyncCentral
from nanoclaw_common.store.rows import MessagingGroup, Session
from nanoclaw_common.untrusted import shown, shown_text
from nanoclaw_router import outbox
from nanoclaw_router.bookkeeping import Bookkeeping, sender_of
from nanoclaw_router.cards import Cards, Registration
from nanoclaw_router.drops import record_collision
from nanoclaw_router.facts import CentralFacts, delivery_session_key
from nanoclaw_router.routing import Deliver, Drop, DropReason, EventFacts, Plan
from nanoclaw_router.writer import SessionWriter

log = logger.bind(component="router")


@dataclass(frozen=True)
class Queued:
    session: Session
    row: NewInbound
    future: asyncio.Future[InsertResult]


@dataclass(frozen=True)
class Stored:
    session: Session
    row_id: str
    trigger: bool
    result: InsertResult


# -- the store's part (plain functions of the store) -----------------------------------------


def create_chat(central: CentralStore, event: InboundEvent, now: int) -> MessagingGroup:
    """The chat of a mention nobody knew: strangers in it need an approver's yes."""
    return central.create_messaging_group(
        event.channel_type,
        event.platform_id,
        name=event.chat_name,
        is_group=event.is_group,
        unknown_sender_policy=UnknownSenderPolicy.REQUEST_APPROVAL,
        now=now,
    )


def record_drops(
    central: CentralStore,
    event: InboundEvent,
    chat: MessagingGroup | None,
    drops: list[Drop],
    now: int,
) -> None:
    for drop in drops:
        central.record_drop(
            event.channel_type,
            event.platform_id,
            drop.reason,
            user_id=event.sender_id,
            sender_name=event.sender_name or None,
            messaging_group_id=chat.id if chat else None,
            agent_group_id=drop.agent_group_id,
            detail=drop.detail,
            now=now,
        )
        log.info(
            "dropped {} ({}{})",
            shown(event.message_id),
            drop.reason,
            f": {shown_text(drop.detail)}" if drop.detail else "",
            chat=chat.id if chat else None,
            group=drop.agent_group_id,
        )


def record_plan(
    central: CentralStore,
    event: InboundEvent,
    chat: MessagingGroup | None,
    plan: Plan,
    *,
    now: int,
    queued_ms: int,
) -> int:
    """The plan's drops, then its denials; how many denials were queued."""
    record_drops(central, event, chat, plan.drops, now)
    return queue_denials(central, event, plan, queued_ms)


def queue_denials(central: CentralStore, event: InboundEvent, plan: Plan, now: int) -> int:
    """Tell the sender of an admin command they may not use (through the router's outbox)."""
    for denial in plan.denials:
        outbox.queue_text(
            central,
            f"deny-{event.message_id}:{denial.wiring.agent_group_id}",
            channel_type=event.channel_type,
            platform_id=event.platform_id,
            thread_id=event.thread_id,
            text=f"Permission denied: {denial.command} requires admin access.",
            now=now,
        )
    return len(plan.denials)


def resolve_session(
    central: CentralStore, delivery: Deliver, chat: MessagingGroup, thread: str | None, now: int
) -> tuple[Session, bool]:
    """Find or create the session a delivery goes to; True when created."""
    mode = delivery.session_mode
    return central.resolve_session(
        delivery.wiring.agent_group_id,
        chat.id,
        thread if mode == SessionMode.PER_THREAD else None,
        mode,
        now=now,
    )


def content_of(event: InboundEvent) -> InboundContent:
    if event.channel_type == "webhook":
        try:
            body = parse_webhook_text(event.text)
            return WebhookContent(source=event.platform_id, event=body.event, payload=body.payload)
        except DecodeError:
            pass  # not from our webhook adapter: keep it as text
    return ChatContent(
        text=event.text,
        sender_id=event.sender_id,
        sender_name=event.sender_name,
        reply_to=event.reply_to,
    )


class Commit:
    def __init__(
        self,
        central: AsyncCentral,
        *,
        facts: CentralFacts,
        cards: Cards,
        writer: SessionWriter,
        sender: outbox.OutboxSender,
        bookkeeping: Bookkeeping,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.central = central
        self.facts = facts
        self.cards = cards
        self.writer = writer
        self.sender = sender
        self.bookkeeping = bookkeeping
        self.clock = clock

    async def carry_out(self, event: InboundEvent, facts: EventFacts, plan: Plan) -> list[Queued]:
        """Record the plan, send its cards, queue its rows; the rows queued."""
        chat = facts.chat
        if plan.new_chat:
            chat = await self.central.write(create_chat, event, self.clock())
            self.facts.remember_chat(chat)
            log.info("new chat {}/{}", event.channel_type, shown(event.platform_id), chat=chat.id)
        assert chat is not None or not (plan.ask_registration or plan.deliveries)
        if plan.ask_registration and chat is not None:
            outcome = await self.cards.ask_registration(event, chat)
            self.facts.clear()  # it may have created the approver's DM chat
            reason = (
                DropReason.REGISTRATION_RATE_LIMITED
                if outcome is Registration.RATE_LIMITED
                else DropReason.NO_AGENT_WIRED
            )
            await self.central.write(record_drops, event, chat, [Drop(reason)], self.clock())
            return []
        if plan.remember_sender:
            self.bookkeeping.remember(sender_of(event, self.clock()))
        if plan.drops or plan.denials:
            denied = await self.central.write(
                record_plan, event, chat, plan, now=self.clock(), queued_ms=self.sender.clock()
            )
            if denied:
                self.sender.kick()
        if plan.ask_sender_approval is not None and chat is not None:
            await self.cards.ask_sender(event, chat, plan.ask_sender_approval)
            self.facts.clear()
        if chat is None:
            return []
        return await self._queue(event, facts, chat, plan.deliveries)

    async def _queue(
        self,
        event: InboundEvent,
        facts: EventFacts,
        chat: MessagingGroup,
        deliveries: list[Deliver],
    ) -> list[Queued]:
        if not deliveries:
            return []
        content = content_of(event)
        queued = []
        for delivery in deliveries:
            session = await self._session(delivery, facts, chat, event.thread_id)
            row = NewInbound(
                id=f"{event.message_id}:{delivery.wiring.agent_group_id}",
                content=content,
                timestamp_ms=event.timestamp_ms,
                channel_type=event.channel_type,
                platform_id=event.platform_id,
                thread_id=event.thread_id,
                trigger=delivery.trigger,
            )
            future = self.writer.submit(session, row, list(event.attachments))
            queued.append(Queued(session, row, future))
        return queued

    async def _session(
        self, delivery: Deliver, facts: EventFacts, chat: MessagingGroup, thread: str | None
    ) -> Session:
        key = delivery_session_key(delivery.wiring, chat, thread, facts.threads_supported)
        # Found while gathering the facts: resolve_session takes the write lock even when
        # the session exists.
        found = self.facts.cached_session(key)
        if found is not None:
            return found
        session, created = await self.central.write(
            resolve_session, delivery, chat, thread, self.clock()
        )
        self.facts.remember_session(key, session)
        if created:
            log.info(
                "new session ({})",
                delivery.session_mode,
                session=session.id,
                group=delivery.wiring.agent_group_id,
                chat=chat.id,
            )
        return session

    async def committed(self, queued: list[Queued]) -> list[Stored]:
        """Wait for the rows' transactions; collisions are recorded, sessions touched (in the
        bookkeeping)."""
        # Shielded: a cancelled caller (SIGTERM) must not cancel the commit bookkeeping.
        results = await asyncio.shield(asyncio.gather(*(q.future for q in queued)))
        stored = []
        for item, result in zip(queued, results, strict=True):
            session, row = item.session, item.row
            stored.append(Stored(session, result.id, row.trigger, result))
            if result.collided_with is not None:
                await self.central.write(record_collision, session, row, result, self.clock())
            elif result.created:
                log.info(
                    "stored seq={} ({})",
                    result.seq,
                    "wake" if row.trigger else "context",
                    session=session.id,
                    message=row.id,
                )
            else:
                log.info(
                    "duplicate ignored (platform re-send)",
                    session=session.id,
                    message=shown(row.id),
                )
            self.bookkeeping.touch(session.id, self.clock())
        return stored
