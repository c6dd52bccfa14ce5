"""What an approver decides on the router's cards (``cards.Cards`` asked them): a chat's
registration, a new agent's name, a stranger.

Registration: "Connect to <group>" wires the chat and replays the message that asked;
"Choose existing agent" sends a second card listing the groups; "Connect new agent" asks for
a name in the approver's DM. That state is the persisted
``pending_channel_approvals.awaiting_name``, so a restart does not forget it (upstream kept it
in memory), and the approver's next message in that DM names the agent (``name_reply``).
"Reject" marks the chat denied: its mentions ask nobody again.

Unknown sender: Allow makes the stranger a member and replays the message; Deny is
remembered (``cards.SENDER_DENIAL_QUIET_MS``).

Only the designated approver or someone with admin privilege over the group may click; any
other click is ignored. The replay goes through the whole router again, as a new event (its
rows dedupe by id). Every step is idempotent, so a click re-sent after a crash repeats
nothing: the wiring and membership inserts are guarded, rows are inserted by their
idempotent ids, and the pending row is deleted last.

Defaults for a connected chat (a deliberate change from upstream, whose non-threaded groups
got ``pattern '.'`` and answered every message): a DM engages on everything; a group engages
on mentions (``mention-sticky`` when the message came in a thread, so the thread stays with
the agent). Sender scope ``known`` (the requester becomes a member), ``accumulate``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from loguru import logger

from nanoclaw_common.clock import now_ms
from nanoclaw_common.errors import DecodeError, NanoclawError
from nanoclaw_common.group_folders import claim_new_folder
from nanoclaw_common.ids import new_id
from nanoclaw_common.messages import AskQuestion, InboundEvent, QuestionOption, encode_text
from nanoclaw_common.paths import Layout
from nanoclaw_common.states import EngageMode, IgnoredMessagePolicy, SenderScope, SessionMode
from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.async_central import AsyncCentral
from nanoclaw_common.store.rows import AgentGroup, PendingChannelApproval, PendingSenderApproval
from nanoclaw_common.untrusted import shown, shown_text
from nanoclaw_router import outbox
from nanoclaw_router.cards import (
    APPROVE,
    CHOOSE,
    CONNECT,
    NEW_AGENT,
    REJECT,
    Cards,
    denial_key,
    quoted,
    restore_event,
)

log = logger.bind(component="router")

MAX_AGENT_NAME: Final = 64

Replay = Callable[[InboundEvent], Awaitable[None]]


def authorized(central: CentralStore, clicker: str, approver: str, agent_group_id: str) -> bool:
    return clicker == approver or central.has_admin_privilege(clicker, agent_group_id)


def _reject_chat(central: CentralStore, chat_id: str, now: int) -> None:
    central.set_messaging_group_denied(chat_id, now)
    central.delete_channel_approval(chat_id)


def _await_name(central: CentralStore, chat_id: str) -> None:
    central.update_channel_approval(chat_id, awaiting_name=True)


def _group_exists(central: CentralStore, agent_group_id: str) -> bool:
    return central.get_agent_group(agent_group_id) is not None


def _forget_registration(central: CentralStore, chat_id: str) -> None:
    central.delete_channel_approval(chat_id)


def _forget_sender(central: CentralStore, approval_id: str) -> None:
    central.delete_sender_approval(approval_id)


def _choose_card(central: CentralStore, chat_id: str) -> AskQuestion:
    """Offer every agent group (the first 19, and Cancel) on the registration."""
    options = [
        QuestionOption(
            label=quoted(g.name, 70),
            value=f"{CONNECT}{g.id}",
            selected_label=f"✅ Connected to {quoted(g.name)}",
        )
        for g in central.list_agent_groups()[:19]
    ]
    options.append(QuestionOption(label="Cancel", value=REJECT, selected_label="🙅 Cancelled"))
    title = "📋 Choose an agent"
    central.update_channel_approval(chat_id, title=title, options_json=encode_text(options))
    return AskQuestion(
        question_id=central.channel_approval_card(chat_id) or chat_id,
        title=title,
        question="Which agent should handle this channel?",
        options=options,
    )


def _wire(
    central: CentralStore,
    approval: PendingChannelApproval,
    agent_group_id: str,
    by: str,
    now: int,
) -> InboundEvent | None:
    """Wire the registered chat to the group and let the asker in; the event to replay, or
    None when the chat is gone (the registration is then deleted)."""
    chat_id = approval.messaging_group_id
    event = restore_event(approval.original_event, central.held_files(channel_approval_id=chat_id))
    chat = central.get_messaging_group(chat_id)
    if chat is None:
        central.delete_channel_approval(chat_id)
        return None
    if not any(w.agent_group_id == agent_group_id for w in central.list_wirings(chat_id)):
        if not chat.is_group:
            mode, pattern = EngageMode.PATTERN, "."
        elif event.thread_id is not None:
            mode, pattern = EngageMode.MENTION_STICKY, None
        else:
            mode, pattern = EngageMode.MENTION, None
        wiring = central.create_wiring(
            chat_id,
            agent_group_id,
            engage_mode=mode,
            engage_pattern=pattern,
            sender_scope=SenderScope.KNOWN,
            ignored_message_policy=IgnoredMessagePolicy.ACCUMULATE,
            session_mode=SessionMode.SHARED,
            now=now,
        )
        log.info("chat wired to {} ({})", agent_group_id, wiring.id, chat=chat_id)
    central.upsert_user(event.sender_id, event.channel_type, event.sender_name or None)
    central.add_member(event.sender_id, agent_group_id, added_by=by, now=now)
    if chat.denied_at_ms is not None:
        central.set_messaging_group_denied(chat_id, None)
    return event


def _name_reply_for(central: CentralStore, event: InboundEvent) -> PendingChannelApproval | None:
    """The registration this DM names a new agent for, if any: its sender is waited for, in
    the DM the router knows as theirs."""
    waiting = [
        a
        for a in central.list_channel_approvals()
        if a.awaiting_name and a.approver_user_id == event.sender_id
    ]
    if not waiting:
        return None
    dm = central.get_user_dm(event.sender_id, event.channel_type)
    chat = central.find_messaging_group(event.channel_type, event.platform_id)
    if dm is None or chat is None or dm.messaging_group_id != chat.id:
        return None
    return waiting[0]


def _create_group(central: CentralStore, layout: Layout, name: str, now: int) -> AgentGroup:
    # A folder in no group's use and not on disk (an old group's is never reused).
    folder = claim_new_folder(layout, central, name)
    return central.create_agent_group(name, folder, now=now)


def _let_in(
    central: CentralStore, approval: PendingSenderApproval, clicker: str, now: int
) -> InboundEvent | None:
    """Make the stranger a member; the event to replay (None, and the approval deleted,
    when the kept event is unreadable)."""
    try:
        event = restore_event(
            approval.original_event, central.held_files(sender_approval_id=approval.id)
        )
    except DecodeError as exc:
        log.error("sender approval {} unreadable: {}", approval.id, exc)
        central.delete_sender_approval(approval.id)
        return None
    central.upsert_user(approval.sender_identity, event.channel_type, approval.sender_name)
    central.add_member(approval.sender_identity, approval.agent_group_id, added_by=clicker, now=now)
    return event


def _keep_out(central: CentralStore, approval: PendingSenderApproval, now: int) -> None:
    # Remembered, so the stranger's next messages do not bring the card straight back.
    central.claim_notice(
        denial_key(approval.messaging_group_id, approval.sender_identity), 0, now=now
    )
    central.delete_sender_approval(approval.id)


class Decisions:
    def __init__(
        self,
        central: AsyncCentral,
        layout: Layout,
        cards: Cards,
        sender: outbox.OutboxSender,
        replay: Replay,
        *,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.central = central
        self.layout = layout
        self.cards = cards
        self.sender = sender
        self.replay = replay
        self.clock = clock

    # -- registration ---------------------------------------------------------------------

    async def on_registration_click(
        self, approval: PendingChannelApproval, clicker: str, value: str
    ) -> str:
        """Apply a click on a registration card; returns what happened (for the log)."""
        approver, group = approval.approver_user_id, approval.agent_group_id
        if not await self.central.read(authorized, clicker, approver, group):
            log.warning(
                "ignored registration click by {}", clicker, chat=approval.messaging_group_id
            )
            return "unauthorized"
        chat_id = approval.messaging_group_id
        if value == REJECT:
            await self.central.write(_reject_chat, chat_id, self.clock())
            log.info("chat registration rejected", chat=chat_id)
            return "rejected"
        if value == CHOOSE:
            card = await self.central.write(_choose_card, chat_id)
            reach = await self.cards.dm_of(approval.approver_user_id)
            if reach is not None:
                await self.central.write(
                    outbox.queue_question,
                    new_id(f"reg-{chat_id}-choose"),
                    channel_type=reach.channel_type,
                    platform_id=reach.platform_id,
                    question=card,
                    now=self.sender.clock(),
                )
                self.sender.kick()
            return "choosing"
        if value == NEW_AGENT:
            await self.central.write(_await_name, chat_id)
            reach = await self.cards.dm_of(approval.approver_user_id)
            if reach is not None:
                await self.central.write(
                    outbox.queue_text,
                    f"reg-{chat_id}-name",
                    channel_type=reach.channel_type,
                    platform_id=reach.platform_id,
                    text="Reply with the name for your new agent:",
                    now=self.sender.clock(),
                )
                self.sender.kick()
            log.info(
                "waiting for a new agent's name from {}", approval.approver_user_id, chat=chat_id
            )
            return "awaiting_name"
        if value.startswith(CONNECT):
            group_id = value.removeprefix(CONNECT)
            if not await self.central.read(_group_exists, group_id):
                await self.central.write(_forget_registration, chat_id)
                return "gone"
            await self._connect(approval, group_id, clicker)
            return "connected"
        log.warning("unknown registration choice {}", shown(value), chat=chat_id)
        return "unknown"

    async def _connect(
        self, approval: PendingChannelApproval, agent_group_id: str, by: str
    ) -> None:
        event = await self.central.write(_wire, approval, agent_group_id, by, self.clock())
        if event is None:
            return
        await self.replay(event)
        await self.central.write(_forget_registration, approval.messaging_group_id)

    async def naming(self, event: InboundEvent) -> PendingChannelApproval | None:
        """The registration ``event`` names a new agent for (the approver's DM answer to
        "name your new agent"), or None when it is an ordinary event."""
        if event.is_group:
            return None
        return await self.central.read(_name_reply_for, event)

    async def name_reply(self, event: InboundEvent, approval: PendingChannelApproval) -> None:
        """Create the agent ``event`` names and connect the chat that asked (``naming``
        found ``approval``); the event is consumed either way."""
        name = " ".join(event.text.split())[:MAX_AGENT_NAME]
        if not name:
            return  # nothing to do: wait for a real name
        group = await self.central.write(_create_group, self.layout, name, self.clock())
        log.info("agent group {} created from a name reply", group.id, group=group.id)
        await self._connect(approval, group.id, event.sender_id)
        await self.central.write(
            outbox.queue_text,
            f"reg-{approval.messaging_group_id}-done",
            channel_type=event.channel_type,
            platform_id=event.platform_id,
            text=f'✅ Agent "{quoted(name)}" created and connected.',
            now=self.sender.clock(),
        )
        self.sender.kick()

    # -- unknown senders ------------------------------------------------------------------

    async def on_sender_click(
        self, approval: PendingSenderApproval, clicker: str, value: str
    ) -> str:
        approver, group = approval.approver_user_id, approval.agent_group_id
        if not await self.central.read(authorized, clicker, approver, group):
            log.warning(
                "ignored sender-approval click by {}", clicker, chat=approval.messaging_group_id
            )
            return "unauthorized"
        if value != APPROVE:
            await self.central.write(_keep_out, approval, self.clock())
            log.info("{} denied for {}", shown(approval.sender_identity), approval.agent_group_id)
            return "rejected"
        event = await self.central.write(_let_in, approval, clicker, self.clock())
        if event is None:
            return "gone"
        log.info("{} allowed into {}", shown(approval.sender_identity), approval.agent_group_id)
        try:
            await self.replay(event)
        except NanoclawError as exc:
            log.error("replay after approval failed: {}", shown_text(exc))
        await self.central.write(_forget_sender, approval.id)
        return "approved"
