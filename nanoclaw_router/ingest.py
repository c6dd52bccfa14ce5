"""From an event to committed rows: look the chat up, plan (``routing.plan_route``), record
drops, queue denials and approval cards, resolve sessions, commit the rows (``writer``),
then wake the sessions and start their typing indicators.

Exactly-once: a row's id is ``<platform message id>:<agent group id>`` and the insert ignores
an id that holds the same message. An id held by a *different* row (another kind, chat,
sender or text) is a collision: the message goes to an alternative id, and the collision is
a recorded ``id_collision`` drop and a log line (``drops.record_collision``).

``route`` returns only after every row of the event is committed; the
adapter acknowledges the platform after that. A re-sent event therefore changes nothing —
except that its session is woken again if the first attempt died before waking it: the
session's container is ``stopped`` and the row still waits for the agent (not yet settled
by a run). A re-send that arrives after a run answered the row wakes nothing.

Button clicks (``handle_action``) are resolved here too; see docs/internals.md, "Button
clicks (router)".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from loguru import logger

from nanoclaw_common.channels.base import ChannelAdapter
from nanoclaw_common.channels.common import matches_token, parse_webhook_text
from nanoclaw_common.clock import now_ms
from nanoclaw_common.errors import DecodeError
from nanoclaw_common.messages import (
    ActionEvent,
    ChatContent,
    InboundContent,
    InboundEvent,
    QuestionOption,
    QuestionResponse,
    WebhookContent,
)
from nanoclaw_common.paths import Layout
from nanoclaw_common.states import (
    ContainerStatus,
    EngageMode,
    IgnoredMessagePolicy,
    SessionMode,
    UnknownSenderPolicy,
)
from nanoclaw_common.store import CentralStore, InsertResult, NewInbound
from nanoclaw_common.store.rows import (
    MessagingGroup,
    PendingApproval,
    PendingChannelApproval,
    PendingQuestion,
    PendingSenderApproval,
    Session,
)
from nanoclaw_common.untrusted import shown, shown_text
from nanoclaw_router.approvals import Approvals, Registration, decode_options
from nanoclaw_router.clicks import HostCard, card_messages, clicked_on
from nanoclaw_router.drops import record_collision
from nanoclaw_router.facts import CentralFacts
from nanoclaw_router.faults import Faults
from nanoclaw_router.locks import KeyedLocks
from nanoclaw_router.outbox import OutboxSender
from nanoclaw_router.routing import ChatView, Deliver, DropReason, WiringView, plan_route
from nanoclaw_router.typing_indicator import TypingTracker
from nanoclaw_router.wakes import WakeScheduler
from nanoclaw_router.writer import SessionWriter

log = logger.bind(component="router")

TOUCH_INTERVAL_MS: Final = 1_000
Clicked = PendingApproval | PendingChannelApproval | PendingSenderApproval | PendingQuestion


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


class Ingest:
    def __init__(
        self,
        central: CentralStore,
        layout: Layout,
        adapters: Mapping[str, ChannelAdapter],
        *,
        writer: SessionWriter,
        wakes: WakeScheduler,
        outbox: OutboxSender,
        typing: TypingTracker | None = None,
        faults: Faults | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.central = central
        self.layout = layout
        self.adapters = adapters
        self.writer = writer
        self.wakes = wakes
        self.outbox = outbox
        self.typing = typing
        self.faults = faults or Faults()
        self.clock = clock
        self.approvals = Approvals(central, layout, adapters, outbox, self._replay, clock=clock)
        self.facts = CentralFacts(central)
        self._touched: dict[str, int] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._chat_locks = KeyedLocks()

    # -- events ---------------------------------------------------------------------------

    async def route(self, event: InboundEvent) -> list[Stored]:
        """Route one event; returns after its rows are committed (and, with the
        ``before_ack`` fault armed, after its wakes).

        Events of one chat are planned and queued for commit one at a time, in arrival
        order (a FIFO lock per chat), so their rows get seqs in that order; the commits
        themselves are awaited outside the lock, so a chat's messages share transactions
        (group commit) instead of each waiting for the previous one's fsync."""
        facts = {"channel": event.channel_type, "message": event.message_id}
        self.faults.crash("before_commit", **facts)
        adapter = self.adapters.get(event.channel_type)
        if event.thread_id is not None and adapter is not None and not adapter.supports_threads:
            event = _without_thread(event)
        self.facts.refresh()
        # Outside the chat lock: a name reply replays an event of possibly the same chat.
        awaiting = not event.is_group and bool(self.facts.awaiting_names())
        if awaiting and await self.approvals.intercept_name_reply(event):
            self.facts.clear()
            return []
        async with self._chat_locks.hold((event.channel_type, event.platform_id)):
            queued = await self._plan_and_queue(event, adapter)
        stored = await self._committed(queued)
        self.faults.crash("after_commit", **facts)
        woken = await self._after_commit(event, stored)
        if self.faults.armed("before_ack"):
            await asyncio.gather(*woken)
            self.faults.crash("before_ack", **facts)
        return stored

    async def _plan_and_queue(
        self, event: InboundEvent, adapter: ChannelAdapter | None
    ) -> list[Queued]:
        chat = self.facts.chat(event.channel_type, event.platform_id)
        if chat is None:
            if not event.is_mention:
                return []  # chatter in a chat we do not know: no trace (upstream wrote users)
            chat = self.central.create_messaging_group(
                event.channel_type,
                event.platform_id,
                name=event.chat_name,
                is_group=event.is_group,
                unknown_sender_policy=UnknownSenderPolicy.REQUEST_APPROVAL,
                now=self.clock(),
            )
            self.facts.remember_chat(chat)
            log.info("new chat {}/{}", event.channel_type, shown(event.platform_id), chat=chat.id)
        wirings = self.facts.wirings(chat.id)
        if not wirings:
            if event.is_mention and chat.denied_at_ms is None:
                outcome = await self.approvals.request_registration(event, chat)
                self.facts.clear()  # it may have created the approver's DM chat
                reason = (
                    DropReason.REGISTRATION_RATE_LIMITED
                    if outcome is Registration.RATE_LIMITED
                    else DropReason.NO_AGENT_WIRED
                )
                self._drop(event, chat, reason, None, None)
            return []
        self._remember_sender(event)
        view = self._view(event, chat, wirings, adapter)
        plan = plan_route(event, view)
        for drop in plan.drops:
            self._drop(event, chat, drop.reason, drop.agent_group_id, drop.detail)
        for denial in plan.denials:
            self.outbox.queue_text(
                f"deny-{event.message_id}:{denial.wiring.agent_group_id}",
                event.channel_type,
                event.platform_id,
                event.thread_id,
                f"Permission denied: {denial.command} requires admin access.",
            )
        if plan.ask_sender_approval is not None:
            await self.approvals.request_sender_approval(event, chat, plan.ask_sender_approval)
            self.facts.clear()
        return self._queue(event, chat, plan.deliveries)

    async def _replay(self, event: InboundEvent) -> None:
        """An approved event, routed again from the start (its rows dedupe by id). The
        approval just changed wirings or memberships through our own connection, which does
        not move ``data_version``: forget the cached facts first."""
        self.facts.clear()
        await self.route(event)

    def _view(
        self,
        event: InboundEvent,
        chat: MessagingGroup,
        wirings: list[Any],
        adapter: ChannelAdapter | None,
    ) -> ChatView:
        threads = adapter.supports_threads if adapter is not None else False
        views = []
        for wiring in wirings:
            group = wiring.agent_group_id
            exists = self.facts.group_exists(group)
            active = False
            per_thread = threads and wiring.session_mode != SessionMode.AGENT_SHARED
            # Needed for mention-sticky, and for accumulating into a thread (context never
            # opens a thread's session: see routing.plan_route).
            wanted = wiring.engage_mode == EngageMode.MENTION_STICKY or (
                per_thread
                and event.thread_id is not None
                and wiring.ignored_message_policy == IgnoredMessagePolicy.ACCUMULATE
            )
            if exists and wanted and chat.is_group:
                thread = event.thread_id if per_thread else None
                active = self.facts.session(group, chat.id, thread, newest=False) is not None
            known, admin = self.facts.access(event.sender_id, group) if exists else (False, False)
            views.append(
                WiringView(
                    wiring=wiring,
                    group_exists=exists,
                    sender_known=known,
                    sender_admin=admin,
                    active_session=active,
                )
            )
        return ChatView(chat, views, threads)

    def _queue(
        self, event: InboundEvent, chat: MessagingGroup, deliveries: list[Deliver]
    ) -> list[Queued]:
        if not deliveries:
            return []
        content = _content(event)
        queued = []
        for delivery in deliveries:
            session = self._session(delivery, chat, event.thread_id)
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

    async def _committed(self, queued: list[Queued]) -> list[Stored]:
        # Shielded: a cancelled caller (SIGTERM) must not cancel the commit bookkeeping.
        results = await asyncio.shield(asyncio.gather(*(q.future for q in queued)))
        stored = []
        for item, result in zip(queued, results, strict=True):
            session, row = item.session, item.row
            stored.append(Stored(session, result.id, row.trigger, result))
            if result.collided_with is not None:
                record_collision(self.central, session, row, result, self.clock())
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
            self._touch(session.id)
        return stored

    def _session(self, delivery: Deliver, chat: MessagingGroup, thread: str | None) -> Session:
        group = delivery.wiring.agent_group_id
        mode = delivery.session_mode
        # A read first: resolve_session takes the write lock even when the session exists.
        shared = mode == SessionMode.AGENT_SHARED
        thread = thread if mode == SessionMode.PER_THREAD else None
        found = self.facts.session(group, chat.id, thread, newest=shared)
        if found is not None:
            return found
        session, created = self.central.resolve_session(
            group, chat.id, thread, mode, now=self.clock()
        )
        self.facts.remember_session(session, thread, newest=shared)
        if created:
            log.info("new session ({})", mode, session=session.id, group=group, chat=chat.id)
        return session

    async def _after_commit(
        self, event: InboundEvent, stored: list[Stored]
    ) -> list[asyncio.Future[bool]]:
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
        then does the re-send wake. The container is still ``stopped`` and the row still
        waits for the agent; a stopped container whose run already answered the row (a
        re-send that arrives after the run ended) needs no wake."""
        current = self.central.get_session(item.session.id)
        if current is None or current.container_status != ContainerStatus.STOPPED:
            return False
        return await self.writer.still_pending(item.session, item.row_id)

    def _touch(self, session_id: str) -> None:
        now = self.clock()
        if now - self._touched.get(session_id, 0) >= TOUCH_INTERVAL_MS:
            self._touched[session_id] = now
            self.central.touch_session(session_id, now=now)

    def _remember_sender(self, event: InboundEvent) -> None:
        """Upsert the sender's user row, but only when it is new or renamed."""
        name = event.sender_name or None
        known = self.facts.users
        if event.sender_id in known and known[event.sender_id] == name:
            return
        kind = event.sender_id.split(":", 1)[0] if ":" in event.sender_id else event.channel_type
        self.central.upsert_user(event.sender_id, kind, name, now=self.clock())
        known[event.sender_id] = name

    def _drop(
        self,
        event: InboundEvent,
        chat: MessagingGroup | None,
        reason: DropReason,
        agent_group_id: str | None,
        detail: str | None,
    ) -> None:
        self.central.record_drop(
            event.channel_type,
            event.platform_id,
            reason,
            user_id=event.sender_id,
            sender_name=event.sender_name or None,
            messaging_group_id=chat.id if chat else None,
            agent_group_id=agent_group_id,
            detail=detail,
            now=self.clock(),
        )
        log.info(
            "dropped {} ({}{})",
            shown(event.message_id),
            reason,
            f": {shown_text(detail)}" if detail else "",
            chat=chat.id if chat else None,
            group=agent_group_id,
        )

    # -- button clicks --------------------------------------------------------------------

    def find_clicked(self, token: str) -> Clicked | None:
        """What a click's question token points at (see docs/internals.md)."""
        if not token.startswith("#"):
            return (
                self.central.get_pending_approval(token)
                or self.central.find_channel_approval_by_card(token)
                or self.central.get_sender_approval(token)
                or self.central.get_pending_question(token)
            )
        for approval in self.central.list_pending_approvals("pending"):
            if matches_token(approval.approval_id, token):
                return approval
        for card_id in self.central.list_channel_approval_cards():
            if matches_token(card_id, token):
                return self.central.find_channel_approval_by_card(card_id)
        for sender in self.central.list_sender_approvals():
            if matches_token(sender.id, token):
                return sender
        for question in self.central.list_pending_questions():
            if matches_token(question.question_id, token):
                return question
        return None

    async def handle_action(self, action: ActionEvent) -> str:
        """Apply a click; returns what happened (for logs and tests)."""
        try:
            return await self._handle_action(action)
        finally:
            self.facts.clear()  # approvals wire chats, add members, create groups

    async def _handle_action(self, action: ActionEvent) -> str:
        target = self.find_clicked(action.question_id)
        if target is None:
            log.info("click on an unknown or settled card {}", shown(action.question_id))
            return "gone"
        if not isinstance(target, PendingQuestion) and not self._on_the_card(target, action):
            return "not_on_card"
        try:
            options = decode_options(target.options_json)
        except DecodeError as exc:
            log.error("card {} has unreadable options: {}", shown(action.question_id), exc)
            return "invalid"
        index = int(action.value) if action.value.isdigit() else -1
        if not 0 <= index < len(options):
            log.warning(
                "click with option {} not on card {}",
                shown(action.value),
                shown(action.question_id),
            )
            return "invalid"
        option = options[index]
        clicker = action.user_id
        if isinstance(target, PendingApproval):
            # Delivery applies approvals; the router only records the decision.
            decided = self.central.decide_approval(
                target.approval_id, clicker, option.value, now=self.clock()
            )
            log.info("approval {} click by {}: {}", target.approval_id, shown(clicker), decided)
            return str(decided)
        outcome: str
        if isinstance(target, PendingChannelApproval):
            outcome = await self.approvals.on_registration_click(target, clicker, option.value)
        elif isinstance(target, PendingSenderApproval):
            outcome = await self.approvals.on_sender_click(target, clicker, option.value)
        else:
            outcome = await self._answer_question(target, action, option)
        if outcome not in ("unauthorized", "gone", "expired"):
            self._edit_card(action, target.title, option)
        return outcome

    def _on_the_card(self, card: HostCard, action: ActionEvent) -> bool:
        """A click counts for an approval or a registration only when made on its card
        (``clicks``); any other is refused and recorded as a drop."""
        if isinstance(card, PendingApproval):
            card_id = card.approval_id
        elif isinstance(card, PendingSenderApproval):
            card_id = card.id
        else:
            card_id = self.central.channel_approval_card(card.messaging_group_id) or ""
        if clicked_on(action, card_messages(self.central, card, card_id)):
            return True
        self.central.record_drop(
            action.channel_type,
            action.platform_id,
            DropReason.CLICK_NOT_ON_CARD,
            user_id=action.user_id,
            detail=f"a click for card {card_id} on message {action.platform_message_id}",
            now=self.clock(),
        )
        log.warning(
            "refused a click by {} for card {}: not made on that card",
            shown(action.user_id),
            card_id,
        )
        return False

    async def _answer_question(
        self, question: PendingQuestion, action: ActionEvent, option: QuestionOption
    ) -> str:
        now = self.clock()
        if question.target_user_id is not None:
            if action.user_id != question.target_user_id:
                log.warning(
                    "ignored answer to {} by {}", question.question_id, shown(action.user_id)
                )
                return "unauthorized"
        elif (action.channel_type, action.platform_id) != (
            question.channel_type,
            question.platform_id,
        ):
            log.warning("ignored answer to {} from another chat", question.question_id)
            return "unauthorized"
        if question.expires_at_ms is not None and now >= question.expires_at_ms:
            return "expired"
        session = self.central.get_session(question.session_id)
        if session is None:
            self.central.delete_pending_question(question.question_id)
            return "gone"
        # Delivery keys an agent's question on the host; the agent waits for its own id.
        asked_as = self.central.agent_question_id(question.question_id) or question.question_id
        row = NewInbound(
            id=f"qr-{question.question_id}",
            content=QuestionResponse(
                question_id=asked_as,
                selected_option=option.value,
                user_id=action.user_id,
            ),
            timestamp_ms=now,
            channel_type=question.channel_type,
            platform_id=question.platform_id,
            thread_id=question.thread_id,
        )
        result = await self.writer.write(session, row, [])
        self.central.delete_pending_question(question.question_id)
        log.info(
            "question {} answered by {}",
            question.question_id,
            shown(action.user_id),
            session=session.id,
        )
        if result.created:
            self.wakes.request(session.id)
        return "answered"

    def _edit_card(self, action: ActionEvent, title: str, option: QuestionOption) -> None:
        """Show the choice on the card (best effort, in the background)."""
        adapter = self.adapters.get(action.channel_type)
        if adapter is None or action.platform_message_id is None:
            return
        text = f"{title}\n\n{option.selected_label or option.label}" if title else option.label
        message_id = action.platform_message_id

        async def edit() -> None:
            try:
                await adapter.edit_text(action.platform_id, None, message_id, text)
            except Exception as exc:
                log.debug("card edit failed: {}", shown_text(exc))

        task = asyncio.ensure_future(edit())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def settle_background(self, grace_s: float) -> None:
        """Let the best-effort card edits in flight finish (at most ``grace_s``), then cancel
        the rest and wait for them. Called before the adapters close: a request cancelled
        after its client closed leaves its socket open."""
        pending = set(self._background)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=grace_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)


def _without_thread(event: InboundEvent) -> InboundEvent:
    return msgspec.structs.replace(event, thread_id=None)


def _content(event: InboundEvent) -> InboundContent:
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
