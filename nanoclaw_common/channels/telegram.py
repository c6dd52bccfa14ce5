"""Telegram: python-telegram-bot against ``TELEGRAM_API_BASE_URL``, long polling.

Inbound: ``getUpdates`` is called with the offset of the last update whose rows are
committed. Telegram deletes updates only when a later ``getUpdates`` names a higher offset,
so a crash before that re-delivers them and the idempotent insert ignores the copies. We
never ask Telegram to drop pending updates at start-up.

An update is skipped (the offset moves past it) only when it is handled: committed, or
undecodable and recorded as a drop. An update the router could not commit (``database is
locked``, a full disk) or whose file could not be fetched (a network error) is never
skipped: it and everything after it are fetched again, after a capped exponential backoff,
until it goes through. A file Telegram refuses for good (gone, too big: a ``BadRequest``) is
left out with a note in the message's text; the message itself is kept.

Ids (all safe as one path component, unique across chats):
- chat (platform id): the chat id as text, e.g. ``-1001234``; users: ``telegram:<user id>``;
  a user's DM chat id equals their user id, so ``open_dm`` returns the handle. A message sent
  on behalf of a chat (a channel, or an anonymous group admin) comes from
  ``telegram:chat<that chat's id>``: its ``from`` is a placeholder user that many senders
  share, so approving it would approve them all.
- message: ``t<chat id>_<message id>``; outbound methods also accept a bare message id.
- thread: the forum topic's ``message_thread_id`` (plain groups have no threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dtm
import functools
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from loguru import logger
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, ReactionTypeEmoji, error
from telegram.request import HTTPXRequest
from telegram.warnings import PTBDeprecationWarning, PTBUserWarning

from nanoclaw_common.channels import telegram_updates as tu
from nanoclaw_common.channels.base import (
    ChannelAdapter,
    InboundSink,
    OutgoingFile,
    command_after_self_mention,
)
from nanoclaw_common.channels.common import (
    MAX_MESSAGE_ATTACHMENT_BYTES,
    Backoff,
    button_data,
    clean_text,
    make_action,
    make_event,
    not_committed,
    parse_button_data,
    safe_platform_id,
)
from nanoclaw_common.errors import DecodeError, PermanentFailure, RetryLater
from nanoclaw_common.messages import MAX_ATTACHMENT_BYTES, AskQuestion, InboundEvent
from nanoclaw_common.untrusted import shown_text

log = logger.bind(component="telegram")
T = TypeVar("T")

CHANNEL: Final = "telegram"
POLL_TIMEOUT_S: Final = 25
BACKOFF_S: Final = (1.0, 2.0, 5.0, 10.0, 30.0)  # getMe / getUpdates failures
# An update that was not committed is fetched again after this backoff (doubling per
# consecutive failed batch). Never given up: Telegram keeps it until we confirm it.
RETRY_BASE_S: Final = 0.5
RETRY_MAX_S: Final = 30.0
LOUD_AFTER_FAILURES: Final = 5  # consecutive failed batches before it is logged as an error

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class Batch:
    """The outcome of one ``getUpdates`` page: the offset to confirm next, and the updates
    that were not handled (they, and everything after the first of them, come again)."""

    offset: int | None
    failed: list[int] = field(default_factory=list)


def message_number(message_id: str) -> int:
    """``t<chat>_<n>`` or ``<n>`` → ``n``."""
    tail = message_id.rsplit("_", 1)[-1]
    try:
        return int(tail)
    except ValueError:
        raise PermanentFailure(f"not a telegram message id: {message_id!r}") from None


def chat_ref(platform_id: str) -> int | str:
    """Numeric chat ids as int; ``@channelname`` stays text."""
    try:
        return int(platform_id)
    except ValueError:
        return platform_id


def thread_ref(thread_id: str | None) -> int | None:
    if thread_id is None:
        return None
    try:
        return int(thread_id)
    except ValueError:
        raise PermanentFailure(f"not a telegram topic id: {thread_id!r}") from None


def our_message_id(chat_id: int | str, number: int) -> str:
    return f"t{chat_id}_{number}"


class TelegramAdapter(ChannelAdapter):
    channel_type = CHANNEL
    text_limit = 4096
    supports_threads = True  # forum topics only; plain groups never carry a thread id
    supports_cards = False

    def __init__(
        self,
        token: str,
        base_url: str,
        *,
        poll_timeout_s: int = POLL_TIMEOUT_S,
        retry: Backoff | None = None,
        sleep: Sleep = asyncio.sleep,
        max_message_bytes: int = MAX_MESSAGE_ATTACHMENT_BYTES,
    ) -> None:
        self.token = token
        self.max_message_bytes = max_message_bytes  # all of one message's files together
        self.base_url = base_url.rstrip("/")
        self.poll_timeout_s = poll_timeout_s
        self.retry = retry or Backoff(base_s=RETRY_BASE_S, max_s=RETRY_MAX_S)
        self._sleep = sleep  # tests record the delays instead of waiting them out
        self._bot: Bot | None = None
        self._requests: list[HTTPXRequest] = []
        self._bot_id = 0
        self._bot_username = ""
        self._connected = False

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        # PTB warns on every RetryAfter about its own int→timedelta migration; we read
        # retry_after either way (see _classify).
        warnings.filterwarnings("ignore", category=PTBDeprecationWarning)
        # We fetch getUpdates raw on purpose (each update is decoded on its own, see the
        # module docstring); PTB suggests Bot.get_updates, which parses the batch as one.
        warnings.filterwarnings(
            "ignore", message="Please use 'Bot.getUpdates'", category=PTBUserWarning
        )
        # Our own request objects: Bot.initialize() would call getMe, and the outbound half
        # must start without the network; so we also close them ourselves.
        self._requests = [
            HTTPXRequest(connection_pool_size=32, read_timeout=20.0),
            HTTPXRequest(connection_pool_size=1, read_timeout=self.poll_timeout_s + 15.0),
        ]
        self._bot = Bot(
            self.token,
            base_url=f"{self.base_url}/bot",
            base_file_url=f"{self.base_url}/file/bot",
            request=self._requests[0],
            get_updates_request=self._requests[1],
        )

    async def close(self) -> None:
        for request in self._requests:
            await request.shutdown()
        self._requests = []
        self._bot = None
        self._connected = False

    def is_connected(self) -> bool:
        return self._bot is not None

    @property
    def bot(self) -> Bot:
        if self._bot is None:
            raise RetryLater("telegram adapter not started")
        return self._bot

    # -- inbound --------------------------------------------------------------------------

    async def run_inbound(self, sink: InboundSink) -> None:
        await self._identify()
        offset: int | None = None
        errors = 0
        while True:
            kwargs: dict[str, Any] = {
                "timeout": self.poll_timeout_s,
                "allowed_updates": ["message", "callback_query"],
            }
            if offset is not None:
                kwargs["offset"] = offset  # confirms every update below it
            try:
                raw = await self.bot.do_api_request(
                    "getUpdates", api_kwargs=kwargs, read_timeout=self.poll_timeout_s + 10
                )
                errors = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, error.Conflict) and "webhook" in exc.message.lower():
                    # A webhook left on the bot blocks long polling. Remove it, keeping
                    # every pending update (never drop_pending_updates).
                    log.warning("a webhook is set on this bot; removing it to poll")
                    with contextlib.suppress(error.TelegramError):
                        await self.bot.delete_webhook(drop_pending_updates=False)
                delay = BACKOFF_S[min(errors, len(BACKOFF_S) - 1)]
                errors += 1
                log.warning("getUpdates failed ({}); retrying in {}s", exc, delay)
                await self._sleep(delay)
                continue
            if not isinstance(raw, list):
                log.warning("getUpdates returned {} instead of a list", type(raw).__name__)
                await self._sleep(BACKOFF_S[0])
                continue
            if not raw:
                continue
            batch = await self.process_batch(raw, sink, offset)
            offset = batch.offset
            if not batch.failed:
                self.retry.reset()
                continue
            # Not committed: the next getUpdates would hand the same updates back at once,
            # so wait first, longer each time the same trouble repeats.
            delay = self.retry.next_delay_s()
            loud = self.retry.failures >= LOUD_AFTER_FAILURES
            (log.error if loud else log.warning)(
                "{} update(s) not handled, from update {}; fetching them again in {}s (attempt {})",
                len(batch.failed),
                min(batch.failed),
                delay,
                self.retry.failures,
            )
            await self._sleep(delay)

    async def _identify(self) -> None:
        """getMe, retried: mentions are recognised by the bot's id and username."""
        attempt = 0
        while True:
            try:
                me = await self.bot.get_me()
                self._bot_id, self._bot_username = me.id, me.username or ""
                self._connected = True
                log.info("polling as @{} ({})", self._bot_username, self._bot_id)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
                attempt += 1
                log.warning("getMe failed ({}); retrying in {}s", exc, delay)
                await self._sleep(delay)

    async def process_batch(self, raw: list[Any], sink: InboundSink, offset: int | None) -> Batch:
        """Hand one ``getUpdates`` page to the sink; return the next offset to confirm.

        Each chat's updates are prepared in order (decoding, downloads) and handed to the
        sink in that order, without waiting for one commit before the next hand-over: the
        router keeps a chat's rows in arrival order and commits them together. Different
        chats run concurrently.

        The offset moves past an update only when it is handled: its rows are committed, or
        it could not be decoded and that drop is recorded. Anything else (the sink could not
        commit, a download failed on the network, the drop could not be recorded) leaves the
        offset at the first such update: it and every later one are fetched again, and the
        copies of those already committed are deduplicated by their row ids.
        """
        by_chat: dict[str, list[tuple[int, Any]]] = {}
        top = offset
        for item in raw:
            try:
                update_id = tu.update_id_of(item)
            except DecodeError as exc:
                # Without an id the update can be neither confirmed nor fetched again.
                await self._record_invalid(sink, "unknown", str(exc))
                continue
            top = max(top or 0, update_id + 1)
            by_chat.setdefault(_chat_key(item), []).append((update_id, item))

        failed: list[int] = []

        async def run_chat(items: list[tuple[int, Any]]) -> None:
            handed: list[tuple[int, Any, asyncio.Future[None]]] = []
            for position, (update_id, item) in enumerate(items):
                try:
                    call = await self.prepare_update(item, sink)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # Transient (a download failed): this update and the chat's later ones
                    # are fetched again, so the chat's order is kept.
                    log.warning("update {} not prepared ({}); fetched again", update_id, exc)
                    failed.extend(uid for uid, _ in items[position:])
                    break
                if call is not None:
                    handed.append((update_id, item, asyncio.ensure_future(call)))
            for update_id, item, future in handed:
                try:
                    await future
                except asyncio.CancelledError:
                    raise
                except DecodeError as exc:
                    # The router found the event undecodable: poison, recorded as a drop.
                    if not await self._record_invalid(sink, _chat_key(item), str(exc)):
                        failed.append(update_id)
                except Exception as exc:
                    if not not_committed(CHANNEL, exc):
                        log.warning("update {} not committed ({}); fetched again", update_id, exc)
                    failed.append(update_id)

        await asyncio.gather(*(run_chat(items) for items in by_chat.values()))
        return Batch(min(failed), sorted(failed)) if failed else Batch(top)

    async def _record_invalid(self, sink: InboundSink, platform_id: str, reason: str) -> bool:
        """Record a drop; False (logged) when even that could not be committed."""
        try:
            await sink.on_invalid(CHANNEL, platform_id, reason)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not not_committed(CHANNEL, exc):
                log.warning("could not record an invalid update ({}): {}", shown_text(reason), exc)
            return False
        return True

    async def handle_update(self, raw: Any, sink: InboundSink) -> None:
        """Route one update and wait for it. Decoding problems become recorded drops; sink
        errors raise."""
        call = await self.prepare_update(raw, sink)
        if call is not None:
            await call

    async def prepare_update(self, raw: Any, sink: InboundSink) -> Awaitable[None] | None:
        """Decode one update and fetch its files; return the sink call to make (not yet
        awaited), or None when there is nothing to hand over."""
        kind = tu.update_kind(raw) if isinstance(raw, dict) else "not-an-object"
        if kind == "message":
            try:
                message = tu.decode_message(raw["message"])
            except DecodeError as exc:
                return sink.on_invalid(CHANNEL, _chat_key(raw), str(exc))
            try:
                event = await self.to_event(message)
            except DecodeError as exc:
                return sink.on_invalid(CHANNEL, str(message.chat.id), str(exc))
            return None if event is None else sink.on_event(event)
        if kind == "callback_query":
            return self._handle_callback(raw["callback_query"], sink)
        return sink.on_invalid(CHANNEL, _chat_key(raw), f"unsupported update type {kind!r}")

    async def _handle_callback(self, raw: Any, sink: InboundSink) -> None:
        try:
            query = tu.decode_callback(raw)
            if query.message is None or query.data is None:
                raise DecodeError("callback without its message or data")
            token, index = parse_button_data(query.data)
            action = make_action(
                channel_type=CHANNEL,
                platform_id=str(query.message.chat.id),
                user_id=f"telegram:{query.from_.id}",
                question_id=token,
                value=str(index),
                platform_message_id=our_message_id(query.message.chat.id, query.message.message_id),
            )
        except DecodeError as exc:
            await sink.on_invalid(CHANNEL, _chat_key({"callback_query": raw}), str(exc))
            return
        await sink.on_action(action)
        # Stops the button's spinner. Only after the click is recorded; best effort.
        try:
            await self.bot.answer_callback_query(query.id)
        except Exception as exc:
            log.debug("answerCallbackQuery failed: {}", exc)

    async def to_event(self, message: tu.Message) -> InboundEvent | None:
        """Normalize a message; None for what is not a user message (service messages,
        our own messages)."""
        sender = message.from_
        if sender is not None and sender.id == self._bot_id:
            return None
        text = message.text if message.text is not None else (message.caption or "")
        if self._bot_username:
            text = command_after_self_mention(text, f"@{self._bot_username}")
        attachments, notes = await self._download_attachments(message)
        if notes:
            text = "\n".join([text, *notes]) if text else "\n".join(notes)
        if not text and not attachments:
            log.debug("ignoring non-text message {} in {}", message.message_id, message.chat.id)
            return None
        chat = message.chat
        reply = message.reply_to_message
        quote = None
        if reply is not None:
            quote = {
                "sender": (
                    tu.chat_title(reply.sender_chat)
                    if reply.sender_chat is not None
                    else tu.display_name(reply.from_)
                ),
                "text": clean_text(reply.text or reply.caption, 4_000),
                "id": our_message_id(chat.id, reply.message_id),
            }
        thread = message.message_thread_id if message.is_topic_message else None
        sender_id, sender_name = _sender_of(message)
        return make_event(
            channel_type=CHANNEL,
            platform_id=str(chat.id),
            message_id=our_message_id(chat.id, message.message_id),
            sender_id=sender_id,
            sender_name=sender_name,
            text=text,
            timestamp_ms=message.date * 1000,
            thread_id=None if thread is None else str(thread),
            is_mention=tu.is_mention(message, self._bot_id, self._bot_username),
            is_group=chat.type != "private",
            attachments=attachments,
            reply_to=quote,
            chat_name=tu.chat_title(chat) or None,
        )

    async def _download_attachments(
        self, message: tu.Message
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Photos, documents, audio, voice and video, downloaded within the size limit. A
        file over the limit is left out and noted in the text, so the agent knows."""
        wanted: list[
            tuple[str, str, str, str | None, int | None]
        ] = []  # id, name, kind, mime, size
        if message.photo:
            best = max(message.photo, key=lambda p: p.width * p.height)
            name = f"photo-{message.message_id}.jpg"
            wanted.append((best.file_id, name, "image", "image/jpeg", best.file_size))
        for ref, kind, default in (
            (message.document, "file", "document"),
            (message.audio, "audio", "audio.mp3"),
            (message.voice, "voice", "voice.ogg"),
            (message.video, "video", "video.mp4"),
        ):
            if ref is not None:
                name = ref.file_name or default
                wanted.append((ref.file_id, name, kind, ref.mime_type or None, ref.file_size))
        files: list[dict[str, Any]] = []
        notes: list[str] = []
        budget = self.max_message_bytes  # what the message's files may still take
        for file_id, name, kind, mime, size in wanted:
            if size is not None and size > MAX_ATTACHMENT_BYTES:
                notes.append(f"[attachment {name} not downloaded: {size} bytes is over the limit]")
                continue
            if size is not None and size > budget:
                notes.append(f"[attachment {name} not downloaded: the message is too large]")
                continue
            data = await self._download(file_id, name, notes, min(MAX_ATTACHMENT_BYTES, budget))
            if data is not None:
                budget -= len(data)
                files.append({"name": name, "data": data, "kind": kind, "mime_type": mime})
        return files, notes

    async def _download(
        self, file_id: str, name: str, notes: list[str], limit: int
    ) -> bytes | None:
        """The file's bytes, or None with a note when Telegram refuses it for good. A
        network error, a timeout or flood control raises: the update is fetched again."""
        try:
            handle = await self.bot.get_file(file_id)
            data = bytes(await handle.download_as_bytearray())
        except error.BadRequest as exc:  # "file is too big", "invalid file_id": permanent
            notes.append(f"[attachment {name} not downloaded: {exc.message}]")
            return None
        if len(data) > limit:
            notes.append(f"[attachment {name} not downloaded: over the size limit]")
            return None
        return data

    # -- outbound -------------------------------------------------------------------------

    async def send_text(
        self,
        platform_id: str,
        thread_id: str | None,
        text: str,
        files: list[OutgoingFile] | None = None,
    ) -> str | None:
        chat, topic = chat_ref(platform_id), thread_ref(thread_id)
        if not text.strip() and not files:
            raise PermanentFailure("telegram cannot send an empty message")
        first: str | None = None
        if text.strip():
            sent = await _call(lambda: self.bot.send_message(chat, text, message_thread_id=topic))
            first = our_message_id(sent.chat_id, sent.message_id)
        for item in files or []:
            data = item.path.read_bytes()
            send = functools.partial(
                self.bot.send_document,
                chat,
                document=data,
                filename=item.name,
                message_thread_id=topic,
            )
            doc = await _call(send)
            first = first or our_message_id(doc.chat_id, doc.message_id)
        return first

    async def edit_text(
        self, platform_id: str, thread_id: str | None, message_id: str, text: str
    ) -> None:
        await _call(
            lambda: self.bot.edit_message_text(
                text, chat_id=chat_ref(platform_id), message_id=message_number(message_id)
            )
        )

    async def add_reaction(
        self, platform_id: str, thread_id: str | None, message_id: str, emoji: str
    ) -> None:
        await _call(
            lambda: self.bot.set_message_reaction(
                chat_ref(platform_id),
                message_number(message_id),
                reaction=[ReactionTypeEmoji(emoji)],
            )
        )

    async def send_question(
        self, platform_id: str, thread_id: str | None, question: AskQuestion
    ) -> str | None:
        keyboard = InlineKeyboardMarkup(
            [
                [
                    InlineKeyboardButton(
                        option.label, callback_data=button_data(question.question_id, i)
                    )
                ]
                for i, option in enumerate(question.options)
            ]
        )
        text = f"{question.title}\n\n{question.question}" if question.title else question.question
        sent = await _call(
            lambda: self.bot.send_message(
                chat_ref(platform_id),
                text[: self.text_limit],
                reply_markup=keyboard,
                message_thread_id=thread_ref(thread_id),
            )
        )
        return our_message_id(sent.chat_id, sent.message_id)

    async def set_typing(self, platform_id: str, thread_id: str | None) -> None:
        await _call(
            lambda: self.bot.send_chat_action(
                chat_ref(platform_id), "typing", message_thread_id=thread_ref(thread_id)
            )
        )

    async def open_dm(self, user_handle: str) -> str:
        return user_handle  # a private chat's id is the user's id


def _sender_of(message: tu.Message) -> tuple[str, str]:
    """(sender id, display name). A message on behalf of a chat is that chat's."""
    if message.sender_chat is not None:
        on_behalf = message.sender_chat
        return f"telegram:chat{on_behalf.id}", tu.chat_title(on_behalf) or str(on_behalf.id)
    if message.from_ is not None:
        return f"telegram:{message.from_.id}", tu.display_name(message.from_)
    return f"telegram:chat{message.chat.id}", tu.chat_title(message.chat)


def _chat_key(raw: Any) -> str:
    """The chat an update belongs to, for ordering and drop records (best effort)."""
    if isinstance(raw, dict):
        for key in ("message", "edited_message", "channel_post", "callback_query"):
            body = raw.get(key)
            if isinstance(body, dict):
                if key == "callback_query":
                    body = body.get("message")
                if isinstance(body, dict) and isinstance(body.get("chat"), dict):
                    return safe_platform_id(body["chat"].get("id"))
    return "unknown"


async def _call(make: Callable[[], Awaitable[T]]) -> T:
    """Run one Bot API call, mapping errors to RetryLater / PermanentFailure."""
    try:
        return await make()
    except error.RetryAfter as exc:
        value = exc.retry_after
        seconds = value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)
        raise RetryLater(f"telegram flood control: {exc}", delay_s=seconds) from None
    except error.ChatMigrated as exc:
        raise PermanentFailure(f"chat migrated to {exc.new_chat_id}") from None
    except (error.Forbidden, error.BadRequest) as exc:
        raise PermanentFailure(f"telegram refused: {exc.message}") from None
    except error.TelegramError as exc:  # NetworkError, TimedOut, InvalidToken, Conflict…
        raise RetryLater(f"telegram: {exc.message}") from None
