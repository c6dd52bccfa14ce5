"""The routing decision (an event's first stage, docs/internals.md "Router"): a pure function
of one event and what the central DB says about it (``EventFacts``, gathered by
``facts.CentralFacts``). It returns a ``Plan``; ``commit.Commit`` carries it out.

A chat nobody knows is chatter that leaves no trace, unless the bot was mentioned: then the
chat is created and an approver is asked to register it (``cards.Cards``). So is a known
chat that nothing is wired to (unless an approver rejected it). A wired chat is planned per
wiring, highest priority first (reference §3 step 8, with DESIGN §3 winning):

1. Engage: ``pattern`` (a regex searched in the text; ``.`` matches everything),
   ``mention`` (the platform says the bot was mentioned; a DM always is), ``mention-sticky``
   (a mention, or, in a group, an active session already exists for this agent group, chat
   and thread).
2. If it engages: the chat's unknown-sender policy (``public`` lets anyone in; otherwise the
   sender must be known to the group: member, admin or owner; ``strict`` drops,
   ``request_approval`` drops and asks an approver), then the wiring's sender scope
   (``known`` needs a known sender even in a public chat), then the command gate.
3. If it does not engage and the wiring accumulates: store the message as context
   (``trigger=0``, never wakes), but only if the sender would have passed the gates. A
   stranger's chatter is never stored (upstream stored it; we think a ``strict`` chat means
   strangers are not read at all). Context goes into a thread's per-thread session only if
   that session exists: on Slack every top-level channel message is a thread of its own, and
   chatter must not open a session per message.

Decisions we made differently from the reference, on purpose:
- An invalid ``engage_pattern`` never engages (upstream: engages everything). It is recorded
  as a drop with reason ``invalid_pattern`` so the admin sees it; the CLI refuses to store one.
- Filtered and denied commands are recorded in the drop audit (``command_filtered``,
  ``command_denied``) instead of vanishing.
- A message nothing engaged is recorded once per event (``no_agent_engaged``) unless a more
  specific reason was recorded for it already.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Final

from nanoclaw_common.messages import InboundEvent
from nanoclaw_common.states import (
    EngageMode,
    IgnoredMessagePolicy,
    SenderScope,
    SessionMode,
    UnknownSenderPolicy,
)
from nanoclaw_common.store.rows import MessagingGroup, Wiring

# Platform and assistant commands the agent must never see.
FILTERED_COMMANDS: Final = frozenset(
    {"/help", "/login", "/logout", "/doctor", "/config", "/remote-control", "/start"}
)
# Commands that change or reveal the session: owner or admin only.
ADMIN_COMMANDS: Final = frozenset({"/clear", "/compact", "/context", "/cost", "/files"})


class DropReason(StrEnum):
    """``dropped_messages.reason`` values the router writes."""

    NO_AGENT_WIRED = "no_agent_wired"  # a mention in a chat nobody wired (a card went out)
    NO_AGENT_ENGAGED = "no_agent_engaged"  # wired, but no wiring engaged or accumulated
    UNKNOWN_SENDER_STRICT = "unknown_sender_strict"
    UNKNOWN_SENDER_REQUEST_APPROVAL = "unknown_sender_request_approval"
    SENDER_NOT_KNOWN = "sender_not_known"  # the wiring's sender scope is 'known'
    COMMAND_FILTERED = "command_filtered"
    COMMAND_DENIED = "command_denied"
    INVALID_PATTERN = "invalid_pattern"
    INVALID_INPUT = "invalid_input"  # undecodable platform input, or an unsigned request
    REGISTRATION_RATE_LIMITED = "registration_rate_limited"  # too many cards: no card sent
    MISSING_AGENT_GROUP = "missing_agent_group"
    CLICK_NOT_ON_CARD = "click_not_on_card"  # a click for an approval card, made elsewhere
    # The message's row id was held by a different row (another kind or content); the
    # message itself was stored under an alternative id, not dropped.
    ID_COLLISION = "id_collision"
    RATE_LIMITED = "rate_limited"  # authentic input past its source's rate limit (webhooks)


class CommandClass(StrEnum):
    PASS = "pass"
    FILTER = "filter"
    ADMIN = "admin"


@dataclass(frozen=True)
class WiringView:
    """One wiring and the facts about this event's sender and thread it needs."""

    wiring: Wiring
    group_exists: bool = True
    sender_known: bool = False  # member, admin of the group, global admin or owner
    sender_admin: bool = False  # owner, global admin or admin of the group
    # A session exists for this group, chat and thread. Looked up for mention-sticky, and
    # for context in a thread (per-thread sessions); False when not looked up.
    active_session: bool = False


@dataclass(frozen=True)
class ChatView:
    chat: MessagingGroup
    wirings: list[WiringView]
    threads_supported: bool = False


@dataclass(frozen=True)
class Deliver:
    wiring: Wiring
    session_mode: str  # the effective mode
    trigger: bool  # False: accumulated context


@dataclass(frozen=True)
class Drop:
    reason: DropReason
    agent_group_id: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class Deny:
    wiring: Wiring
    command: str


@dataclass(frozen=True)
class EventFacts:
    """What ``central.db`` says about one event: its chat (None: not known yet), the chat's
    wirings with what each needs about this sender and thread, whether threads are
    conversations on the event's platform, and whether the sender's user row already holds
    the name the event carries."""

    chat: MessagingGroup | None
    wirings: list[WiringView]
    threads_supported: bool = False
    sender_current: bool = False


@dataclass
class Plan:
    deliveries: list[Deliver] = field(default_factory=list)
    drops: list[Drop] = field(default_factory=list)
    denials: list[Deny] = field(default_factory=list)
    ask_sender_approval: Wiring | None = None  # at most one card per event
    new_chat: bool = False  # a mention in a chat we do not know: create the chat first
    # Nothing is wired to the chat: ask an approver. The drop recorded for the message
    # depends on whether the card could go out (rate limits), so the card decides it.
    ask_registration: bool = False
    remember_sender: bool = False  # upsert the sender's user row (new, or a new name)

    @property
    def engaged(self) -> int:
        return sum(1 for d in self.deliveries if d.trigger)


def classify_command(text: str) -> tuple[CommandClass, str]:
    """The command gate. ``/clear@mybot`` is ``/clear``; non-commands pass."""
    stripped = text.strip()
    if not stripped.startswith("/"):
        return CommandClass.PASS, ""
    command = stripped.split(maxsplit=1)[0].lower().split("@", 1)[0]
    if command in FILTERED_COMMANDS:
        return CommandClass.FILTER, command
    if command in ADMIN_COMMANDS:
        return CommandClass.ADMIN, command
    return CommandClass.PASS, command


@lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> re.Pattern[str] | str:
    """The compiled regex, or the error text when it does not compile."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        return str(exc)


def pattern_engages(pattern: str | None, text: str) -> bool | str:
    """True/False, or the compile error of an invalid pattern (which never engages)."""
    if pattern is None or pattern == ".":
        return True  # the always-on flavour, even for an empty message with attachments
    compiled = compile_pattern(pattern)
    if isinstance(compiled, str):
        return compiled
    return compiled.search(text) is not None


def effective_session_mode(wiring: Wiring, chat: MessagingGroup, threads_supported: bool) -> str:
    """Threads are conversations on threaded platforms: in a group, every session mode but
    ``agent-shared`` becomes ``per-thread`` there (reference §3.1, kept)."""
    if threads_supported and chat.is_group and wiring.session_mode != SessionMode.AGENT_SHARED:
        return SessionMode.PER_THREAD
    return wiring.session_mode


def engages(view: WiringView, event: InboundEvent, chat: MessagingGroup) -> bool | str:
    mode = view.wiring.engage_mode
    if mode == EngageMode.PATTERN:
        return pattern_engages(view.wiring.engage_pattern, event.text)
    if mode == EngageMode.MENTION:
        return event.is_mention
    if mode == EngageMode.MENTION_STICKY:
        # DMs never stick: in a DM every message is a mention anyway.
        return event.is_mention or (bool(chat.is_group) and view.active_session)
    return False


def access_allowed(chat: MessagingGroup, view: WiringView) -> bool:
    return chat.unknown_sender_policy == UnknownSenderPolicy.PUBLIC or view.sender_known


def plan_event(event: InboundEvent, facts: EventFacts) -> Plan:
    """Decide what happens to ``event``: a chat we do not know, one nothing is wired to, or a
    wired one (``plan_route``)."""
    chat = facts.chat
    if chat is None:
        # Chatter in a chat we do not know leaves no trace (upstream wrote user rows).
        return Plan(new_chat=True, ask_registration=True) if event.is_mention else Plan()
    if not facts.wirings:
        return Plan(ask_registration=event.is_mention and chat.denied_at_ms is None)
    plan = plan_route(event, ChatView(chat, facts.wirings, facts.threads_supported))
    plan.remember_sender = not facts.sender_current
    return plan


def plan_route(event: InboundEvent, view: ChatView) -> Plan:
    """Decide, for a chat with at least one wiring, what happens to ``event``."""
    plan = Plan()
    chat = view.chat
    command_class, command = classify_command(event.text)
    for wiring_view in view.wirings:
        wiring = wiring_view.wiring
        group = wiring.agent_group_id
        if not wiring_view.group_exists:
            plan.drops.append(Drop(DropReason.MISSING_AGENT_GROUP, group))
            continue
        verdict = engages(wiring_view, event, chat)
        if isinstance(verdict, str):
            plan.drops.append(Drop(DropReason.INVALID_PATTERN, group, verdict[:300]))
            continue
        allowed = access_allowed(chat, wiring_view)
        in_scope = wiring.sender_scope != SenderScope.KNOWN or wiring_view.sender_known
        mode = effective_session_mode(wiring, chat, view.threads_supported)
        if verdict:
            if not allowed:
                policy = chat.unknown_sender_policy
                reason = (
                    DropReason.UNKNOWN_SENDER_REQUEST_APPROVAL
                    if policy == UnknownSenderPolicy.REQUEST_APPROVAL
                    else DropReason.UNKNOWN_SENDER_STRICT
                )
                plan.drops.append(Drop(reason, group))
                if reason is DropReason.UNKNOWN_SENDER_REQUEST_APPROVAL:
                    plan.ask_sender_approval = plan.ask_sender_approval or wiring
                continue
            if not in_scope:
                plan.drops.append(Drop(DropReason.SENDER_NOT_KNOWN, group))
                continue
            if command_class is CommandClass.FILTER:
                plan.drops.append(Drop(DropReason.COMMAND_FILTERED, group, command))
                continue
            if command_class is CommandClass.ADMIN and not wiring_view.sender_admin:
                plan.drops.append(Drop(DropReason.COMMAND_DENIED, group, command))
                plan.denials.append(Deny(wiring, command))
                continue
            plan.deliveries.append(Deliver(wiring, mode, trigger=True))
        elif wiring.ignored_message_policy == IgnoredMessagePolicy.ACCUMULATE:
            # Context only from senders the gates would let in, and never a command the
            # agent must not see or the sender may not use.
            blocked_command = command_class is CommandClass.FILTER or (
                command_class is CommandClass.ADMIN and not wiring_view.sender_admin
            )
            new_thread = (
                mode == SessionMode.PER_THREAD
                and event.thread_id is not None
                and not wiring_view.active_session
            )
            if allowed and in_scope and not blocked_command and not new_thread:
                plan.deliveries.append(Deliver(wiring, mode, trigger=False))
    if not plan.deliveries and not plan.drops:
        plan.drops.append(Drop(DropReason.NO_AGENT_ENGAGED))
    return plan
