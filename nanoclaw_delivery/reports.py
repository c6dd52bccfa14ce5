"""The words of a report about a failed or refused row: the log line, the agent's note, the
owner's notice. Everything the container chose (a chat id, an agent group id, a row id) goes
through ``untrusted.shown``: one line, control characters escaped, length capped. A chat id
with a newline cannot forge a ``delivered`` line in the log, and a 300 KB one cannot become a
300 KB DM in the bot's voice."""

from __future__ import annotations

import traceback
from collections.abc import Sequence

from loguru import logger

from nanoclaw_common.states import DeliveryStatus
from nanoclaw_common.store import InboundStore, OutboundReader
from nanoclaw_common.store.rows import OutboundRow, Session
from nanoclaw_common.untrusted import escaped, shown, shown_text
from nanoclaw_delivery.acl import AGENT_CHANNEL
from nanoclaw_delivery.context import Deps
from nanoclaw_delivery.notify import note_agent, queue_owner_notice, send_owner_notices
from nanoclaw_delivery.tail import Fresh
from nanoclaw_delivery.text import contains_secret, redact

log = logger.bind(component="delivery")


def describe_destination(row: OutboundRow | None) -> str:
    """Where the row was going, safe to show."""
    if row is None:
        return "(an unreadable or vanished row)"
    if row.kind == "system":
        return "(a system action)"
    if row.channel_type == AGENT_CHANNEL:
        return f"to agent group {shown(row.platform_id)}"
    if row.channel_type and row.platform_id:
        return f"to {shown(row.channel_type, 40)}:{shown(row.platform_id)}"
    return "to this conversation's chat"


def message_ref(seq: int, key: str) -> str:
    """``#<seq>``, or the row's key when it has no seq of its own (a forged row)."""
    return f"#{seq}" if seq else shown(key)


def owner_notice_text(session: Session, ref: str, status: str, reason: str) -> str:
    """One cause, for the owner. ``reason`` may quote the container: shown capped."""
    return (
        f"NanoClaw: a message from agent group {session.agent_group_id} (session {session.id},"
        f" {ref}) was {status}: {shown_text(reason)}. See `nanoclaw deliveries list --failed`."
    )


async def send_notices(deps: Deps) -> None:
    """A notice pass beside the drain: a failure is logged (the queue keeps the notice; the
    service's notice loop tries again)."""
    try:
        await send_owner_notices(deps)
    except Exception as exc:
        log.opt(exception=exc).error("owner notice pass failed: {!r}", exc)


async def tell(
    deps: Deps,
    session: Session,
    inbound: InboundStore,
    *,
    key: str,
    seq: int,
    row: OutboundRow | None,
    status: DeliveryStatus,
    reason: str,
    note_id: str = "",
    notify_owner: bool = True,
    note: bool = True,
) -> str:
    """The log line, the agent's note (``note_id``; none when ``note`` is False: the caller
    writes one for several rows) and the owner's notice about a dropped row (``key``,
    ``seq``). Returns the note's line for the row (with ``note`` False) or the reason as
    stored: redacted, escaped and capped (it quotes the container, and reaches the log,
    notes, notices and ``nanoclaw deliveries``)."""
    ids = {"session": session.id, "message": key, "seq": seq}
    secrets = deps.secrets()
    reason = shown_text(redact(reason, secrets))
    where = redact(describe_destination(row), secrets)
    ref = message_ref(seq, key)
    if status == DeliveryStatus.DENIED:
        deps.counters.denied += 1
        log.warning("MESSAGE DROPPED (denied) {}: {}", where, reason, **ids)
        text = f"Your message {ref} {where} was refused and not delivered: {reason}."
    else:
        deps.counters.failed += 1
        log.error("MESSAGE DROPPED (failed) {}: {}", where, reason, **ids)
        text = f"Your message {ref} {where} could not be delivered: {reason}."
    if note:
        await note_agent(deps, session, inbound, note_id, text, rate_limited=True)
    if notify_owner:
        await queue_owner_notice(
            deps,
            session.agent_group_id,
            str(status),
            f"delivery:{session.id}:{key}:{status}",
            owner_notice_text(session, ref, status, reason),
        )
    return reason if note else text


#: Rows a refusal note lists one by one; the rest are counted.
NOTE_ROWS = 20


def refusal_note(lines: list[str]) -> str:
    """One note for several refused rows (``tell``'s lines)."""
    if len(lines) == 1:
        return lines[0]
    shown_lines = lines[:NOTE_ROWS]
    more = len(lines) - len(shown_lines)
    tail = f"\n…and {more} more, refused the same way." if more else ""
    return f"{len(lines)} of your messages were not delivered:\n" + "\n".join(shown_lines) + tail


def traceable(exc: BaseException, secrets: Sequence[str]) -> bool:
    """Whether ``exc``'s traceback may be logged: it quotes no secret, and no exception in
    its chain has a control character in its message (an error text quoting a chat id with
    a newline would forge log lines; the frames are our own code)."""
    if contains_secret(["".join(traceback.format_exception(exc))], secrets):
        return False
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        message = str(current)
        if escaped(message) != message:
            return False
        current = current.__cause__ or current.__context__
    return True


async def tell_refused(
    deps: Deps,
    session: Session,
    inbound: InboundStore,
    outbound: OutboundReader,
    items: list[Fresh],
) -> None:
    """Rows refused as they were read (``tail``), told about together: a log line and an
    owner-notice count each, one note for the lot (a container that writes thousands of them
    costs a note per page, not a note per row). Called before their records are written
    (settled): a crash in between reads them again, decides the same and, the note's id
    being derived from the rows, writes nothing twice. A malformed row's destination is
    shown from the start of its address (``address_preview``), escaped and capped."""
    lines = [
        await tell(
            deps,
            session,
            inbound,
            key=item.track.key,
            seq=item.track.seq,
            row=item.tailed.row or _stand_in(outbound, item),
            status=item.refusal[0],
            reason=item.refusal[1],
            note=False,
        )
        for item in items
        if item.refusal is not None
    ]
    if lines:
        await note_agent(
            deps,
            session,
            inbound,
            f"refused-{items[0].track.key}-{items[-1].track.key}-{len(items)}",
            refusal_note(lines),
            rate_limited=True,
        )


def _stand_in(outbound: OutboundReader, item: Fresh) -> OutboundRow | None:
    """A malformed row's address, as far as it can be shown (None: not even that)."""
    channel_type, platform_id = outbound.address_preview(item.tailed.rowid)
    if not channel_type and not platform_id:
        return None  # no address, or none that can be read
    unreadable = "(unreadable)"
    return OutboundRow(
        id=item.track.key,
        seq=item.track.seq,
        in_reply_to=None,
        timestamp_ms=0,
        deliver_after_ms=None,
        kind="chat",
        platform_id=unreadable if platform_id is None else platform_id,
        channel_type=unreadable if channel_type is None else channel_type,
        thread_id=None,
        content="",
        run_id=None,
    )
