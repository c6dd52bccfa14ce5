"""Strict decoding of Telegram Bot API updates, independent of python-telegram-bot.

We fetch ``getUpdates`` as raw JSON and decode each update on its own: a malformed update
becomes a recorded drop and the offset still moves past it, instead of one bad update failing
the whole batch (and blocking every later one) inside the library's own parser.

Only the fields we use are declared; Telegram adds fields all the time, so unknown ones are
ignored, but the declared ones must have the right types and sizes.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta

from nanoclaw_common.errors import DecodeError

MAX_UPDATE_TEXT: Final = 10_000  # Telegram: 4,096 for text, 1,024 for captions
Small = Annotated[str, Meta(max_length=1_000)]
Text = Annotated[str, Meta(max_length=MAX_UPDATE_TEXT)]


class Loose(msgspec.Struct, frozen=True):
    """Unknown fields ignored (the Bot API grows), declared ones type-checked."""


class User(Loose, frozen=True):
    id: int
    is_bot: bool = False
    first_name: Small = ""
    last_name: Small = ""
    username: Small = ""


class Chat(Loose, frozen=True):
    id: int
    type: Literal["private", "group", "supergroup", "channel"]
    title: Small = ""
    username: Small = ""
    first_name: Small = ""
    last_name: Small = ""
    is_forum: bool = False


class Entity(Loose, frozen=True):
    type: Small
    offset: Annotated[int, Meta(ge=0)]
    length: Annotated[int, Meta(ge=0)]
    user: User | None = None


class PhotoSize(Loose, frozen=True):
    file_id: Small
    file_unique_id: Small = ""
    width: int = 0
    height: int = 0
    file_size: int | None = None


class FileRef(Loose, frozen=True):
    """document, audio, voice, video: the fields they share."""

    file_id: Small
    file_unique_id: Small = ""
    file_name: Small = ""
    mime_type: Small = ""
    file_size: int | None = None


class ReplyTo(Loose, frozen=True):
    message_id: int
    from_: User | None = msgspec.field(default=None, name="from")
    sender_chat: Chat | None = None
    text: Text = ""
    caption: Text = ""


class Message(Loose, frozen=True):
    message_id: int
    chat: Chat
    date: int
    from_: User | None = msgspec.field(default=None, name="from")
    # Set when the message is sent on behalf of a chat: a channel posting into its linked
    # group, a user posting as a channel, or an anonymous group admin. ``from`` then holds a
    # placeholder user shared by everyone doing the same (Channel_Bot, GroupAnonymousBot), so
    # the sender's identity is this chat, never ``from``.
    sender_chat: Chat | None = None
    message_thread_id: int | None = None
    is_topic_message: bool = False
    text: Text | None = None
    caption: Text | None = None
    entities: Annotated[list[Entity], Meta(max_length=200)] = []
    caption_entities: Annotated[list[Entity], Meta(max_length=200)] = []
    photo: Annotated[list[PhotoSize], Meta(max_length=20)] = []
    document: FileRef | None = None
    audio: FileRef | None = None
    voice: FileRef | None = None
    video: FileRef | None = None
    reply_to_message: ReplyTo | None = None


class CallbackMessage(Loose, frozen=True):
    message_id: int
    chat: Chat


class CallbackQueryFull(Loose, frozen=True):
    id: Small
    from_: User = msgspec.field(name="from")
    data: Annotated[str, Meta(max_length=256)] | None = None
    message: CallbackMessage | None = None


class UpdateId(Loose, frozen=True):
    update_id: int


# The update kinds we handle. Any other key present (edited_message, my_chat_member, poll…)
# is reported as an unsupported update and skipped.
HANDLED: Final = ("message", "callback_query")


def update_id_of(raw: Any) -> int:
    """The update id alone: even a malformed update must be skipped by id."""
    try:
        return msgspec.convert(raw, UpdateId).update_id
    except msgspec.ValidationError as exc:
        raise DecodeError(f"telegram update without a usable update_id: {exc}") from None


def update_kind(raw: dict[str, Any]) -> str:
    kinds = [key for key in raw if key != "update_id"]
    return kinds[0] if kinds else "empty"


def decode_message(raw: Any) -> Message:
    try:
        return msgspec.convert(raw, Message)
    except msgspec.ValidationError as exc:
        raise DecodeError(f"invalid telegram message: {exc}") from None


def decode_callback(raw: Any) -> CallbackQueryFull:
    try:
        return msgspec.convert(raw, CallbackQueryFull)
    except msgspec.ValidationError as exc:
        raise DecodeError(f"invalid telegram callback_query: {exc}") from None


def entity_text(text: str, entity: Entity) -> str:
    """The text an entity covers. Telegram counts offsets in UTF-16 code units, so emoji
    and other astral characters before a mention shift it by two, not one."""
    units = text.encode("utf-16-le", "surrogatepass")
    start, end = entity.offset * 2, (entity.offset + entity.length) * 2
    return units[start:end].decode("utf-16-le", "replace")


def display_name(user: User | None) -> str:
    if user is None:
        return ""
    full = f"{user.first_name} {user.last_name}".strip()
    return full or user.username or str(user.id)


def chat_title(chat: Chat) -> str:
    if chat.type == "private":
        return f"{chat.first_name} {chat.last_name}".strip() or chat.username
    return chat.title or chat.username


def is_mention(message: Message, bot_id: int, bot_username: str) -> bool:
    """DMs, replies to the bot, ``@bot`` mentions and ``/cmd@bot`` commands."""
    if message.chat.type == "private":
        return True
    reply = message.reply_to_message
    if reply is not None and reply.from_ is not None and reply.from_.id == bot_id:
        return True
    text = message.text if message.text is not None else (message.caption or "")
    entities = message.entities if message.text is not None else message.caption_entities
    handle = f"@{bot_username}".lower()
    for entity in entities:
        if entity.type == "text_mention" and entity.user is not None:
            if entity.user.id == bot_id:
                return True
        elif entity.type in ("mention", "bot_command"):
            covered = entity_text(text, entity).lower()
            if covered == handle or (entity.type == "bot_command" and covered.endswith(handle)):
                return True
    return False
