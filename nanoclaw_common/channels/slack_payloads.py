"""Strict decoding of what Slack sends us: Socket Mode envelopes, Events API callbacks and
interactivity (``block_actions``) payloads. Only the fields we use are declared; unknown
ones are ignored (Slack adds fields), declared ones are type- and size-checked, and the
raw JSON's size and nesting depth are bounded before it is decoded (``jsonlimits``).

Also the request signature check of the Events API (``v0=`` HMAC-SHA256 over
``v0:<timestamp>:<body>`` with the signing secret), done by slack-sdk's ``SignatureVerifier``
with our clock so tests pass ``now`` instead of waiting.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import msgspec
from msgspec import Meta
from slack_sdk.signature import Clock, SignatureVerifier

from nanoclaw_common.errors import DecodeError
from nanoclaw_common.jsonlimits import decode_json

MAX_REQUEST_BYTES: Final = 1_000_000
MAX_SIGNATURE_AGE_S: Final = 300  # Slack's rule: refuse requests older than five minutes
Small = Annotated[str, Meta(max_length=1_000)]
Text = Annotated[str, Meta(max_length=100_000)]


class Loose(msgspec.Struct, frozen=True):
    pass


class Envelope(Loose, frozen=True):
    """A Socket Mode frame. ``hello`` and ``disconnect`` carry no envelope id."""

    type: Small
    envelope_id: Small | None = None
    payload: Any = None
    retry_attempt: int = 0
    accepts_response_payload: bool = False


class SlackFile(Loose, frozen=True):
    id: Small
    name: Small = ""
    mimetype: Small = ""
    size: int | None = None
    url_private_download: Annotated[str, Meta(max_length=2_000)] = ""
    url_private: Annotated[str, Meta(max_length=2_000)] = ""


class MessageEvent(Loose, frozen=True):
    """``message`` and ``app_mention`` events."""

    type: Small
    channel: Small
    ts: Small
    user: Small | None = None
    text: Text = ""
    thread_ts: Small | None = None
    channel_type: Small | None = None
    subtype: Small | None = None
    bot_id: Small | None = None
    files: Annotated[list[SlackFile], Meta(max_length=20)] = []
    event_ts: Small | None = None


class EventCallback(Loose, frozen=True):
    type: Small
    event: Any = None
    event_id: Small = ""
    team_id: Small = ""
    challenge: Small | None = None  # url_verification only


class IdRef(Loose, frozen=True):
    id: Small


class Container(Loose, frozen=True):
    message_ts: Small | None = None
    channel_id: Small | None = None


class ActionItem(Loose, frozen=True):
    action_id: Small = ""
    value: Annotated[str, Meta(max_length=2_000)] = ""
    type: Small = ""


class MessageRef(Loose, frozen=True):
    ts: Small


class BlockActions(Loose, frozen=True):
    type: Small
    user: IdRef
    actions: Annotated[list[ActionItem], Meta(max_length=25)] = []
    channel: IdRef | None = None
    container: Container | None = None
    message: MessageRef | None = None


# Message subtypes that are a person talking; everything else (joins, edits, deletions,
# bot messages) is not routed.
USER_SUBTYPES: Final = frozenset({None, "file_share", "thread_broadcast", "me_message"})


def _convert(raw: Any, type_: type[Any], what: str) -> Any:
    try:
        return msgspec.convert(raw, type_)
    except msgspec.ValidationError as exc:
        raise DecodeError(f"invalid slack {what}: {exc}") from None


def decode_envelope(raw: str | bytes) -> Envelope:
    envelope: Envelope = decode_json(
        raw, Envelope, what="slack socket mode frame", max_bytes=MAX_REQUEST_BYTES
    )
    return envelope


def decode_callback(raw: Any) -> EventCallback:
    result: EventCallback = _convert(raw, EventCallback, "event callback")
    return result


def decode_callback_body(body: bytes) -> EventCallback:
    callback: EventCallback = decode_json(
        body, EventCallback, what="slack event body", max_bytes=MAX_REQUEST_BYTES
    )
    return callback


def decode_interaction(payload: str) -> Any:
    """The ``payload`` field of an interactivity request (form-encoded JSON)."""
    return decode_json(payload, what="slack interaction payload", max_bytes=MAX_REQUEST_BYTES)


def decode_message_event(raw: Any) -> MessageEvent:
    result: MessageEvent = _convert(raw, MessageEvent, "message event")
    return result


def decode_block_actions(raw: Any) -> BlockActions:
    result: BlockActions = _convert(raw, BlockActions, "interaction payload")
    return result


def signature_ok(
    secret: str, body: bytes, timestamp: str | None, signature: str | None, now_s: float
) -> bool:
    """Slack's request signature, and the timestamp within five minutes of ``now_s``.
    Header values are untrusted text: anything but ASCII digits in the timestamp, or a
    non-ASCII signature (``hmac.compare_digest`` raises ``TypeError`` on those), is simply
    not a valid signature."""
    if not timestamp or not signature or len(timestamp) > 12 or len(signature) > 200:
        return False
    if not (timestamp.isascii() and timestamp.isdigit() and signature.isascii()):
        return False

    class _Fixed(Clock):
        def now(self) -> float:
            return now_s

    return SignatureVerifier(secret, clock=_Fixed()).is_valid(body, timestamp, signature)
