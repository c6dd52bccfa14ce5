"""Slack's Web API as the adapter's outbound half uses it: one call with its errors mapped
to ``RetryLater`` / ``PermanentFailure``, message ids, emoji names, and the blocks of
question cards and display cards.

Nothing here holds state; ``slack.SlackAdapter`` makes the calls with its client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import aiohttp
from slack_sdk.errors import SlackApiError, SlackRequestError

from nanoclaw_common.channels.base import card_fallback_text
from nanoclaw_common.channels.common import button_data
from nanoclaw_common.errors import PermanentFailure, RetryLater
from nanoclaw_common.messages import AskQuestion, SendCard

T = TypeVar("T")

SECTION_CHARS: Final = 3000  # Slack's limit for a section's text (and a message's fallback)
BUTTON_LABEL_CHARS: Final = 75
MAX_BUTTONS: Final = 25  # elements in one actions block
HEADER_CHARS: Final = 150

# Errors that will not go away by retrying the same request.
PERMANENT_ERRORS: Final = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "msg_too_long",
        "no_text",
        "invalid_blocks",
        "message_not_found",
        "cant_update_message",
        "edit_window_closed",
        "invalid_name",
        "already_reacted",
        "user_not_found",
        "cannot_dm_bot",
        "restricted_action",
    }
)
# Common emoji by character, for reactions.add (which takes names).
EMOJI_NAMES: Final = {
    "👍": "thumbsup",
    "👎": "thumbsdown",
    "❤️": "heart",
    "❤": "heart",
    "✅": "white_check_mark",
    "❌": "x",
    "👀": "eyes",
    "🎉": "tada",
    "😂": "joy",
    "🙏": "pray",
    "🔥": "fire",
    "🤔": "thinking_face",
    "👋": "wave",
    "⏳": "hourglass_flowing_sand",
}


def split_message_id(message_id: str) -> tuple[str | None, str]:
    """``C1_1700.0001`` → (``C1``, ``1700.0001``); a bare ts → (None, ts)."""
    channel, sep, ts = message_id.rpartition("_")
    return (channel or None, ts) if sep else (None, message_id)


def emoji_name(emoji: str) -> str:
    stripped = emoji.strip()
    if stripped.startswith(":") and stripped.endswith(":") and len(stripped) > 2:
        return stripped[1:-1]
    return EMOJI_NAMES.get(stripped, stripped)


def question_blocks(question: AskQuestion) -> tuple[str, list[dict[str, Any]]]:
    """A question card: its text (also the notification's fallback) and its blocks, one
    button per option carrying ``button_data(question id, option index)``."""
    text = f"{question.title}\n{question.question}" if question.title else question.question
    text = text[:SECTION_CHARS]
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {
            "type": "actions",
            "block_id": "nanoclaw_question",
            "elements": [
                {
                    "type": "button",
                    "action_id": f"option_{i}",
                    "text": {"type": "plain_text", "text": option.label[:BUTTON_LABEL_CHARS]},
                    "value": button_data(question.question_id, i),
                }
                for i, option in enumerate(question.options[:MAX_BUTTONS])
            ],
        },
    ]
    return text, blocks


def card_blocks(card: SendCard) -> tuple[str, list[dict[str, Any]]]:
    """A display card: its plain-text fallback and its blocks (a header, a section per
    part, link buttons)."""
    body = card.card
    blocks: list[dict[str, Any]] = []
    if body.title:
        blocks.append(
            {"type": "header", "text": {"type": "plain_text", "text": body.title[:HEADER_CHARS]}}
        )
    for part in [body.description, *body.children]:
        if part:
            blocks.append(
                {"type": "section", "text": {"type": "mrkdwn", "text": part[:SECTION_CHARS]}}
            )
    if body.actions:
        elements: list[dict[str, Any]] = []
        for action in body.actions:
            button: dict[str, Any] = {
                "type": "button",
                "text": {"type": "plain_text", "text": action.label[:BUTTON_LABEL_CHARS]},
                "url": action.url,
            }
            if action.style != "default":
                button["style"] = action.style
            elements.append(button)
        blocks.append({"type": "actions", "elements": elements})
    return card_fallback_text(card)[:SECTION_CHARS], blocks


async def call(make: Callable[[], Awaitable[T]]) -> T:
    """One Web API call, errors mapped to RetryLater / PermanentFailure."""
    try:
        return await make()
    except SlackApiError as exc:
        status = exc.response.status_code
        error = str(exc.response.get("error") or "")
        if status == 429 or error == "ratelimited":
            retry_after = exc.response.headers.get("Retry-After") or exc.response.headers.get(
                "retry-after"
            )
            delay = float(retry_after) if retry_after and str(retry_after).isdigit() else None
            raise RetryLater("slack rate limit", delay_s=delay) from None
        if error in PERMANENT_ERRORS:
            raise PermanentFailure(f"slack refused: {error}") from None
        raise RetryLater(f"slack error {status}: {error or 'unknown'}") from None
    except (TimeoutError, SlackRequestError, aiohttp.ClientError) as exc:
        raise RetryLater(f"slack request failed: {exc}") from None
