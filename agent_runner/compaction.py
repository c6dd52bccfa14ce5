"""Compaction: when the conversation reaches ``RunnerConfig.compact_at_tokens`` (or nears a
smaller model's context window), the model writes a summary, the full transcript is archived
to the group folder (``/workspace/conversations/<YYYY-MM-DD>-<slug>.md``,
upstream-container.md §6.6), and the summary replaces the messages.

The summary call sends the same system prompt and tools as every other call (a request whose
history holds tool blocks must define tools, and the shared prefix is served from the prompt
cache), with ``tool_choice: none``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from agent_runner.formatter import format_time
from agent_runner.model import ApiMessage, Block
from agent_runner.paths import write_replacing

ARCHIVE_TEXT_LIMIT = 2000
_TITLE = re.compile(r"^\s*Title:\s*(.+)$", re.MULTILINE)

# Context windows (tokens) by model id, as Anthropic documents them for the Messages API
# without beta headers (we send none); a dated id ("claude-haiku-4-5-20251001") is looked up
# without its date. Any other id gets the fallback, the smallest window of a current model:
# an unknown or newer model then compacts early (one summary call too soon), never late (a
# request refused as too long).
CONTEXT_WINDOWS: dict[str, int] = {
    "claude-fable-5": 1_000_000,
    "claude-fable-5-1": 1_000_000,
    "claude-mythos-5": 1_000_000,
    "claude-mythos-5-1": 1_000_000,
    "claude-opus-5": 1_000_000,
    "claude-opus-5-5": 1_000_000,
    "claude-sonnet-5": 1_000_000,
    "claude-sonnet-5-5": 1_000_000,
    "claude-haiku-5-5": 1_000_000,
    "claude-opus-4-8": 1_000_000,
    "claude-opus-4-7": 1_000_000,
    "claude-opus-4-6": 1_000_000,
    "claude-sonnet-4-6": 1_000_000,
    "claude-opus-4-5": 200_000,
    "claude-sonnet-4-5": 200_000,
    "claude-haiku-4-5": 200_000,
}
DEFAULT_CONTEXT_WINDOW = 200_000
_DATE_SUFFIX = re.compile(r"-\d{8}$")
# Whatever compact_at_tokens says, compact by ~82% of the window (upstream's 165k of 200k):
# the rest is the safety margin for the summary call's own input and output.
COMPACT_RATIO = 0.825


def context_window(model: str) -> int:
    return CONTEXT_WINDOWS.get(_DATE_SUFFIX.sub("", model), DEFAULT_CONTEXT_WINDOW)


def compact_threshold(model: str, compact_at_tokens: int) -> int:
    """The estimated input size (tokens) at which the conversation is compacted: the
    configured cost cap, or the model's window less the safety margin when that is lower."""
    return min(compact_at_tokens, int(context_window(model) * COMPACT_RATIO))


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:50].strip("-")


def split_summary(text: str) -> tuple[str | None, str]:
    """(title, summary) from the model's summary text; the title line is optional."""
    match = _TITLE.search(text)
    title = match.group(1).strip() if match else None
    return title, text.strip()


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif block.get("type") == "tool_use":
            parts.append(f"[tool {block.get('name')}]")
    return "\n".join(p for p in parts if p)


def archive_transcript(
    messages: list[ApiMessage],
    folder: Path,
    *,
    title: str | None,
    assistant_name: str,
    now_ms: int,
    zone: ZoneInfo,
) -> Path | None:
    """Write the transcript as markdown; None when there is nothing to archive. Tool results
    are left out (as upstream): the archive is the human-readable conversation."""
    lines: list[tuple[str, str]] = []
    for message in messages:
        text = _message_text(message.get("content", "")).strip()
        if not text:
            continue
        if len(text) > ARCHIVE_TEXT_LIMIT:
            text = text[:ARCHIVE_TEXT_LIMIT] + "..."
        who = "User" if message.get("role") == "user" else (assistant_name or "Assistant")
        lines.append((who, text))
    if not lines:
        return None
    moment = datetime.fromtimestamp(now_ms / 1000, tz=UTC).astimezone(zone)
    name = slugify(title) if title else ""
    name = name or f"conversation-{moment:%H%M}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{moment:%Y-%m-%d}-{name}.md"
    n = 2
    while path.exists():
        path = folder / f"{moment:%Y-%m-%d}-{name}-{n}.md"
        n += 1
    stamp = format_time(now_ms, zone, with_year=False)
    body = [f"# {title or 'Conversation'}", "", f"Archived: {stamp}", "", "---", ""]
    for who, text in lines:
        body += [f"**{who}**: {text}", ""]
    write_replacing(path, "\n".join(body).encode())
    return path


def summary_request_blocks(instructions: str) -> list[Block]:
    return [{"type": "text", "text": instructions}]
