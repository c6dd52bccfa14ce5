"""The cards an event's plan asks for: an approver is asked about a chat nobody wired
(registration) or about a stranger (unknown sender). What the approver then clicks is
``decisions.Decisions``'s.

Registration (reference §7.5): a mention or DM in a chat nobody wired sends the owner (the
approvers of the alphabetically first agent group: its scoped admins, global admins, owners)
a card with "Connect to <group>" (or "Choose existing agent"), "Connect new agent" and
"Reject".

Unknown sender (§7.4): under ``request_approval`` a stranger's engaging message sends the
group's approver an Allow/Deny card.

The original event is kept for the replay after approval: its text in the pending row, its
attachments (up to ``MAX_HELD_BYTES`` together; a note names any left out) in
``held_attachments`` (migration 0021), deleted with the pending row.

Registration cards are rate limited, because anyone can DM the bot or add it to a group and
each new chat would otherwise reach the owner: at most one card per chat per hour and
``REGISTRATION_CARDS_PER_HOUR`` in all (``CentralStore.claim_notice`` /
``claim_notice_slot``). A mention that gets no card for that reason is recorded as a
``registration_rate_limited`` drop; the chat's next mention after the wait asks again.
Sender cards likewise: ``SENDER_CARDS_PER_HOUR`` in all, and a stranger an approver denied
is not asked about again for ``SENDER_DENIAL_QUIET_MS`` (upstream asked again at the very
next message). Their messages are still recorded as drops; ``nanoclaw members add`` lets
them in at any time.

Each step's reads and writes of ``central.db`` are one plain function of the store
(``_registration_facts``, ``_record_registration``, …), called through ``AsyncCentral``'s
doors: a card costs a read, the approver's DM (maybe a platform call and a write) and one
write, and no store call waits for a platform.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import msgspec
from loguru import logger

from nanoclaw_common.channels.base import ChannelAdapter
from nanoclaw_common.clock import now_ms
from nanoclaw_common.ids import new_id
from nanoclaw_common.messages import (
    AskQuestion,
    InboundEvent,
    IncomingAttachment,
    QuestionOption,
    convert_as,
    decode_event,
    encode_text,
)
from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.async_central import AsyncCentral
from nanoclaw_common.store.central import HeldFile
from nanoclaw_common.store.rows import (
    AgentGroup,
    MessagingGroup,
    PendingChannelApproval,
    PendingSenderApproval,
    Wiring,
)
from nanoclaw_common.untrusted import shown, shown_text
from nanoclaw_router import outbox

log = logger.bind(component="router")

QUOTED_CHARS: Final = 80  # a name quoted in a card

CONNECT: Final = "connect:"
CHOOSE: Final = "choose_existing"
NEW_AGENT: Final = "new_agent"
REJECT: Final = "reject"
APPROVE: Final = "approve"
MAX_HELD_BYTES: Final = 10_000_000  # attachments kept with one pending approval
HOUR_MS: Final = 3_600_000
REGISTRATION_CHAT_INTERVAL_MS: Final = HOUR_MS  # one registration card per chat per hour
REGISTRATION_CARDS_PER_HOUR: Final = 10  # all chats together
SENDER_CARDS_PER_HOUR: Final = 10  # all chats together: a crowded public group is not a flood
SENDER_DENIAL_QUIET_MS: Final = 7 * 24 * HOUR_MS  # a denied stranger is not asked about again


def denial_key(chat_id: str, sender_identity: str) -> str:
    return f"sender-denied:{chat_id}:{sender_identity}"


@dataclass(frozen=True)
class Reach:
    """Where an approver can be reached: their DM chat on one channel."""

    user_id: str
    channel_type: str
    platform_id: str
    chat_id: str


class Registration(StrEnum):
    """What ``ask_registration`` did about an unknown chat."""

    SENT = "sent"  # a card is queued for an approver
    PENDING = "pending"  # a card went out already and waits for an answer
    RATE_LIMITED = "rate_limited"  # too many cards lately (this chat, or all together)
    NOBODY = "nobody"  # no agent group, or no approver we can reach


def hold_event(event: InboundEvent) -> tuple[str, list[HeldFile]]:
    """The event as kept for replay: its JSON without attachment data (``original_event``)
    and the attachments, up to ``MAX_HELD_BYTES`` together. Files over that are left out and
    named in a note in the text, so the agent knows."""
    held: list[HeldFile] = []
    left_out: list[str] = []
    total = 0
    for item in event.attachments:
        if total + len(item.data) > MAX_HELD_BYTES:
            left_out.append(item.name)
            continue
        total += len(item.data)
        held.append(HeldFile(item.name, item.kind, item.mime_type, item.data))
    text = event.text
    if left_out:
        note = f"[attachments not kept while waiting for approval: {', '.join(left_out)}]"
        text = f"{text}\n{note}" if text else note
    kept = msgspec.structs.replace(event, text=text[:100_000], attachments=[])
    return encode_text(kept), held


def restore_event(original_event: str, held: list[HeldFile]) -> InboundEvent:
    """The event to replay: the stored one with its held attachments (``DecodeError`` if
    either is unreadable)."""
    event = decode_event(original_event)
    files = [
        convert_as(
            {"name": h.name, "data": h.data, "kind": h.kind, "mime_type": h.mime_type},
            IncomingAttachment,
            "held attachment",
        )
        for h in held
    ]
    return msgspec.structs.replace(event, attachments=files) if files else event


def quoted(value: object, limit: int = QUOTED_CHARS) -> str:
    """A name someone else chose (a stranger, a platform chat, an agent's ``create_agent``),
    as a card shows it: one line with control characters escaped, capped (``shown``), and
    without the angle brackets Slack's mrkdwn reads as mentions and links (``<!channel>``,
    ``<https://…|Approve>``)."""
    return shown(value, limit).replace("<", "‹").replace(">", "›")


def chat_description(chat: MessagingGroup) -> str:
    kind = quoted(chat.channel_type)
    return f"{quoted(chat.name)} on {kind}" if chat.name else f"a {kind} chat"


def registration_card(
    event: InboundEvent, chat: MessagingGroup, groups: list[AgentGroup]
) -> tuple[str, str, list[QuestionOption]]:
    """(title, question, options) of the card that asks to register ``chat``."""
    reference = groups[0]
    if len(groups) == 1:
        first = QuestionOption(
            label=f"Connect to {quoted(reference.name, 60)}",
            value=f"{CONNECT}{reference.id}",
            selected_label=f"✅ Connected to {quoted(reference.name)}",
        )
    else:
        first = QuestionOption(
            label="Choose existing agent", value=CHOOSE, selected_label="📋 Choosing…"
        )
    options = [
        first,
        QuestionOption(
            label="Connect new agent",
            value=NEW_AGENT,
            selected_label="🆕 Connecting new agent…",
        ),
        QuestionOption(label="Reject", value=REJECT, selected_label="🙅 Rejected"),
    ]
    who = quoted(event.sender_name or event.sender_id or "Someone")
    if event.is_group:
        title = "📣 Bot mentioned in new channel"
        question = (
            f"{who} mentioned your bot in {chat_description(chat)}. "
            "How would you like to handle this channel?"
        )
    else:
        title = "💬 New direct message"
        question = (
            f"{who} sent your bot a DM on {quoted(chat.channel_type)}."
            " How would you like to handle it?"
        )
    return title, question, options


# -- the store's part of each step (plain functions of the store) ----------------------------


def cached_dm(central: CentralStore, user_id: str, channel_type: str) -> Reach | None:
    """The approver's DM chat as ``user_dms`` remembers it."""
    chat = central.dm_chat(user_id, channel_type)
    if chat is None:
        return None
    return Reach(user_id, channel_type, chat.platform_id, chat.id)


def record_dm(
    central: CentralStore, user_id: str, channel_type: str, platform_id: str, now: int
) -> Reach:
    """A DM the adapter just opened: its chat and the ``user_dms`` row."""
    chat = central.remember_dm(user_id, channel_type, platform_id, now=now)
    return Reach(user_id, channel_type, platform_id, chat.id)


def _registration_facts(
    central: CentralStore, chat_id: str
) -> tuple[bool, list[AgentGroup], list[str]]:
    """(a card is out already, the agent groups, the approvers of the first one)."""
    if central.get_channel_approval(chat_id) is not None:
        return True, [], []
    groups = central.list_agent_groups()
    return False, groups, central.pick_approvers(groups[0].id) if groups else []


def _registration_allowed(central: CentralStore, chat_id: str, now: int) -> bool:
    """One card per chat per hour and ``REGISTRATION_CARDS_PER_HOUR`` in all. The chat's
    claim is released when the overall limit refuses, so that chat is not kept waiting for
    a card it never got."""
    chat_key = f"registration-card:{chat_id}"
    if not central.claim_notice(chat_key, REGISTRATION_CHAT_INTERVAL_MS, now=now):
        return False
    if central.claim_notice_slot(
        "registration-cards", REGISTRATION_CARDS_PER_HOUR, HOUR_MS, now=now
    ):
        return True
    central.release_notice(chat_key)
    return False


def _record_registration(
    central: CentralStore,
    event: InboundEvent,
    *,
    chat: MessagingGroup,
    reference: AgentGroup,
    reach: Reach,
    card: tuple[str, str, list[QuestionOption]],
    now: int,
    queued_ms: int,
) -> Registration:
    """Claim the rate limits, keep the event with its pending row and queue the card (at
    ``queued_ms`` by the outbox's clock)."""
    if not _registration_allowed(central, chat.id, now):
        return Registration.RATE_LIMITED
    title, question, options = card
    original, held = hold_event(event)
    created = central.create_channel_approval(
        PendingChannelApproval(
            messaging_group_id=chat.id,
            agent_group_id=reference.id,
            original_event=original,
            approver_user_id=reach.user_id,
            awaiting_name=0,
            title=title,
            options_json=encode_text(options),
            created_at_ms=now,
        ),
        held,
    )
    if not created:
        return Registration.PENDING
    # A random card id, not the chat's: the id is what a look-alike card would need.
    card_id = central.channel_approval_card(chat.id) or chat.id
    outbox.queue_question(
        central,
        f"reg-{chat.id}",
        channel_type=reach.channel_type,
        platform_id=reach.platform_id,
        question=AskQuestion(question_id=card_id, title=title, question=question, options=options),
        now=queued_ms,
    )
    return Registration.SENT


def _sender_facts(
    central: CentralStore, chat_id: str, sender: str, agent_group_id: str
) -> tuple[bool, int | None, AgentGroup | None, list[str]]:
    """(a card is out already, when the stranger was last denied, the group, its
    approvers)."""
    if central.find_sender_approval(chat_id, sender) is not None:
        return True, None, None, []
    denied = central.last_notice_ms(denial_key(chat_id, sender))
    group = central.get_agent_group(agent_group_id)
    return False, denied, group, central.pick_approvers(group.id) if group else []


def _record_sender_card(
    central: CentralStore,
    event: InboundEvent,
    *,
    chat: MessagingGroup,
    group: AgentGroup,
    reach: Reach,
    now: int,
    queued_ms: int,
) -> str | None:
    """Claim the hourly limit, keep the event with its pending row and queue the card;
    the approval's id, or None when the limit refused or a card is out already."""
    if not central.claim_notice_slot("sender-cards", SENDER_CARDS_PER_HOUR, HOUR_MS, now=now):
        # The message is already recorded as a drop; the sender's next message asks again.
        log.warning(
            "no sender card for {}: hourly card limit", shown(event.sender_id), chat=chat.id
        )
        return None
    options = [
        QuestionOption(label="Allow", value=APPROVE, selected_label="✅ Allowed"),
        QuestionOption(label="Deny", value=REJECT, selected_label="❌ Denied"),
    ]
    approval_id = new_id("nsa", now)
    title = "👤 New sender"
    original, held = hold_event(event)
    created = central.create_sender_approval(
        PendingSenderApproval(
            id=approval_id,
            messaging_group_id=chat.id,
            agent_group_id=group.id,
            sender_identity=event.sender_id,
            sender_name=event.sender_name or None,
            original_event=original,
            approver_user_id=reach.user_id,
            title=title,
            options_json=encode_text(options),
            created_at_ms=now,
        ),
        held,
    )
    if not created:
        return None
    who = quoted(event.sender_name or event.sender_id)
    card = AskQuestion(
        question_id=approval_id,
        title=title,
        question=f"{who} wants to talk to your agent in {chat_description(chat)}. Allow?",
        options=options,
    )
    outbox.queue_question(
        central,
        approval_id,
        channel_type=reach.channel_type,
        platform_id=reach.platform_id,
        question=card,
        now=queued_ms,
    )
    return approval_id


class Cards:
    def __init__(
        self,
        central: AsyncCentral,
        adapters: Mapping[str, ChannelAdapter],
        sender: outbox.OutboxSender,
        *,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.central = central
        self.adapters = adapters
        self.sender = sender
        self.clock = clock

    # -- reaching an approver -------------------------------------------------------------

    async def reach(self, approvers: list[str], origin_channel: str) -> Reach | None:
        """The first approver with a DM we can open, preferring the origin's channel type."""
        ordered = [a for a in approvers if a.split(":", 1)[0] == origin_channel]
        ordered += [a for a in approvers if a not in ordered]
        for user_id in ordered:
            found = await self.dm_of(user_id)
            if found is not None:
                return found
        return None

    async def dm_of(self, user_id: str) -> Reach | None:
        channel_type, sep, handle = user_id.partition(":")
        if not sep or not handle:
            return None
        cached = await self.central.read(cached_dm, user_id, channel_type)
        if cached is not None:
            return cached
        adapter = self.adapters.get(channel_type)
        if adapter is None:
            return None
        try:
            platform_id = await adapter.open_dm(handle)
        except Exception as exc:
            log.warning("cannot open a DM with {}: {}", shown(user_id), shown_text(exc))
            return None
        return await self.central.write(record_dm, user_id, channel_type, platform_id, self.clock())

    # -- the cards ------------------------------------------------------------------------

    async def ask_registration(self, event: InboundEvent, chat: MessagingGroup) -> Registration:
        pending, groups, approvers = await self.central.read(_registration_facts, chat.id)
        if pending:
            return Registration.PENDING  # a card is out already
        if not groups:
            log.warning("registration for {} skipped: no agent groups", chat.id, chat=chat.id)
            return Registration.NOBODY
        reach = await self.reach(approvers, chat.channel_type)
        if reach is None:
            log.warning("registration for {} skipped: no reachable approver", chat.id)
            return Registration.NOBODY
        card = registration_card(event, chat, groups)
        outcome = await self.central.write(
            _record_registration,
            event,
            chat=chat,
            reference=groups[0],
            reach=reach,
            card=card,
            now=self.clock(),
            queued_ms=self.sender.clock(),
        )
        if outcome is Registration.RATE_LIMITED:
            log.warning("registration card for {} not sent: rate limited", chat.id, chat=chat.id)
        elif outcome is Registration.SENT:
            self.sender.kick()
            log.info(
                "registration card for {} sent to {}", chat.id, shown(reach.user_id), chat=chat.id
            )
        return outcome

    async def ask_sender(self, event: InboundEvent, chat: MessagingGroup, wiring: Wiring) -> None:
        now = self.clock()
        pending, denied, group, approvers = await self.central.read(
            _sender_facts, chat.id, event.sender_id, wiring.agent_group_id
        )
        if pending:
            return  # one card per stranger per chat while it is pending
        if denied is not None and now - denied < SENDER_DENIAL_QUIET_MS:
            log.info("no sender card: {} was denied recently", shown(event.sender_id), chat=chat.id)
            return
        if group is None:
            return
        reach = await self.reach(approvers, chat.channel_type)
        if reach is None:
            log.warning("sender approval skipped: no reachable approver", chat=chat.id)
            return
        approval_id = await self.central.write(
            _record_sender_card,
            event,
            chat=chat,
            group=group,
            reach=reach,
            now=self.clock(),
            queued_ms=self.sender.clock(),
        )
        if approval_id is not None:
            self.sender.kick()
            log.info(
                "sender approval {} for {} sent to {}", approval_id, event.sender_id, reach.user_id
            )
