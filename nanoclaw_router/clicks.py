"""Button clicks: which card a click is for, whether it counts, and what it does
(docs/internals.md, "Button clicks (router)").

A click's question token names, in this order: an install approval (sent by delivery: the
router only records the decision, delivery applies it), a chat registration or an
unknown-sender approval (the router's own cards: ``decisions.Decisions``), or an agent's
question (the answer becomes a row in the question's session, which is woken).

A card's question id alone does not prove the click was made on that card: an agent can post
a card of its own (delivery keys those ``aq-…``, but defence in depth does not rely on one
layer) and a forwarded or look-alike message can carry any button data. So a click counts
for a host card only when it arrives **on that card**: from the chat the card was posted in
and, where the platform names the clicked message (Telegram, Slack), on the message the card
was posted as, as recorded when it was sent (``pending_approvals.platform_message_id``, or
``router_outbox`` for the router's own cards). A card whose message id was never recorded
(its send's answer was lost in a crash) cannot be clicked; a newer copy of it can. Any other
click is refused and recorded as a ``click_not_on_card`` drop.

The terminal chat's click frames name the question but no message (the chat client shows
each card once and answers with its question id): there the chat must match. Nothing else
can post into the terminal with a host card's id, because agent questions are re-keyed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import msgspec
from loguru import logger

from nanoclaw_common.channels.base import ChannelAdapter
from nanoclaw_common.channels.common import matches_token
from nanoclaw_common.clock import now_ms
from nanoclaw_common.errors import DecodeError
from nanoclaw_common.messages import ActionEvent, QuestionOption, QuestionResponse
from nanoclaw_common.store import CentralStore, NewInbound
from nanoclaw_common.store.async_central import AsyncCentral
from nanoclaw_common.store.rows import (
    PendingApproval,
    PendingChannelApproval,
    PendingQuestion,
    PendingSenderApproval,
    Session,
)
from nanoclaw_common.untrusted import shown, shown_text
from nanoclaw_router.decisions import Decisions
from nanoclaw_router.facts import CentralFacts
from nanoclaw_router.routing import DropReason
from nanoclaw_router.wakes import WakeScheduler
from nanoclaw_router.writer import SessionWriter

log = logger.bind(component="router")

# Channels whose clicks never name the clicked message (see the module docstring).
NO_MESSAGE_IN_CLICKS: Final = frozenset({"cli"})

CardMessage = tuple[str | None, str | None, str | None]  # channel, chat, platform message
HostCard = PendingApproval | PendingChannelApproval | PendingSenderApproval
Clicked = HostCard | PendingQuestion


def clicked_on(action: ActionEvent, cards: Iterable[CardMessage]) -> bool:
    """True when ``action`` was made on one of ``cards``."""
    for channel_type, platform_id, platform_message_id in cards:
        if (channel_type, platform_id) != (action.channel_type, action.platform_id):
            continue
        if action.platform_message_id is None:
            if action.channel_type in NO_MESSAGE_IN_CLICKS:
                return True
            continue
        if platform_message_id is not None and platform_message_id == action.platform_message_id:
            return True
    return False


def card_messages(central: CentralStore, card: HostCard, card_id: str) -> list[CardMessage]:
    """Where the card (``card_id``: the question id its buttons carry) was posted."""
    if isinstance(card, PendingApproval):
        return [(card.channel_type, card.platform_id, card.platform_message_id)]
    return list(central.router_card_messages(card_id))


def decode_options(options_json: str) -> list[QuestionOption]:
    try:
        return msgspec.json.decode(options_json, type=list[QuestionOption])
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise DecodeError(f"stored card options are invalid: {exc}") from None


def find_clicked(central: CentralStore, token: str) -> Clicked | None:
    """What a click's question token points at (see the module docstring)."""
    if not token.startswith("#"):
        return (
            central.get_pending_approval(token)
            or central.find_channel_approval_by_card(token)
            or central.get_sender_approval(token)
            or central.get_pending_question(token)
        )
    for approval in central.list_pending_approvals("pending"):
        if matches_token(approval.approval_id, token):
            return approval
    for card_id in central.list_channel_approval_cards():
        if matches_token(card_id, token):
            return central.find_channel_approval_by_card(card_id)
    for sender in central.list_sender_approvals():
        if matches_token(sender.id, token):
            return sender
    for question in central.list_pending_questions():
        if matches_token(question.question_id, token):
            return question
    return None


def where_posted(central: CentralStore, card: HostCard) -> tuple[str, list[CardMessage]]:
    """The card's id (the question id its buttons carry) and where it was posted."""
    if isinstance(card, PendingApproval):
        card_id = card.approval_id
    elif isinstance(card, PendingSenderApproval):
        card_id = card.id
    else:
        card_id = central.channel_approval_card(card.messaging_group_id) or ""
    return card_id, card_messages(central, card, card_id)


def _refuse_click(central: CentralStore, action: ActionEvent, card_id: str, now: int) -> None:
    central.record_drop(
        action.channel_type,
        action.platform_id,
        DropReason.CLICK_NOT_ON_CARD,
        user_id=action.user_id,
        detail=f"a click for card {card_id} on message {action.platform_message_id}",
        now=now,
    )


def _decide(central: CentralStore, approval_id: str, clicker: str, value: str, now: int) -> str:
    return str(central.decide_approval(approval_id, clicker, value, now=now))


def _question_session(
    central: CentralStore, question: PendingQuestion
) -> tuple[Session | None, str]:
    """The question's session (None: gone) and the id the agent asked under (delivery keys
    an agent's question on the host)."""
    session = central.get_session(question.session_id)
    if session is None:
        return None, question.question_id
    return session, central.agent_question_id(question.question_id) or question.question_id


def _forget_question(central: CentralStore, question_id: str) -> None:
    central.delete_pending_question(question_id)


class Clicks:
    def __init__(
        self,
        central: AsyncCentral,
        adapters: Mapping[str, ChannelAdapter],
        *,
        facts: CentralFacts,
        decisions: Decisions,
        writer: SessionWriter,
        wakes: WakeScheduler,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.central = central
        self.adapters = adapters
        self.facts = facts
        self.decisions = decisions
        self.writer = writer
        self.wakes = wakes
        self.clock = clock
        self._background: set[asyncio.Task[Any]] = set()

    async def handle_action(self, action: ActionEvent) -> str:
        """Apply a click; returns what happened (for logs and tests)."""
        try:
            return await self._handle_action(action)
        finally:
            self.facts.clear()  # approvals wire chats, add members, create groups

    async def _handle_action(self, action: ActionEvent) -> str:
        target = await self.central.read(find_clicked, action.question_id)
        if target is None:
            log.info("click on an unknown or settled card {}", shown(action.question_id))
            return "gone"
        if not isinstance(target, PendingQuestion) and not await self._on_the_card(target, action):
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
            decided = await self.central.write(
                _decide, target.approval_id, clicker, option.value, self.clock()
            )
            log.info("approval {} click by {}: {}", target.approval_id, shown(clicker), decided)
            return str(decided)
        outcome: str
        if isinstance(target, PendingChannelApproval):
            outcome = await self.decisions.on_registration_click(target, clicker, option.value)
        elif isinstance(target, PendingSenderApproval):
            outcome = await self.decisions.on_sender_click(target, clicker, option.value)
        else:
            outcome = await self._answer_question(target, action, option)
        if outcome not in ("unauthorized", "gone", "expired"):
            self._edit_card(action, target.title, option)
        return outcome

    async def _on_the_card(self, card: HostCard, action: ActionEvent) -> bool:
        """A click counts for an approval or a registration only when made on its card; any
        other is refused and recorded as a drop."""
        card_id, posted = await self.central.read(where_posted, card)
        if clicked_on(action, posted):
            return True
        await self.central.write(_refuse_click, action, card_id, self.clock())
        log.warning(
            "refused a click by {} for card {}: not made on that card",
            shown(action.user_id),
            card_id,
        )
        return False

    async def _answer_question(
        self, question: PendingQuestion, action: ActionEvent, option: QuestionOption
    ) -> str:
        """An agent's question: only ``target_user_id``'s click counts (when NULL: anyone in
        the card's chat). The answer is a ``question_response`` row ``qr-<question id>``
        (idempotent) in the question's session, which is woken."""
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
        session, asked_as = await self.central.read(_question_session, question)
        if session is None:
            await self.central.write(_forget_question, question.question_id)
            return "gone"
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
        await self.central.write(_forget_question, question.question_id)
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
