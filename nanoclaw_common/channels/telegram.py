"""Telegram: python-telegram-bot against ``TELEGRAM_API_BASE_URL``, long polling.

Inbound: ``getUpdates`` is called with the offset of the last update whose rows are
committed. Telegram deletes updates only when a later ``getUpdates`` names a higher offset,
so a crash before that re-delivers them and the idempotent insert ignores the copies. We
never ask Telegram to drop pending updates at start-up.

Ids (all safe as one path component, unique across chats):
- chat (platform id): the chat id as text, e.g. ``-1001234``; users: ``telegram:<user id>``;
  a user's DM chat id equals their user id, so ``open_dm`` returns the handle.
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
)
from nanoclaw_common.channels.common import (
    button_data,
    clean_text,
    make_action,
    make_event,
    parse_button_data,
    safe_platform_id,
)
from nanoclaw_common.errors import DecodeError, PermanentFailure, RetryLater
from nanoclaw_common.messages import MAX_ATTACHMENT_BYTES, AskQuestion, InboundEvent

log = logger.bind(component="telegram")
T = TypeVar("T")

CHANNEL: Final = "telegram"
POLL_TIMEOUT_S: Final = 25
MAX_UPDATE_FAILURES: Final = 5  # then the update is recorded as a drop and skipped
BACKOFF_S: Final = (1.0, 2.0, 5.0, 10.0, 30.0)


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

    def __init__(self, token: str, base_url: str, *, poll_timeout_s: int = POLL_TIMEOUT_S) -> None:
        self.token = token
        self.base_url = base_url.rstrip("/")
        self.poll_timeout_s = poll_timeout_s
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
        failures: dict[int, int] = {}
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
                await asyncio.sleep(delay)
                continue
            if not isinstance(raw, list):
                log.warning("getUpdates returned {} instead of a list", type(raw).__name__)
                await asyncio.sleep(BACKOFF_S[0])
                continue
            if raw:
                offset = await self.process_batch(raw, sink, offset, failures)

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
                await asyncio.sleep(delay)

    async def process_batch(
        self,
        raw: list[Any],
        sink: InboundSink,
        offset: int | None,
        failures: dict[int, int],
    ) -> int | None:
        """Hand one ``getUpdates`` batch to the sink; return the next offset to confirm.

        Each chat's updates are prepared in order (decoding, downloads) and handed to the
        sink in that order, without waiting for one commit before the next hand-over: the
        router keeps a chat's rows in arrival order and commits them together. Different
        chats run concurrently. The offset moves past an update only when its rows are
        committed (or it was recorded as a drop); a failed update and everything after it
        is fetched again next time, where the copies are deduplicated.
        """
        by_chat: dict[str, list[tuple[int, Any]]] = {}
        top = offset
        for item in raw:
            try:
                update_id = tu.update_id_of(item)
            except DecodeError as exc:
                await sink.on_invalid(CHANNEL, "unknown", str(exc))
                continue
            top = max(top or 0, update_id + 1)
            by_chat.setdefault(_chat_key(item), []).append((update_id, item))

        failed: list[int] = []

        async def failure(update_id: int, item: Any, exc: Exception) -> bool:
            """Count a failure; True when the update should be retried (fetched again)."""
            count = failures.get(update_id, 0) + 1
            failures[update_id] = count
            if count >= MAX_UPDATE_FAILURES:
                log.error("update {} failed {} times, skipping: {}", update_id, count, exc)
                await sink.on_invalid(CHANNEL, _chat_key(item), f"gave up: {exc}")
                failures.pop(update_id, None)
                return False
            log.warning("update {} not committed ({}); will be re-fetched", update_id, exc)
            return True

        async def run_chat(items: list[tuple[int, Any]]) -> None:
            handed: list[tuple[int, Any, asyncio.Future[None]]] = []
            for position, (update_id, item) in enumerate(items):
                try:
                    call = await self.prepare_update(item, sink)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a download failed: retry from here on
                    if await failure(update_id, item, exc):
                        failed.extend(uid for uid, _ in items[position:])
                        break
                    continue
                if call is not None:
                    handed.append((update_id, item, asyncio.ensure_future(call)))
            for update_id, item, future in handed:
                try:
                    await future
                    failures.pop(update_id, None)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if await failure(update_id, item, exc):
                        failed.append(update_id)

        await asyncio.gather(*(run_chat(items) for items in by_chat.values()))
        return min(failed) if failed else top

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
                "sender": tu.display_name(reply.from_),
                "text": clean_text(reply.text or reply.caption, 4_000),
                "id": our_message_id(chat.id, reply.message_id),
            }
        thread = message.message_thread_id if message.is_topic_message else None
        return make_event(
            channel_type=CHANNEL,
            platform_id=str(chat.id),
            message_id=our_message_id(chat.id, message.message_id),
            sender_id=f"telegram:{sender.id}" if sender else f"telegram:chat{chat.id}",
            sender_name=tu.display_name(sender) or tu.chat_title(chat),
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
        for file_id, name, kind, mime, size in wanted:
            if size is not None and size > MAX_ATTACHMENT_BYTES:
                notes.append(f"[attachment {name} not downloaded: {size} bytes is over the limit]")
                continue
            data = await self._download(file_id, name, notes)
            if data is not None:
                files.append({"name": name, "data": data, "kind": kind, "mime_type": mime})
        return files, notes

    async def _download(self, file_id: str, name: str, notes: list[str]) -> bytes | None:
        try:
            handle = await self.bot.get_file(file_id)
            data = bytes(await handle.download_as_bytearray())
        except error.BadRequest as exc:  # e.g. "file is too big": permanent, note it and go on
            notes.append(f"[attachment {name} not downloaded: {exc.message}]")
            return None
        if len(data) > MAX_ATTACHMENT_BYTES:
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
