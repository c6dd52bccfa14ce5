"""Telling people: system notes to an agent, notices to the owner, and reaching a user's DM
(the same resolution serves approval cards and owner notices).

System notes are ``chat`` rows with sender ``system`` and no reply address, written into the
session's ``inbound.db``. Their ids are derived from what caused them, so a re-run after a
crash inserts nothing twice.

A note about a failed or refused message is a *trigger* (it wakes the agent) at most once per
``AGENT_NOTE_TRIGGER_INTERVAL_MS`` per session; more notes inside that window are context
only (``trigger=0``). Otherwise an agent that keeps writing to a forbidden destination would
be woken by each refusal and loop.
"""

from __future__ import annotations

import asyncio
from typing import Final

import msgspec
from loguru import logger

from nanoclaw_common.channels.base import ChannelAdapter
from nanoclaw_common.errors import PermanentFailure, RetryLater
from nanoclaw_common.messages import system_note
from nanoclaw_common.store import InboundStore, NewInbound
from nanoclaw_common.store.rows import MessagingGroup, Session
from nanoclaw_delivery.context import Deps

AGENT_NOTE_TRIGGER_INTERVAL_MS: Final = 60_000
OWNER_NOTICE_TIMEOUT_S: Final = 15.0

log = logger.bind(component="delivery")


class Reach(msgspec.Struct, frozen=True):
    """A user's DM: the adapter and the chat to post in."""

    user_id: str
    adapter: ChannelAdapter
    chat: MessagingGroup


def note_agent(
    deps: Deps,
    session: Session,
    inbound: InboundStore,
    note_id: str,
    text: str,
    *,
    rate_limited: bool = False,
    on_wake: bool = False,
) -> bool:
    """Write a system note into the session; returns whether the note was new.

    Nothing is woken from here: a trigger note is a due row, which the running runner sees
    at once (inotify on ``inbound.db``) and which makes the sweeper wake a stopped session on
    its next pass. ``on_wake`` notes are taken only by a run's first poll."""
    now = deps.clock()
    trigger = True
    if rate_limited:
        trigger = deps.central.claim_notice(
            f"agent-note:{session.id}", AGENT_NOTE_TRIGGER_INTERVAL_MS, now=now
        )
    result = inbound.insert_message(
        NewInbound(
            id=note_id,
            content=system_note(text),
            timestamp_ms=now,
            trigger=trigger,
            on_wake=on_wake,
        ),
        now=now,
    )
    if result.created:
        log.info(
            "system note {} to the agent (trigger={}, on_wake={}): {}",
            note_id,
            int(trigger),
            int(on_wake),
            text,
            session=session.id,
        )
    return result.created


def _channel_of(user_id: str) -> tuple[str, str] | None:
    channel_type, sep, handle = user_id.partition(":")
    if not sep or not channel_type or not handle:
        return None
    return channel_type, handle


async def reach_user(deps: Deps, user_id: str) -> Reach | None:
    """The user's DM chat, resolved through ``user_dms`` (cached) or the adapter's
    ``open_dm``. None when the user's channel has no adapter here (nothing to retry);
    ``RetryLater`` when the adapter exists but cannot open the DM right now."""
    parsed = _channel_of(user_id)
    if parsed is None:
        return None
    channel_type, handle = parsed
    adapter = deps.adapters.get(channel_type)
    if adapter is None:
        return None
    central = deps.central
    cached = central.get_user_dm(user_id, channel_type)
    if cached is not None:
        chat = central.get_messaging_group(cached.messaging_group_id)
        if chat is not None:
            return Reach(user_id, adapter, chat)
    if not adapter.is_connected():
        raise RetryLater(f"the {channel_type} adapter is not connected")
    platform_id = await adapter.open_dm(handle)
    user = central.get_user(user_id)
    now = deps.clock()
    chat = central.create_messaging_group(
        channel_type,
        platform_id,
        name=user.display_name if user else None,
        is_group=False,
        now=now,
    )
    central.set_user_dm(user_id, channel_type, chat.id, now=now)
    return Reach(user_id, adapter, chat)


async def reach_first(deps: Deps, user_ids: list[str], prefer_channel: str | None) -> Reach | None:
    """The first reachable user, those on ``prefer_channel`` first (the approver sees the
    card on the platform the request came from, when possible). Raises ``RetryLater`` only
    when nobody was reachable and at least one failure was transient."""
    ordered = [u for u in user_ids if prefer_channel and u.startswith(f"{prefer_channel}:")]
    ordered += [u for u in user_ids if u not in ordered]
    transient: RetryLater | None = None
    for user_id in ordered:
        try:
            reach = await reach_user(deps, user_id)
        except RetryLater as exc:
            transient = exc
            continue
        except PermanentFailure as exc:
            log.warning("cannot open a DM with {}: {}", user_id, exc.reason)
            continue
        if reach is not None:
            return reach
    if transient is not None:
        raise transient
    return None


async def notify_owner(deps: Deps, agent_group_id: str, text: str) -> bool:
    """One notice per group per ``owner_notice_interval_s`` to the first reachable owner's
    DM; further problems inside the window are counted (``notices.suppressed``) and only
    logged. Best effort: the problem is also in ``nanoclaw deliveries`` and the log."""
    now = deps.clock()
    interval_ms = int(deps.settings.owner_notice_interval_s * 1000)
    if not deps.central.claim_notice(f"delivery-owner:{agent_group_id}", interval_ms, now=now):
        log.info("owner notice suppressed (rate limit)", group=agent_group_id)
        return False
    owners = deps.central.owners()
    try:
        reach = await reach_first(deps, owners, None)
        if reach is None:
            log.warning("no reachable owner for a delivery notice", group=agent_group_id)
            return False
        await asyncio.wait_for(
            reach.adapter.send_text(reach.chat.platform_id, None, text), OWNER_NOTICE_TIMEOUT_S
        )
    except Exception as exc:
        log.warning("owner notice not sent: {!r}", exc, group=agent_group_id)
        return False
    log.info("owner notice sent to {}", reach.user_id, group=agent_group_id)
    return True
