"""Helpers every adapter uses to turn platform data into our events and buttons.

Platform libraries hand us dicts parsed by ``json.loads``, which happily produces lone UTF-16
surrogates (``"\\ud800"``) and any size of string. Our stores encode with msgspec, which
refuses surrogates, and our structs carry size limits that plain construction does not check.
So events are built through ``make_event`` / ``make_action``: text is cleaned and the result
is validated by ``msgspec.convert``; a violation is a ``DecodeError`` (a recorded drop).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from loguru import logger

from nanoclaw_common.diskfull import FullDiskLog
from nanoclaw_common.errors import DecodeError
from nanoclaw_common.messages import (
    MAX_ID_CHARS,
    MAX_NAME_CHARS,
    MAX_TEXT_CHARS,
    ActionEvent,
    InboundEvent,
    convert_as,
)

# Telegram caps callback_data at 64 bytes; Slack's button value at 2,000 characters.
MAX_BUTTON_DATA: Final = 64
# All attachments of one message together. The router enforces it again when it saves them
# (``nanoclaw_router.attachments``); adapters enforce it while downloading, so a message with
# many files never holds more than this in memory.
MAX_MESSAGE_ATTACHMENT_BYTES: Final = 50_000_000
_TOKEN_PREFIX: Final = "#"
_BUTTON = re.compile(r"^(?P<token>[^|]{1,200})\|(?P<index>\d{1,2})$")


def clean_text(value: str, limit: int = MAX_TEXT_CHARS) -> str:
    """Valid UTF-8 (lone surrogates become ``?``), without NUL, at most ``limit`` characters."""
    cleaned = value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")
    return cleaned[:limit]


def clean_name(value: str | None) -> str:
    return clean_text(value or "", MAX_NAME_CHARS).strip()


def make_event(**fields: Any) -> InboundEvent:
    """An ``InboundEvent`` from raw fields, cleaned and validated (``DecodeError`` if not)."""
    if isinstance(fields.get("text"), str):
        text: str = fields["text"]
        if len(text) > MAX_TEXT_CHARS:
            # Refuse rather than truncate: a silently cut message misleads the agent.
            raise DecodeError(f"message text is {len(text)} characters, over {MAX_TEXT_CHARS}")
        fields["text"] = clean_text(text)
    for key in ("sender_name", "chat_name"):
        if isinstance(fields.get(key), str):
            fields[key] = clean_name(fields[key])
    return convert_as(fields, InboundEvent, "channel event")


def make_action(**fields: Any) -> ActionEvent:
    return convert_as(fields, ActionEvent, "button click")


def question_token(question_id: str) -> str:
    """The short form of a question id used in button data. Ids that fit are used as they
    are; longer ones become ``#`` + a hash, which the router resolves against the pending
    questions and approvals (``matches_token``)."""
    fits = len(question_id.encode()) + 3 <= MAX_BUTTON_DATA
    if fits and "|" not in question_id and not question_id.startswith(_TOKEN_PREFIX):
        return question_id
    digest = hashlib.sha256(question_id.encode()).hexdigest()[:24]
    return f"{_TOKEN_PREFIX}{digest}"


def matches_token(question_id: str, token: str) -> bool:
    return question_token(question_id) == token


def button_data(question_id: str, index: int) -> str:
    """``<token>|<option index>``. The index, not the option's value, travels: the router
    maps it back through the pending row, so a forged click cannot pick an unlisted value."""
    return f"{question_token(question_id)}|{index}"


def parse_button_data(data: str) -> tuple[str, int]:
    """(token, option index) from button data, or ``DecodeError``."""
    match = _BUTTON.match(data)
    if match is None:
        raise DecodeError(f"button data {data[:80]!r} is not '<question>|<index>'")
    return match["token"], int(match["index"])


def safe_platform_id(value: object) -> str:
    """A platform id for a drop record, whatever the payload held."""
    text = clean_text(str(value), MAX_ID_CHARS) if value not in (None, "") else "unknown"
    return text or "unknown"


def to_builtins(value: Any) -> Any:
    return msgspec.to_builtins(value)


class WebhookBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the webhook adapter puts in an event's text; the router makes it a ``webhook``
    row (``WebhookContent``)."""

    event: str
    payload: Any = None


def webhook_text(event: str, payload: Any) -> str:
    return msgspec.json.encode(WebhookBody(event=event, payload=payload)).decode()


def parse_webhook_text(text: str) -> WebhookBody:
    try:
        return msgspec.json.decode(text, type=WebhookBody)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise DecodeError(f"invalid webhook event text: {exc}") from None
    except RecursionError:
        raise DecodeError("invalid webhook event text: nested too deep") from None


@dataclass
class Backoff:
    """Capped exponential delays for retrying something that must not be given up: a
    commit the router could not make, a download that failed on the network. The delay
    doubles with each consecutive failure up to ``max_s`` and starts over after a success
    (``reset``)."""

    base_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0
    failures: int = 0

    def next_delay_s(self) -> float:
        # The exponent is capped: past the cap the delay is max_s anyway, and a float
        # power of a large exponent would overflow.
        delay = min(self.max_s, self.base_s * self.factor ** min(self.failures, 64))
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


# The channels' commits refused for a full disk: one condition per channel (logged when it
# starts, once a minute while it lasts, when it ends), not a line per message and re-send.
INGEST_DISK: Final = FullDiskLog(log=logger.bind(component="router"))


def not_committed(channel: str, exc: BaseException) -> bool:
    """Whether ``exc`` (a commit's failure) is a full disk, counted under the channel's
    condition; the caller logs anything else itself. The platform is not acknowledged
    either way, so it re-sends."""
    return INGEST_DISK.refused(f"messages from {channel}", exc)


def committed(channel: str) -> None:
    """A commit of the channel succeeded (``Router.on_event``): its full-disk condition,
    if any, is over."""
    INGEST_DISK.written(f"messages from {channel}")
