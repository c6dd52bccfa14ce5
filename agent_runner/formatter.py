"""The prompt format (upstream-container.md §3): a ``<context timezone=…/>`` header, then the
batch grouped by kind in a fixed order: the chat messages (one ``<message>``, or several in
``<messages>``), each ``<task>``, each ``<webhook>``. System rows (question answers) are never
prompted.

Differences from upstream, on purpose:
- row content is our strict msgspec structs (``sender_name``, ``reply_to``, ``attachments``
  with ``kind``/``local_path``); content that fails to decode is shown as raw text;
- a task shows when it was due (``process_after_ms``), in the configured zone; upstream showed
  the UTC wall clock as if it were local [quirk];
- a webhook's payload is XML-escaped like chat text: it comes from outside, and an unescaped
  ``</webhook>`` would let it forge prompt structure.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from nanoclaw_common import messages
from nanoclaw_common.errors import DecodeError
from nanoclaw_common.store.rows import InboundRow

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# (channel_type, platform_id) -> the destination's name, or None.
OriginLookup = Callable[[str, str], str | None]


def resolve_zone(name: str) -> tuple[str, ZoneInfo]:
    """The zone to show times in; an invalid name falls back to UTC (as upstream)."""
    try:
        return name, ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return "UTC", ZoneInfo("UTC")


def escape_xml(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


def format_time(stamp_ms: int, zone: ZoneInfo, *, with_year: bool = True) -> str:
    """en-US medium style, e.g. ``Feb 4, 2026, 1:30 PM`` (locale-independent)."""
    moment = datetime.fromtimestamp(stamp_ms / 1000, tz=UTC).astimezone(zone)
    hour = moment.hour % 12 or 12
    half = "AM" if moment.hour < 12 else "PM"
    year = f" {moment.year}," if with_year else ""
    return f"{MONTHS[moment.month - 1]} {moment.day},{year} {hour}:{moment.minute:02d} {half}"


def decode_content(row: InboundRow) -> messages.InboundContent:
    """The row's content; undecodable content becomes a chat message with the raw text."""
    try:
        return messages.decode_inbound_content(row.content)
    except DecodeError:
        return messages.ChatContent(text=row.content, sender_id="unknown")


def origin_attr(row: InboundRow, lookup: OriginLookup) -> str:
    if row.channel_type and row.platform_id:
        name = lookup(row.channel_type, row.platform_id)
        if name is not None:
            return f' from="{escape_xml(name)}"'
    if row.channel_type or row.platform_id:
        unknown = f"unknown:{row.channel_type or ''}:{row.platform_id or ''}"
        return f' from="{escape_xml(unknown)}"'
    return ""


def _attachment_line(attachment: messages.Attachment, session_root: Path) -> str:
    name = attachment.name or "attachment"
    if attachment.local_path:
        saved = session_root / attachment.local_path
        return f"[{attachment.kind}: {escape_xml(name)} — saved to {saved}]"
    if attachment.url:
        return f"[{attachment.kind}: {escape_xml(name)} ({escape_xml(attachment.url)})]"
    return f"[{attachment.kind}: {escape_xml(name)}]"


def format_chat(
    row: InboundRow,
    content: messages.ChatContent,
    zone: ZoneInfo,
    lookup: OriginLookup,
    session_root: Path,
) -> str:
    sender = content.sender_name or content.sender_id or "Unknown"
    attrs = f' id="{row.seq}"' if row.seq is not None else ""
    attrs += origin_attr(row, lookup)
    attrs += f' sender="{escape_xml(sender)}" time="{format_time(row.timestamp_ms, zone)}"'
    quote = ""
    if content.reply_to is not None:
        if content.reply_to.id:
            attrs += f' reply_to="{escape_xml(content.reply_to.id)}"'
        if content.reply_to.sender and content.reply_to.text:
            quote = (
                f'\n  <quoted_message from="{escape_xml(content.reply_to.sender)}">'
                f"{escape_xml(content.reply_to.text)}</quoted_message>\n"
            )
    attachments = ""
    if content.attachments:
        attachments = "\n" + "\n".join(
            _attachment_line(a, session_root) for a in content.attachments
        )
    return f"<message{attrs}>{quote}{escape_xml(content.text)}{attachments}</message>"


def format_task(
    row: InboundRow,
    content: messages.TaskContent,
    zone: ZoneInfo,
    lookup: OriginLookup,
    script_output: Any = None,
) -> str:
    due = row.process_after_ms if row.process_after_ms is not None else row.timestamp_ms
    parts: list[str] = []
    if script_output:
        parts.append("Script output:\n" + json.dumps(script_output, indent=2) + "\n")
    parts.append("Instructions:\n" + content.prompt)
    body = "\n".join(parts)
    return f'<task{origin_attr(row, lookup)} time="{format_time(due, zone)}">{body}</task>'


def format_webhook(row: InboundRow, content: messages.WebhookContent, lookup: OriginLookup) -> str:
    payload = content.payload if content.payload is not None else msgspec.to_builtins(content)
    body = escape_xml(json.dumps(payload, indent=2, ensure_ascii=False, default=str))
    return (
        f'<webhook{origin_attr(row, lookup)} source="{escape_xml(content.source or "unknown")}"'
        f' event="{escape_xml(content.event or "unknown")}">{body}</webhook>'
    )


def format_batch(
    rows: Sequence[InboundRow],
    *,
    zone_name: str,
    lookup: OriginLookup,
    session_root: Path,
    script_outputs: dict[str, Any] | None = None,
) -> str:
    """The prompt for a batch (oldest first), exactly as the agent sees it."""
    shown_zone, zone = resolve_zone(zone_name)
    header = f'<context timezone="{escape_xml(shown_zone)}" />\n'
    chats: list[str] = []
    tasks: list[str] = []
    webhooks: list[str] = []
    for row in rows:
        content = decode_content(row)
        if isinstance(content, messages.ChatContent):
            chats.append(format_chat(row, content, zone, lookup, session_root))
        elif isinstance(content, messages.TaskContent):
            output = (script_outputs or {}).get(row.id)
            tasks.append(format_task(row, content, zone, lookup, output))
        elif isinstance(content, messages.WebhookContent):
            webhooks.append(format_webhook(row, content, lookup))
        # QuestionResponse: a system row, answered through ask_user_question, never prompted.
    sections: list[str] = []
    if len(chats) == 1:
        sections.append(chats[0])
    elif chats:
        sections.append("<messages>\n" + "\n".join(chats) + "\n</messages>")
    sections += tasks
    sections += webhooks
    return header + "\n\n".join(sections)
