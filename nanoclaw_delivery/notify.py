"""Telling people: system notes to an agent, notices to the owner, and reaching a user's DM
(the same resolution serves approval cards and owner notices).

System notes are ``chat`` rows with sender ``system`` and no reply address, written into the
session's ``inbound.db``. Their ids are derived from what caused them, so a re-run after a
crash inserts nothing twice.

A note about a failed or refused message is a *trigger* (it wakes the agent) at most once per
``AGENT_NOTE_TRIGGER_INTERVAL_MS`` per session; more notes inside that window are context
only (``trigger=0``). Otherwise an agent that keeps writing to a forbidden destination would
be woken by each refusal and loop.

Owner notices are durable and coalesced (``nanoclaw_common.store.owner_notices``):
``queue_owner_notice`` counts a cause into the group's one pending notice of its kind (a re-run
after a crash is recognised by the cause's id and not counted twice) before the row it is
about is settled, and ``send_owner_notices`` (after each report, and from the service's notice
loop, so a restart resumes) sends due ones with backoff. One notice per agent group per
``owner_notice_interval_s``: the window starts when a send **succeeded**, so a failed send
never silences the group; a notice due inside the window of one sent waits for the window to
end and goes out then, with everything counted meanwhile. However long the owner stays
unreachable, a group has at most one pending notice per kind: 5,000 refused rows are one
notice saying 5,000, not 5,000 rows in ``central.db``.

Every text written here passes the leak guard's redaction: notes and notices quote refusal
reasons, which may quote the container or a platform error.
"""

from __future__ import annotations

import asyncio
from typing import Final

import msgspec
from loguru import logger

from nanoclaw_common.channels.base import ChannelAdapter
from nanoclaw_common.disk import OWNER_NOTICE_KIND
from nanoclaw_common.diskfull import until_written
from nanoclaw_common.errors import PermanentFailure, RetryLater
from nanoclaw_common.messages import system_note
from nanoclaw_common.store import CentralStore, InboundStore, NewInbound
from nanoclaw_common.store.owner_notices import OwnerNotice, OwnerNotices
from nanoclaw_common.store.rows import MessagingGroup, Session
from nanoclaw_common.untrusted import shown_text
from nanoclaw_delivery.context import Deps
from nanoclaw_delivery.text import redact

AGENT_NOTE_TRIGGER_INTERVAL_MS: Final = 60_000
OWNER_NOTICE_TIMEOUT_S: Final = 15.0
NOTICE_TEXT_CHARS: Final = 2_000  # an owner notice is a short DM, whatever its reason
NOTICE_RETRY_BASE_MS: Final = 5_000  # an unsent notice is retried after 5 s, 10 s, 20 s…
NOTICE_RETRY_MAX_MS: Final = 600_000  # …at most 10 minutes apart…
NOTICE_MAX_AGE_MS: Final = 24 * 3600 * 1000  # …for a day, then it is given up (logged)

log = logger.bind(component="delivery")


class Reach(msgspec.Struct, frozen=True):
    """A user's DM: the adapter and the chat to post in."""

    user_id: str
    adapter: ChannelAdapter
    chat: MessagingGroup


def claim_note_trigger(central: CentralStore, session_id: str, now: int) -> bool:
    """Whether a note about a failed or refused row may wake the agent (once a minute)."""
    return central.claim_notice(f"agent-note:{session_id}", AGENT_NOTE_TRIGGER_INTERVAL_MS, now=now)


async def note_agent(
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
    text = redact(text, deps.secrets())
    trigger = True
    if rate_limited:
        trigger = await deps.central.write(claim_note_trigger, session.id, now)
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
            shown_text(text),  # notes quote the container
            session=session.id,
        )
    return result.created


def cached_dm(central: CentralStore, user_id: str, channel_type: str) -> MessagingGroup | None:
    """The user's DM chat as ``user_dms`` remembers it."""
    return central.dm_chat(user_id, channel_type)


def record_dm(
    central: CentralStore, user_id: str, channel_type: str, platform_id: str, now: int
) -> MessagingGroup:
    """A DM the adapter just opened: its chat and the ``user_dms`` row."""
    return central.remember_dm(user_id, channel_type, platform_id, now=now)


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
    cached = await deps.central.read(cached_dm, user_id, channel_type)
    if cached is not None:
        return Reach(user_id, adapter, cached)
    if not adapter.is_connected():
        raise RetryLater(f"the {channel_type} adapter is not connected")
    platform_id = await adapter.open_dm(handle)
    chat = await deps.central.write(record_dm, user_id, channel_type, platform_id, deps.clock())
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


def owner_notice_key(agent_group_id: str) -> str:
    """The rate-limit key (``notices``) of a group's owner notices."""
    return f"delivery-owner:{agent_group_id}"


def notice_window_key(notice: OwnerNotice) -> str:
    """The rate-limit window a notice falls in. The sweeper's disk-quota notices have one of
    their own per group: a notice about failed replies must not hold back the one saying
    the group's containers were stopped for a full disk, nor the other way round."""
    if notice.kind == OWNER_NOTICE_KIND:
        return f"disk-owner:{notice.agent_group_id}"
    return owner_notice_key(notice.agent_group_id)


def _queue_notice(
    central: CentralStore, agent_group_id: str, kind: str, cause_id: str, *, text: str, now: int
) -> bool:
    return OwnerNotices(central).queue(agent_group_id, kind, cause_id, text, now=now)


async def queue_owner_notice(
    deps: Deps, agent_group_id: str, kind: str, cause_id: str, text: str
) -> bool:
    """Count a cause into the group's pending owner notice of ``kind`` (``text``, redacted
    and capped, describes it); False when this cause was counted already (a re-run)."""
    text = redact(text, deps.secrets())[:NOTICE_TEXT_CHARS]
    queued = await deps.central.write(
        _queue_notice, agent_group_id, kind, cause_id, text=text, now=deps.clock()
    )
    if queued:
        log.info("owner notice queued ({})", kind, group=agent_group_id)
    return queued


async def send_owner_notices(deps: Deps) -> int:
    """Send the due owner notices; returns how many went out. One pass at a time: a call
    while a pass runs asks that pass to look again instead (reports and the service's
    notice loop both call this)."""
    if deps.notices.running:
        deps.notices.again = True
        return 0
    deps.notices.running = True
    sent = 0
    try:
        while True:
            deps.notices.again = False
            sent += await _notice_pass(deps)
            if not deps.notices.again:
                return sent
    finally:
        deps.notices.running = False


def _pending_notices(central: CentralStore) -> list[OwnerNotice]:
    return OwnerNotices(central).list("pending")


def _last_notice(central: CentralStore, key: str) -> int | None:
    return central.last_notice_ms(key)


def _defer_notice(central: CentralStore, notice_id: str, until_ms: int, now: int) -> None:
    OwnerNotices(central).defer(notice_id, until_ms, now=now)


def _notice_sent(central: CentralStore, notice: OwnerNotice, key: str, now: int) -> None:
    OwnerNotices(central).sent(notice, key, now=now)


def _notice_retry(central: CentralStore, notice_id: str, reason: str, at_ms: int, now: int) -> None:
    OwnerNotices(central).retry(notice_id, reason, at_ms, now=now)


def _notice_failed(central: CentralStore, notice_id: str, reason: str, now: int) -> None:
    OwnerNotices(central).fail(notice_id, reason, now=now)


def _owners(central: CentralStore) -> list[str]:
    return central.owners()


async def _notice_pass(deps: Deps) -> int:
    central = deps.central
    interval_ms = int(deps.settings.owner_notice_interval_s * 1000)
    seen: set[str] = set()
    sent = 0
    for notice in await central.read(_pending_notices):
        group = notice.agent_group_id
        now = deps.clock()
        key = notice_window_key(notice)
        last = await central.read(_last_notice, key)
        if last is not None and now - last < interval_ms:
            # Inside the window of a notice that went out (maybe a moment ago, in this pass):
            # it waits for the window's end, counting what comes meanwhile.
            if notice.next_attempt_at_ms < last + interval_ms:
                await central.write(_defer_notice, notice.id, last + interval_ms, now)
                log.info("owner notice {} waits for the group's window", notice.id, group=group)
            continue
        if key in seen:
            continue  # one notice per window in flight: the oldest decides the window
        seen.add(key)
        if notice.next_attempt_at_ms > now:
            continue  # waiting for its retry; later notices of the group wait behind it
        if await _send_notice(deps, notice, key):
            sent += 1
    return sent


def notice_message(notice: OwnerNotice) -> str:
    """The DM for a notice: its one cause, or how many and the latest."""
    if notice.count <= 1:
        return notice.text
    if notice.kind == OWNER_NOTICE_KIND:
        latest = notice.text.removeprefix("NanoClaw: ")
        return (
            f"NanoClaw: {notice.count} disk-quota events for agent group"
            f" {notice.agent_group_id} since the last notice. The latest: {latest}"
        )
    what = {"denied": "were refused", "failed": "failed"}.get(notice.kind, notice.kind)
    latest = notice.text.removeprefix("NanoClaw: ")
    return (
        f"NanoClaw: {notice.count} messages from agent group {notice.agent_group_id} {what}"
        f" since the last notice. The latest: {latest}"
    )


async def _send_notice(deps: Deps, notice: OwnerNotice, key: str) -> bool:
    central = deps.central
    group = notice.agent_group_id
    # Redacted again at the door: the owner's DM is a platform message like any other.
    text = redact(notice_message(notice), deps.secrets())
    try:
        reach = await reach_first(deps, await central.read(_owners), None)
        if reach is None:
            raise RetryLater("no reachable owner")
        await asyncio.wait_for(
            reach.adapter.send_text(reach.chat.platform_id, None, text), OWNER_NOTICE_TIMEOUT_S
        )
    except Exception as exc:
        # Every failure is retried, for a day: a platform outage, a timeout after which it
        # may or may not have arrived, no reachable owner, even a refusal (the owner may
        # unblock the bot). The notice stays the group's one pending notice meanwhile, so
        # however long that lasts, refusals only add to its count.
        now = deps.clock()
        reason = redact(
            exc.reason if isinstance(exc, RetryLater | PermanentFailure) else repr(exc),
            deps.secrets(),
        )
        if now - notice.created_at_ms >= NOTICE_MAX_AGE_MS:
            await central.write(_notice_failed, notice.id, f"gave up after a day: {reason}", now)
            log.warning("owner notice {} given up: {}", notice.id, shown_text(reason), group=group)
            return False
        wait_ms = min(NOTICE_RETRY_MAX_MS, NOTICE_RETRY_BASE_MS * 2 ** min(notice.attempts, 20))
        await central.write(_notice_retry, notice.id, reason, now + wait_ms, now)
        log.warning("owner notice {} not sent yet: {}", notice.id, shown_text(reason), group=group)
        return False
    # Crash point (crash table row 18): the DM was accepted, ``sent`` not recorded.
    deps.faults.crash("delivery.after_notice_accepted", notice=notice.id, group=group)

    async def record_sent() -> None:
        await central.write(_notice_sent, notice, key, deps.clock())

    # The owner has it: on a full disk the record waits for room, or the next pass would
    # send the notice again.
    await until_written(record_sent, f"owner notice {notice.id}", deps.disk)
    log.info("owner notice {} sent to {}", notice.id, reach.user_id, group=group)
    return True
