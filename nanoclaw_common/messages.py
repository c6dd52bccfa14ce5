"""msgspec structs for everything that crosses a process boundary: the content of inbound and
outbound rows, and the normalized events channel adapters produce.

Decoding is strict (unknown fields and wrong types are errors) and size-limited. Every failure
becomes our ``DecodeError`` with a message a person can act on, e.g.
``invalid outbound content: Expected `str`, got `int` - at `$.text```.

Each content union is tagged by a ``type`` field, so a row's JSON says what it is.
JSON is compact (no spaces), which keeps rows small and LIKE-matchable.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec
from msgspec import UNSET, Meta, UnsetType

from nanoclaw_common import packages
from nanoclaw_common.errors import DecodeError

# Limits. Platform limits are smaller (Telegram 4096 chars, Slack 40k); these bound memory and
# row size whatever the source.
MAX_TEXT_CHARS: Final = 100_000
MAX_PAYLOAD_BYTES: Final = 1_000_000  # one row's JSON, or one webhook body
MAX_EVENT_BYTES: Final = 30_000_000  # a channel event, attachments (base64) included
MAX_ATTACHMENT_BYTES: Final = 20_000_000
MAX_ATTACHMENTS: Final = 20
MAX_NAME_CHARS: Final = 255
MAX_ID_CHARS: Final = 200
MAX_OPTIONS: Final = 20
MAX_PACKAGES: Final = packages.MAX_PACKAGES  # names per request, apt and pip together

Text = Annotated[str, Meta(max_length=MAX_TEXT_CHARS)]
Name = Annotated[str, Meta(max_length=MAX_NAME_CHARS)]
Ident = Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS)]
ShortText = Annotated[str, Meta(max_length=4_000)]


class Strict(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    pass


# ---------------------------------------------------------------------------------------
# Inbound content (messages_in.content). The row's kind follows from the type:
# chat -> 'chat', task -> 'task', webhook -> 'webhook', question_response -> 'system'.
# ---------------------------------------------------------------------------------------


class Attachment(Strict, frozen=True):
    """A file that came with a message. ``local_path`` is relative to the session folder
    (``inbox/<message id>/<name>``) once the host saved it."""

    name: Name
    kind: Literal["image", "file", "audio", "voice", "video", "sticker"] = "file"
    mime_type: Name | None = None
    size: int | None = None
    local_path: Annotated[str, Meta(max_length=1_000)] | None = None
    url: Annotated[str, Meta(max_length=2_000)] | None = None


class Quote(Strict, frozen=True):
    """The message a chat message replies to, as shown to the agent."""

    sender: Name
    text: Text
    id: Name | None = None


class ChatContent(Strict, frozen=True, tag="chat"):
    text: Text
    sender_id: Ident  # namespaced user id, '<channel_type>:<handle>', or 'system'
    sender_name: Name = ""
    attachments: Annotated[list[Attachment], Meta(max_length=MAX_ATTACHMENTS)] = []
    reply_to: Quote | None = None


class TaskContent(Strict, frozen=True, tag="task"):
    prompt: Text
    script: Text | None = None


class WebhookContent(Strict, frozen=True, tag="webhook"):
    source: Name
    event: Name
    payload: Any = None


class QuestionResponse(Strict, frozen=True, tag="question_response"):
    question_id: Ident
    selected_option: Name
    user_id: Ident


InboundContent = ChatContent | TaskContent | WebhookContent | QuestionResponse

INBOUND_KIND: Final[dict[type[Any], str]] = {
    ChatContent: "chat",
    TaskContent: "task",
    WebhookContent: "webhook",
    QuestionResponse: "system",
}


def system_note(text: str) -> ChatContent:
    """A note from the host to the agent (a refusal, an approval result, a restart)."""
    return ChatContent(text=text, sender_id="system", sender_name="system")


# ---------------------------------------------------------------------------------------
# Outbound content (messages_out.content), written by the container: hostile input.
# kind 'chat' carries the first five; kind 'system' carries the actions.
# ---------------------------------------------------------------------------------------


class SendText(Strict, frozen=True, tag="text"):
    text: Text
    files: Annotated[list[Name], Meta(max_length=MAX_ATTACHMENTS)] = []


class EditMessage(Strict, frozen=True, tag="edit"):
    message_id: Ident  # the platform message id
    text: Text


class AddReaction(Strict, frozen=True, tag="reaction"):
    message_id: Ident
    emoji: Annotated[str, Meta(min_length=1, max_length=64)]


class QuestionOption(Strict, frozen=True):
    label: Name
    value: Name
    selected_label: Name | None = None


class AskQuestion(Strict, frozen=True, tag="ask_question"):
    question_id: Ident
    title: Name
    question: ShortText
    options: Annotated[list[QuestionOption], Meta(min_length=1, max_length=MAX_OPTIONS)]
    timeout_s: Annotated[int, Meta(ge=1, le=86_400)] = 300


class CardAction(Strict, frozen=True):
    label: Name
    url: Annotated[str, Meta(max_length=2_000)]
    style: Literal["default", "primary", "danger"] = "default"


class Card(Strict, frozen=True):
    title: Name = ""
    description: ShortText = ""
    children: Annotated[list[ShortText], Meta(max_length=50)] = []
    actions: Annotated[list[CardAction], Meta(max_length=10)] = []


class SendCard(Strict, frozen=True, tag="card"):
    card: Card
    fallback_text: ShortText = ""


class ScheduleTask(Strict, frozen=True, tag="schedule_task"):
    task_id: Ident
    prompt: Text
    process_after_ms: int
    script: Text | None = None
    recurrence: Name | None = None  # cron, evaluated on the host in NANOCLAW_TZ


class UpdateTask(Strict, frozen=True, tag="update_task"):
    task_id: Ident
    prompt: Text | UnsetType = UNSET
    script: Text | UnsetType | None = UNSET
    process_after_ms: int | UnsetType = UNSET
    recurrence: Name | UnsetType | None = UNSET  # None makes it one-shot


class PauseTask(Strict, frozen=True, tag="pause_task"):
    task_id: Ident


class ResumeTask(Strict, frozen=True, tag="resume_task"):
    task_id: Ident


class CancelTask(Strict, frozen=True, tag="cancel_task"):
    task_id: Ident


class CreateAgent(Strict, frozen=True, tag="create_agent"):
    request_id: Ident
    name: Name
    instructions: Text | None = None


PackageName = Annotated[str, Meta(min_length=1, max_length=packages.MAX_NAME_CHARS)]


class InstallPackages(Strict, frozen=True, tag="install_packages"):
    """Bounds the row's size only (each list at most ``MAX_PACKAGES``, names at most
    ``packages.MAX_NAME_CHARS``). The request's rules (names, ``MAX_PACKAGES`` in total) are
    ``packages.check_request``'s: applied when the request is judged, a refusal tells the
    agent which rule it broke, where a decoding error would only say the row is malformed."""

    apt: Annotated[list[PackageName], Meta(max_length=MAX_PACKAGES)] = []
    pip: Annotated[list[PackageName], Meta(max_length=MAX_PACKAGES)] = []
    reason: ShortText = ""


class AddMcpServer(Strict, frozen=True, tag="add_mcp_server"):
    name: Name
    command: Annotated[str, Meta(min_length=1, max_length=1_000)]
    args: Annotated[list[Annotated[str, Meta(max_length=1_000)]], Meta(max_length=50)] = []
    env: dict[Name, Annotated[str, Meta(max_length=4_000)]] = {}


ChatOperation = SendText | EditMessage | AddReaction | AskQuestion | SendCard
SystemAction = (
    ScheduleTask
    | UpdateTask
    | PauseTask
    | ResumeTask
    | CancelTask
    | CreateAgent
    | InstallPackages
    | AddMcpServer
)
OutboundContent = ChatOperation | SystemAction

CHAT_OPERATIONS: Final = (SendText, EditMessage, AddReaction, AskQuestion, SendCard)


def outbound_kind(content: OutboundContent) -> str:
    return "chat" if isinstance(content, CHAT_OPERATIONS) else "system"


# ---------------------------------------------------------------------------------------
# Channel events: what adapters hand the router, and button clicks.
# ---------------------------------------------------------------------------------------


class IncomingAttachment(Strict, frozen=True):
    """An attachment as the adapter downloaded it; the router saves it under inbox/."""

    name: Name
    data: Annotated[bytes, Meta(max_length=MAX_ATTACHMENT_BYTES)]
    kind: Literal["image", "file", "audio", "voice", "video", "sticker"] = "file"
    mime_type: Name | None = None


class InboundEvent(Strict, frozen=True):
    """One platform message, normalized. ``message_id`` is the platform's id (unique per chat);
    with the agent group id it makes the idempotency key of the inbound row."""

    channel_type: Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
    platform_id: Ident
    message_id: Ident
    sender_id: Ident  # namespaced '<channel_type>:<handle>'
    text: Text
    timestamp_ms: int
    thread_id: Ident | None = None
    sender_name: Name = ""
    is_mention: bool = False
    is_group: bool = False
    attachments: Annotated[list[IncomingAttachment], Meta(max_length=MAX_ATTACHMENTS)] = []
    reply_to: Quote | None = None
    chat_name: Name | None = None


class ActionEvent(Strict, frozen=True):
    """A click on a card button: ``question_id`` names the pending question or approval."""

    channel_type: Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
    platform_id: Ident
    user_id: Ident  # namespaced clicker id
    question_id: Ident
    value: Name
    platform_message_id: Ident | None = None


# ---------------------------------------------------------------------------------------
# Encoding and strict decoding
# ---------------------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_inbound_decoder = msgspec.json.Decoder(InboundContent)
_outbound_decoder = msgspec.json.Decoder(OutboundContent)
_event_decoder = msgspec.json.Decoder(InboundEvent)
_action_decoder = msgspec.json.Decoder(ActionEvent)

T = TypeVar("T")


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


def encode_text(value: Any) -> str:
    """Compact JSON as ``str``, the form stored in ``content`` columns."""
    return _encoder.encode(value).decode()


def _decode(decoder: msgspec.json.Decoder[T], data: bytes | str, what: str, limit: int) -> T:
    size = len(data.encode() if isinstance(data, str) else data)
    if size > limit:
        raise DecodeError(f"invalid {what}: {size} bytes is over the {limit}-byte limit")
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise DecodeError(f"invalid {what}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise DecodeError(f"invalid {what}: not valid JSON ({exc})") from None
    except RecursionError:
        # msgspec has no depth limit: it recurses per level, also to skip a value before a
        # union's tag, until Python's recursion limit. Poison, like any undecodable row.
        raise DecodeError(f"invalid {what}: nested too deep") from None


def decode_inbound_content(data: bytes | str) -> InboundContent:
    content: InboundContent = _decode(_inbound_decoder, data, "inbound content", MAX_PAYLOAD_BYTES)
    return content


def decode_outbound_content(data: bytes | str) -> OutboundContent:
    content: OutboundContent = _decode(
        _outbound_decoder, data, "outbound content", MAX_PAYLOAD_BYTES
    )
    return content


def decode_event(data: bytes | str) -> InboundEvent:
    return _decode(_event_decoder, data, "channel event", MAX_EVENT_BYTES)


def decode_action(data: bytes | str) -> ActionEvent:
    return _decode(_action_decoder, data, "action event", MAX_PAYLOAD_BYTES)


def decode_as(data: bytes | str, type_: type[T], what: str, limit: int = MAX_PAYLOAD_BYTES) -> T:
    """Strictly decode any struct type, e.g. a CLI request or a webhook body."""
    return _decode(msgspec.json.Decoder(type_), data, what, limit)


def convert_as(value: Any, type_: type[T], what: str) -> T:
    """Strictly convert already-parsed data (a dict from a platform library) to a struct."""
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as exc:
        raise DecodeError(f"invalid {what}: {exc}") from None
