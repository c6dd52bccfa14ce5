"""Unknown chats and unknown senders: the cards that ask an approver, and their clicks.

Registration (reference §7.5): a mention or DM in a chat nobody wired sends the owner (the
approvers of the alphabetically first agent group: its scoped admins, global admins, owners)
a card with "Connect to <group>" (or "Choose existing agent"), "Connect new agent" and
"Reject". "New agent" asks for a name in the approver's DM; that state is the persisted
``pending_channel_approvals.awaiting_name``, so a restart does not forget it (upstream kept it
in memory). The approver's next message in that DM names the agent.

Unknown sender (§7.4): under ``request_approval`` a stranger's engaging message sends the
group's approver an Allow/Deny card; Allow makes them a member and replays the message.

Only the designated approver or someone with admin privilege over the group may click; any
other click is ignored. The original event is kept and replayed through the whole router
after approval: its text in the pending row, its attachments (up to ``MAX_HELD_BYTES``
together; a note names any left out) in ``held_attachments`` (migration 0021), deleted with
the pending row. Every step is idempotent, so a click re-sent after a crash repeats nothing:
the wiring and membership inserts are guarded, rows are inserted by their idempotent ids,
and the pending row is deleted last.

Registration cards are rate limited, because anyone can DM the bot or add it to a group and
each new chat would otherwise reach the owner: at most one card per chat per hour and
``REGISTRATION_CARDS_PER_HOUR`` in all (``CentralStore.claim_notice`` /
``claim_notice_slot``). A mention that gets no card for that reason is recorded as a
``registration_rate_limited`` drop; the chat's next mention after the wait asks again.
Sender cards likewise: ``SENDER_CARDS_PER_HOUR`` in all, and a stranger an approver denied
is not asked about again for ``SENDER_DENIAL_QUIET_MS`` (upstream asked again at the very
next message). Their messages are still recorded as drops; ``nanoclaw members add`` lets
them in at any time.

Defaults for a connected chat (a deliberate change from upstream, whose non-threaded groups
got ``pattern '.'`` and answered every message): a DM engages on everything; a group engages
on mentions (``mention-sticky`` when the message came in a thread, so the thread stays with
the agent). Sender scope ``known`` (the requester becomes a member), ``accumulate``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import msgspec
from loguru import logger

from nanoclaw_common.channels.base import ChannelAdapter
from nanoclaw_common.clock import now_ms
from nanoclaw_common.errors import DecodeError, NanoclawError
from nanoclaw_common.group_folders import claim_new_folder
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
from nanoclaw_common.paths import Layout
from nanoclaw_common.states import (
    EngageMode,
    IgnoredMessagePolicy,
    SenderScope,
    SessionMode,
    UnknownSenderPolicy,
)
from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.central import HeldFile
from nanoclaw_common.store.rows import (
    MessagingGroup,
    PendingChannelApproval,
    PendingSenderApproval,
    Wiring,
)
from nanoclaw_common.untrusted import shown, shown_text
from nanoclaw_router.outbox import OutboxSender

log = logger.bind(component="router")

QUOTED_CHARS: Final = 80  # a name quoted in a card

CONNECT: Final = "connect:"
CHOOSE: Final = "choose_existing"
NEW_AGENT: Final = "new_agent"
REJECT: Final = "reject"
APPROVE: Final = "approve"
MAX_AGENT_NAME: Final = 64
MAX_HELD_BYTES: Final = 10_000_000  # attachments kept with one pending approval
HOUR_MS: Final = 3_600_000
REGISTRATION_CHAT_INTERVAL_MS: Final = HOUR_MS  # one registration card per chat per hour
REGISTRATION_CARDS_PER_HOUR: Final = 10  # all chats together
SENDER_CARDS_PER_HOUR: Final = 10  # all chats together: a crowded public group is not a flood
SENDER_DENIAL_QUIET_MS: Final = 7 * 24 * HOUR_MS  # a denied stranger is not asked about again

Replay = Callable[[InboundEvent], Awaitable[None]]


def denial_key(chat_id: str, sender_identity: str) -> str:
    return f"sender-denied:{chat_id}:{sender_identity}"


@dataclass(frozen=True)
class Reach:
    """Where an approver can be reached: their DM chat on one channel."""

    user_id: str
    channel_type: str
    platform_id: str
    chat_id: str


def decode_options(options_json: str) -> list[QuestionOption]:
    try:
        return msgspec.json.decode(options_json, type=list[QuestionOption])
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise DecodeError(f"stored card options are invalid: {exc}") from None


class Registration(StrEnum):
    """What ``request_registration`` did about an unknown chat."""

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


class Approvals:
    def __init__(
        self,
        central: CentralStore,
        layout: Layout,
        adapters: Mapping[str, ChannelAdapter],
        outbox: OutboxSender,
        replay: Replay,
        *,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.central = central
        self.layout = layout
        self.adapters = adapters
        self.outbox = outbox
        self.replay = replay
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
        cached = self.central.get_user_dm(user_id, channel_type)
        if cached is not None:
            chat = self.central.get_messaging_group(cached.messaging_group_id)
            if chat is not None:
                return Reach(user_id, channel_type, chat.platform_id, chat.id)
        adapter = self.adapters.get(channel_type)
        if adapter is None:
            return None
        try:
            platform_id = await adapter.open_dm(handle)
        except Exception as exc:
            log.warning("cannot open a DM with {}: {}", shown(user_id), shown_text(exc))
            return None
        user = self.central.get_user(user_id)
        chat = self.central.create_messaging_group(
            channel_type,
            platform_id,
            name=user.display_name if user else None,
            is_group=False,
            unknown_sender_policy=UnknownSenderPolicy.STRICT,
            now=self.clock(),
        )
        self.central.set_user_dm(user_id, channel_type, chat.id, now=self.clock())
        return Reach(user_id, channel_type, platform_id, chat.id)

    # -- registration ---------------------------------------------------------------------

    async def request_registration(self, event: InboundEvent, chat: MessagingGroup) -> Registration:
        if self.central.get_channel_approval(chat.id) is not None:
            return Registration.PENDING  # a card is out already
        groups = self.central.list_agent_groups()
        if not groups:
            log.warning("registration for {} skipped: no agent groups", chat.id, chat=chat.id)
            return Registration.NOBODY
        reference = groups[0]
        reach = await self.reach(self.central.pick_approvers(reference.id), chat.channel_type)
        if reach is None:
            log.warning("registration for {} skipped: no reachable approver", chat.id)
            return Registration.NOBODY
        if not self._registration_allowed(chat.id):
            log.warning("registration card for {} not sent: rate limited", chat.id, chat=chat.id)
            return Registration.RATE_LIMITED
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
        original, held = hold_event(event)
        created = self.central.create_channel_approval(
            PendingChannelApproval(
                messaging_group_id=chat.id,
                agent_group_id=reference.id,
                original_event=original,
                approver_user_id=reach.user_id,
                awaiting_name=0,
                title=title,
                options_json=encode_text(options),
                created_at_ms=self.clock(),
            ),
            held,
        )
        if not created:
            return Registration.PENDING
        # A random card id, not the chat's: the id is what a look-alike card would need.
        card_id = self.central.channel_approval_card(chat.id) or chat.id
        card = AskQuestion(question_id=card_id, title=title, question=question, options=options)
        self.outbox.queue_question(
            f"reg-{chat.id}", reach.channel_type, reach.platform_id, None, card
        )
        log.info("registration card for {} sent to {}", chat.id, shown(reach.user_id), chat=chat.id)
        return Registration.SENT

    def _registration_allowed(self, chat_id: str) -> bool:
        """One card per chat per hour and ``REGISTRATION_CARDS_PER_HOUR`` in all. The
        chat's claim is released when the overall limit refuses, so that chat is not
        kept waiting for a card it never got."""
        now = self.clock()
        chat_key = f"registration-card:{chat_id}"
        if not self.central.claim_notice(chat_key, REGISTRATION_CHAT_INTERVAL_MS, now=now):
            return False
        if self.central.claim_notice_slot(
            "registration-cards", REGISTRATION_CARDS_PER_HOUR, HOUR_MS, now=now
        ):
            return True
        self.central.release_notice(chat_key)
        return False

    def authorized(self, clicker: str, approver: str, agent_group_id: str) -> bool:
        return clicker == approver or self.central.has_admin_privilege(clicker, agent_group_id)

    async def on_registration_click(
        self, approval: PendingChannelApproval, clicker: str, value: str
    ) -> str:
        """Apply a click on a registration card; returns what happened (for the log)."""
        if not self.authorized(clicker, approval.approver_user_id, approval.agent_group_id):
            log.warning(
                "ignored registration click by {}", clicker, chat=approval.messaging_group_id
            )
            return "unauthorized"
        chat_id = approval.messaging_group_id
        if value == REJECT:
            self.central.set_messaging_group_denied(chat_id, self.clock())
            self.central.delete_channel_approval(chat_id)
            log.info("chat registration rejected", chat=chat_id)
            return "rejected"
        if value == CHOOSE:
            groups = self.central.list_agent_groups()
            options = [
                QuestionOption(
                    label=quoted(g.name, 70),
                    value=f"{CONNECT}{g.id}",
                    selected_label=f"✅ Connected to {quoted(g.name)}",
                )
                for g in groups[:19]
            ]
            options.append(
                QuestionOption(label="Cancel", value=REJECT, selected_label="🙅 Cancelled")
            )
            title = "📋 Choose an agent"
            self.central.update_channel_approval(
                chat_id, title=title, options_json=encode_text(options)
            )
            reach = await self.dm_of(approval.approver_user_id)
            if reach is not None:
                card = AskQuestion(
                    question_id=self.central.channel_approval_card(chat_id) or chat_id,
                    title=title,
                    question="Which agent should handle this channel?",
                    options=options,
                )
                self.outbox.queue_question(
                    new_id(f"reg-{chat_id}-choose"),
                    reach.channel_type,
                    reach.platform_id,
                    None,
                    card,
                )
            return "choosing"
        if value == NEW_AGENT:
            self.central.update_channel_approval(chat_id, awaiting_name=True)
            reach = await self.dm_of(approval.approver_user_id)
            if reach is not None:
                self.outbox.queue_text(
                    f"reg-{chat_id}-name",
                    reach.channel_type,
                    reach.platform_id,
                    None,
                    "Reply with the name for your new agent:",
                )
            log.info(
                "waiting for a new agent's name from {}", approval.approver_user_id, chat=chat_id
            )
            return "awaiting_name"
        if value.startswith(CONNECT):
            group = self.central.get_agent_group(value.removeprefix(CONNECT))
            if group is None:
                self.central.delete_channel_approval(chat_id)
                return "gone"
            await self._connect(approval, group.id, clicker)
            return "connected"
        log.warning("unknown registration choice {}", shown(value), chat=chat_id)
        return "unknown"

    async def _connect(
        self, approval: PendingChannelApproval, agent_group_id: str, by: str
    ) -> None:
        chat_id = approval.messaging_group_id
        event = restore_event(
            approval.original_event, self.central.held_files(channel_approval_id=chat_id)
        )
        chat = self.central.get_messaging_group(chat_id)
        if chat is None:
            self.central.delete_channel_approval(chat_id)
            return
        if not any(w.agent_group_id == agent_group_id for w in self.central.list_wirings(chat_id)):
            group_chat = bool(chat.is_group)
            if not group_chat:
                mode, pattern = EngageMode.PATTERN, "."
            elif event.thread_id is not None:
                mode, pattern = EngageMode.MENTION_STICKY, None
            else:
                mode, pattern = EngageMode.MENTION, None
            wiring = self.central.create_wiring(
                chat_id,
                agent_group_id,
                engage_mode=mode,
                engage_pattern=pattern,
                sender_scope=SenderScope.KNOWN,
                ignored_message_policy=IgnoredMessagePolicy.ACCUMULATE,
                session_mode=SessionMode.SHARED,
                now=self.clock(),
            )
            log.info("chat wired to {} ({})", agent_group_id, wiring.id, chat=chat_id)
        self.central.upsert_user(event.sender_id, event.channel_type, event.sender_name or None)
        self.central.add_member(event.sender_id, agent_group_id, added_by=by, now=self.clock())
        if chat.denied_at_ms is not None:
            self.central.set_messaging_group_denied(chat_id, None)
        await self.replay(event)
        self.central.delete_channel_approval(chat_id)

    async def intercept_name_reply(self, event: InboundEvent) -> bool:
        """The approver's DM answer to "name your new agent". True when consumed."""
        if event.is_group:
            return False
        waiting = [
            a
            for a in self.central.list_channel_approvals()
            if a.awaiting_name and a.approver_user_id == event.sender_id
        ]
        if not waiting:
            return False
        dm = self.central.get_user_dm(event.sender_id, event.channel_type)
        chat = self.central.find_messaging_group(event.channel_type, event.platform_id)
        if dm is None or chat is None or dm.messaging_group_id != chat.id:
            return False
        approval = waiting[0]
        name = " ".join(event.text.split())[:MAX_AGENT_NAME]
        if not name:
            return True  # consumed, nothing to do: wait for a real name
        # A folder in no group's use and not on disk (an old group's is never reused).
        folder = claim_new_folder(self.layout, self.central, name)
        group = self.central.create_agent_group(name, folder, now=self.clock())
        log.info("agent group {} created from a name reply", group.id, group=group.id)
        await self._connect(approval, group.id, event.sender_id)
        self.outbox.queue_text(
            f"reg-{approval.messaging_group_id}-done",
            event.channel_type,
            event.platform_id,
            None,
            f'✅ Agent "{quoted(name)}" created and connected.',
        )
        return True

    # -- unknown senders ------------------------------------------------------------------

    async def request_sender_approval(
        self, event: InboundEvent, chat: MessagingGroup, wiring: Wiring
    ) -> None:
        if self.central.find_sender_approval(chat.id, event.sender_id) is not None:
            return  # one card per stranger per chat while it is pending
        now = self.clock()
        denied = self.central.last_notice_ms(denial_key(chat.id, event.sender_id))
        if denied is not None and now - denied < SENDER_DENIAL_QUIET_MS:
            log.info("no sender card: {} was denied recently", shown(event.sender_id), chat=chat.id)
            return
        group = self.central.get_agent_group(wiring.agent_group_id)
        if group is None:
            return
        reach = await self.reach(self.central.pick_approvers(group.id), chat.channel_type)
        if reach is None:
            log.warning("sender approval skipped: no reachable approver", chat=chat.id)
            return
        if not self.central.claim_notice_slot(
            "sender-cards", SENDER_CARDS_PER_HOUR, HOUR_MS, now=now
        ):
            # The message is already recorded as a drop; the sender's next message asks again.
            log.warning(
                "no sender card for {}: hourly card limit", shown(event.sender_id), chat=chat.id
            )
            return
        options = [
            QuestionOption(label="Allow", value=APPROVE, selected_label="✅ Allowed"),
            QuestionOption(label="Deny", value=REJECT, selected_label="❌ Denied"),
        ]
        approval_id = new_id("nsa", self.clock())
        title = "👤 New sender"
        original, held = hold_event(event)
        created = self.central.create_sender_approval(
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
                created_at_ms=self.clock(),
            ),
            held,
        )
        if not created:
            return
        who = quoted(event.sender_name or event.sender_id)
        card = AskQuestion(
            question_id=approval_id,
            title=title,
            question=f"{who} wants to talk to your agent in {chat_description(chat)}. Allow?",
            options=options,
        )
        self.outbox.queue_question(approval_id, reach.channel_type, reach.platform_id, None, card)
        log.info(
            "sender approval {} for {} sent to {}", approval_id, event.sender_id, reach.user_id
        )

    async def on_sender_click(
        self, approval: PendingSenderApproval, clicker: str, value: str
    ) -> str:
        if not self.authorized(clicker, approval.approver_user_id, approval.agent_group_id):
            log.warning(
                "ignored sender-approval click by {}", clicker, chat=approval.messaging_group_id
            )
            return "unauthorized"
        if value == APPROVE:
            try:
                event = restore_event(
                    approval.original_event,
                    self.central.held_files(sender_approval_id=approval.id),
                )
            except DecodeError as exc:
                log.error("sender approval {} unreadable: {}", approval.id, exc)
                self.central.delete_sender_approval(approval.id)
                return "gone"
            self.central.upsert_user(
                approval.sender_identity, event.channel_type, approval.sender_name
            )
            self.central.add_member(
                approval.sender_identity,
                approval.agent_group_id,
                added_by=clicker,
                now=self.clock(),
            )
            log.info("{} allowed into {}", shown(approval.sender_identity), approval.agent_group_id)
            try:
                await self.replay(event)
            except NanoclawError as exc:
                log.error("replay after approval failed: {}", shown_text(exc))
            self.central.delete_sender_approval(approval.id)
            return "approved"
        # Remembered, so the stranger's next messages do not bring the card straight back.
        self.central.claim_notice(
            denial_key(approval.messaging_group_id, approval.sender_identity), 0, now=self.clock()
        )
        self.central.delete_sender_approval(approval.id)
        log.info("{} denied for {}", shown(approval.sender_identity), approval.agent_group_id)
        return "rejected"
