"""Slack: slack-sdk against ``SLACK_API_BASE_URL``; Socket Mode and/or the Events API.

Inbound, either or both:
- Socket Mode (``SLACK_APP_TOKEN``): each envelope is acknowledged on the websocket only after
  its rows are committed. One that could not be committed is retried here with a capped
  exponential backoff while the connection lives, and is never acknowledged before it went
  through; a crash leaves it unacknowledged, so Slack re-sends it.
- Events API over HTTP (``slack_events_port``): ``POST /slack/events`` for event callbacks and
  interactivity payloads. The signing secret and a five-minute timestamp window are checked
  before anything is parsed (a refusal is a 401 and a recorded drop); the 200 goes out after
  the commit, and a 500 when it could not be committed, so Slack retries.

Slack hands one message over more than once: as ``message`` and as ``app_mention`` when it
mentions us, and again when an acknowledgement came late. Each message id is routed once per
process (``_once``): a copy waits for the first attempt and is acknowledged after it, without
routing again (no second drop record); a failed attempt is forgotten, so the next copy tries.

Ids: chat = the channel id (``C…``, ``G…``, ``D…`` for DMs); users ``slack:<user id>``;
message = ``<channel>_<ts>`` (outbound methods accept a bare ts too). Thread: in a channel
every top-level message starts its own thread (thread id = its ``ts``; replies carry it as
``thread_ts``), so the agent answers in that thread and the thread's follow-ups reach the
same per-thread session. A DM is one conversation: no thread unless the person replied in
one (``thread_ts``).
Slack has no typing indicator for bots outside assistant threads: ``set_typing`` does nothing.

This module is the adapter: its inbound half (Socket Mode, the Events API) and the outbound
methods. The Web API's error mapping, message ids and card blocks are ``slack_web``; the
download of a message's files is ``slack_files``; payload decoding and the signature check
are ``slack_payloads``.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import parse_qs

import aiohttp
from aiohttp import web
from loguru import logger
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.web.async_client import AsyncWebClient

from nanoclaw_common.channels import slack_files
from nanoclaw_common.channels import slack_payloads as sp
from nanoclaw_common.channels.base import (
    ChannelAdapter,
    InboundSink,
    OutgoingFile,
    command_after_self_mention,
)
from nanoclaw_common.channels.common import (
    MAX_MESSAGE_ATTACHMENT_BYTES,
    Backoff,
    make_action,
    make_event,
    not_committed,
    parse_button_data,
    safe_platform_id,
)
from nanoclaw_common.channels.slack_web import (
    call,
    card_blocks,
    emoji_name,
    question_blocks,
    split_message_id,
)
from nanoclaw_common.errors import DecodeError, PermanentFailure, RetryLater
from nanoclaw_common.messages import AskQuestion, InboundEvent, SendCard
from nanoclaw_common.untrusted import shown

log = logger.bind(component="slack")

CHANNEL: Final = "slack"
EVENTS_PATH: Final = "/slack/events"
EVENTS_PLATFORM_ID: Final = "events-api"  # where refused HTTP requests are recorded
SEEN_MESSAGES: Final = 4096  # message ids remembered for deduplication (``_once``)
RETRY_BASE_S: Final = 0.5  # a Socket Mode envelope that was not committed: first retry
RETRY_MAX_S: Final = 30.0
Sleep = Callable[[float], Awaitable[None]]


class SlackAdapter(ChannelAdapter):
    channel_type = CHANNEL
    text_limit = 4000  # Slack truncates past 40k; 4k keeps messages readable
    supports_threads = True
    supports_cards = True

    def __init__(
        self,
        bot_token: str,
        base_url: str,
        *,
        app_token: str = "",
        signing_secret: str = "",
        events_host: str = "127.0.0.1",
        events_port: int = 0,
        sleep: Sleep = asyncio.sleep,
        max_message_bytes: int = MAX_MESSAGE_ATTACHMENT_BYTES,
    ) -> None:
        self.bot_token = bot_token
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.app_token = app_token
        self.signing_secret = signing_secret
        self.events_host = events_host
        self.events_port = events_port
        self._session: aiohttp.ClientSession | None = None
        self._web: AsyncWebClient | None = None
        self._socket: SocketModeClient | None = None
        self._runner: web.AppRunner | None = None
        self._bot_user_id = ""
        self._names: dict[str, str] = {}
        self._chat_names: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Message id -> its first routing attempt, oldest first (see ``_once``).
        self._seen: OrderedDict[str, asyncio.Future[None]] = OrderedDict()
        self._sleep = sleep  # tests record the retry delays instead of waiting them out
        self.max_message_bytes = max_message_bytes  # all of one message's files together
        self.bound_port = 0  # the Events API port actually bound (tests bind port 0)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._web = AsyncWebClient(
            token=self.bot_token, base_url=self.base_url, session=self._session, timeout=20
        )

    async def close(self) -> None:
        await self._stop_inbound()
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._web = None

    def is_connected(self) -> bool:
        return self._web is not None

    @property
    def api(self) -> AsyncWebClient:
        if self._web is None:
            raise RetryLater("slack adapter not started")
        return self._web

    # -- inbound --------------------------------------------------------------------------

    async def run_inbound(self, sink: InboundSink) -> None:
        await self._identify()
        if not self.app_token and not self.events_port:
            log.warning("neither SLACK_APP_TOKEN nor slack_events_port set: no Slack inbound")
        try:
            if self.events_port:
                await self._serve_events(sink)
            if self.app_token:
                await self._connect_socket_mode(sink)
            await asyncio.Event().wait()  # the SDK and aiohttp run their own tasks
        finally:
            # Also when the router restarts this half after a failure: no second socket
            # client, and the events port is free to bind again.
            await self._stop_inbound()

    async def _stop_inbound(self) -> None:
        if self._socket is not None:
            socket, self._socket = self._socket, None
            await socket.close()  # type: ignore[no-untyped-call]
            await socket.aiohttp_client_session.close()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _identify(self) -> None:
        attempt = 0
        while True:
            try:
                response = await self.api.auth_test()
                self._bot_user_id = str(response.get("user_id") or "")
                log.info("connected as {}", self._bot_user_id)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = min(30.0, 2.0**attempt)
                attempt += 1
                log.warning("auth.test failed ({}); retrying in {}s", exc, delay)
                await asyncio.sleep(delay)

    async def _connect_socket_mode(self, sink: InboundSink) -> None:
        client = SocketModeClient(app_token=self.app_token, web_client=self.api)

        async def on_frame(client: Any, _message: dict[str, Any], raw: str | None) -> None:
            await self.handle_frame(client, raw or "", sink)

        client.message_listeners.append(on_frame)
        self._socket = client
        await client.connect()  # type: ignore[no-untyped-call]

    async def handle_frame(self, client: Any, raw: str, sink: InboundSink) -> None:
        """One Socket Mode frame. The envelope is acknowledged after the commit; a decode
        problem is recorded and acknowledged (poison is never re-sent). A failure to commit
        (or to record the drop) is never acknowledged: it is retried with a capped
        exponential backoff while this connection lives, and after that left to Slack,
        which re-sends what was not acknowledged."""
        try:
            envelope = sp.decode_envelope(raw)
        except DecodeError as exc:
            await sink.on_invalid(CHANNEL, "unknown", str(exc))
            return
        if envelope.type in ("hello", "disconnect") or envelope.envelope_id is None:
            return
        backoff = Backoff(base_s=RETRY_BASE_S, max_s=RETRY_MAX_S)
        while True:
            try:
                await self._handle_envelope(envelope, sink)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._socket is not client:
                    # The inbound half stopped (or this is not our live connection):
                    # not acknowledged, so Slack re-sends it to the next connection.
                    if not not_committed(CHANNEL, exc):
                        log.warning(
                            "envelope {} not committed ({})", shown(envelope.envelope_id), exc
                        )
                    return
                delay = backoff.next_delay_s()
                if not not_committed(CHANNEL, exc):
                    log.warning(
                        "envelope {} not committed ({}); retrying in {}s",
                        shown(envelope.envelope_id),
                        exc,
                        delay,
                    )
                await self._sleep(delay)
        await client.send_socket_mode_response({"envelope_id": envelope.envelope_id})

    async def _handle_envelope(self, envelope: sp.Envelope, sink: InboundSink) -> None:
        try:
            if envelope.type == "events_api":
                await self.handle_callback(sp.decode_callback(envelope.payload), sink)
            elif envelope.type == "interactive":
                await self.handle_interaction(envelope.payload, sink)
            else:
                await sink.on_invalid(CHANNEL, "unknown", f"unsupported envelope {envelope.type!r}")
        except DecodeError as exc:
            await sink.on_invalid(CHANNEL, _channel_of(envelope.payload), str(exc))

    async def handle_callback(self, callback: sp.EventCallback, sink: InboundSink) -> None:
        if callback.type != "event_callback":
            await sink.on_invalid(CHANNEL, "unknown", f"unsupported callback {callback.type!r}")
            return
        kind = callback.event.get("type") if isinstance(callback.event, dict) else None
        if kind not in ("message", "app_mention"):
            await sink.on_invalid(
                CHANNEL, _channel_of(callback.event), f"unsupported event {kind!r}"
            )
            return
        message = sp.decode_message_event(callback.event)
        await self._once(f"{message.channel}_{message.ts}", lambda: self._route(message, sink))

    async def _route(self, message: sp.MessageEvent, sink: InboundSink) -> None:
        lock = self._locks.setdefault(message.channel, asyncio.Lock())
        # One channel's messages reach the router in arrival order: each is handed over
        # (the sink call started) before the next one's files are fetched; the commit is
        # awaited outside the lock, so commits of one channel can share a transaction.
        async with lock:
            event = await self.to_event(message)
            handed = None if event is None else asyncio.ensure_future(sink.on_event(event))
        if handed is not None:
            await handed

    async def _once(self, key: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` for message ``key`` unless an attempt for it already succeeded in
        this process. A copy that arrives while an attempt is in flight waits for it: if it
        succeeded, the copy is done (and may be acknowledged); if it failed, the copy makes
        its own attempt. Raises what ``work`` raises."""
        while (earlier := self._seen.get(key)) is not None:
            await asyncio.wait({earlier})
            if not earlier.cancelled() and earlier.exception() is None:
                self._seen.move_to_end(key)
                return
            if self._seen.get(key) is earlier:
                del self._seen[key]
        attempt = asyncio.ensure_future(work())
        self._seen[key] = attempt
        while len(self._seen) > SEEN_MESSAGES:
            self._seen.popitem(last=False)
        try:
            await attempt
        except BaseException:
            if self._seen.get(key) is attempt:
                del self._seen[key]
            raise

    async def handle_interaction(self, raw: Any, sink: InboundSink) -> None:
        payload = sp.decode_block_actions(raw)
        if payload.type != "block_actions" or not payload.actions:
            await sink.on_invalid(CHANNEL, "unknown", f"unsupported interaction {payload.type!r}")
            return
        token, index = parse_button_data(payload.actions[0].value)
        channel = (payload.channel.id if payload.channel else None) or (
            payload.container.channel_id if payload.container else None
        )
        if not channel:
            raise DecodeError("interaction without a channel")
        ts = (payload.message.ts if payload.message else None) or (
            payload.container.message_ts if payload.container else None
        )
        await sink.on_action(
            make_action(
                channel_type=CHANNEL,
                platform_id=channel,
                user_id=f"slack:{payload.user.id}",
                question_id=token,
                value=str(index),
                platform_message_id=f"{channel}_{ts}" if ts else None,
            )
        )

    async def to_event(self, message: sp.MessageEvent) -> InboundEvent | None:
        """None for what is not a person talking (our own or bots' messages, joins, edits)."""
        if message.subtype not in sp.USER_SUBTYPES or message.bot_id or not message.user:
            return None
        if message.user == self._bot_user_id:
            return None
        attachments, notes = await self._download(message.files)
        text = message.text
        if self._bot_user_id:
            text = command_after_self_mention(text, f"<@{self._bot_user_id}>")
        if notes:
            text = "\n".join([text, *notes]) if text else "\n".join(notes)
        # app_mention events carry no channel_type; a DM's channel id starts with D.
        direct = message.channel_type == "im" or (
            message.channel_type is None and message.channel.startswith("D")
        )
        # In a channel every top-level message is the root of its own thread.
        thread = message.thread_ts if direct else (message.thread_ts or message.ts)
        mention = (
            direct
            or message.type == "app_mention"
            or (bool(self._bot_user_id) and f"<@{self._bot_user_id}>" in message.text)
        )
        return make_event(
            channel_type=CHANNEL,
            platform_id=message.channel,
            message_id=f"{message.channel}_{message.ts}",
            sender_id=f"slack:{message.user}",
            sender_name=await self._user_name(message.user),
            text=text,
            timestamp_ms=_ts_ms(message.ts),
            thread_id=thread,
            is_mention=mention,
            is_group=not direct,
            attachments=attachments,
            chat_name=await self._chat_name(message.channel) if mention and not direct else None,
        )

    async def _download(self, files: list[sp.SlackFile]) -> tuple[list[dict[str, Any]], list[str]]:
        """The message's files within the size limits, and notes about those left out
        (``slack_files.download``; a transient failure raises ``RetryLater``)."""
        return await slack_files.download(
            self._session,
            files,
            bot_token=self.bot_token,
            api_base_url=self.base_url,
            max_message_bytes=self.max_message_bytes,
        )

    async def _user_name(self, user: str) -> str:
        """users.info, cached; the id when Slack does not answer."""
        if user not in self._names:
            try:
                info = await self.api.users_info(user=user)
                profile = (info.get("user") or {}).get("profile") or {}
                self._names[user] = str(
                    profile.get("display_name") or profile.get("real_name") or user
                )
            except Exception as exc:
                log.debug("users.info {} failed: {}", shown(user), exc)
                return user
        return self._names[user]

    async def _chat_name(self, channel: str) -> str | None:
        if channel not in self._chat_names:
            try:
                info = await self.api.conversations_info(channel=channel)
                self._chat_names[channel] = str((info.get("channel") or {}).get("name") or "")
            except Exception as exc:
                log.debug("conversations.info {} failed: {}", shown(channel), exc)
                return None
        return self._chat_names[channel] or None

    # -- Events API over HTTP -------------------------------------------------------------

    async def _serve_events(self, sink: InboundSink) -> None:
        app = web.Application(client_max_size=sp.MAX_REQUEST_BYTES)

        async def handler(request: web.Request) -> web.StreamResponse:
            return await self.handle_http(request, sink)

        app.router.add_post(EVENTS_PATH, handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.events_host, self.events_port)
        await site.start()
        self._runner = runner
        addresses = runner.addresses
        self.bound_port = int(addresses[0][1]) if addresses else self.events_port
        log.info("Events API on http://{}:{}{}", self.events_host, self.bound_port, EVENTS_PATH)

    async def handle_http(
        self, request: web.Request, sink: InboundSink, *, now_s: float | None = None
    ) -> web.StreamResponse:
        body = await request.read()
        ok = bool(self.signing_secret.strip()) and sp.signature_ok(
            self.signing_secret,
            body,
            request.headers.get("X-Slack-Request-Timestamp"),
            request.headers.get("X-Slack-Signature"),
            time.time() if now_s is None else now_s,
        )
        if not ok:
            # Unauthenticated: refused before anything is parsed. The refusal is recorded
            # (the router counts a flood in memory and writes, and logs, once a second).
            await _record_refusal(
                sink, "refused Events API request: bad signature or stale timestamp"
            )
            return web.Response(status=401, text="invalid signature")
        try:
            if request.content_type == "application/x-www-form-urlencoded":
                form = parse_qs(body.decode("utf-8", "replace"))
                payload = form.get("payload", [""])[0]
                await self._interaction_text(payload, sink)
                return web.Response(status=200)
            callback = sp.decode_callback_body(body)
            if callback.type == "url_verification":
                return web.json_response({"challenge": callback.challenge or ""})
            await self.handle_callback(callback, sink)
        except DecodeError as exc:
            try:
                await sink.on_invalid(CHANNEL, "unknown", str(exc))
            except Exception as record_exc:
                # The drop is the commit for a poison event: without it, no 4xx either.
                if not not_committed(CHANNEL, record_exc):
                    log.warning("invalid event not recorded ({}); Slack will retry", record_exc)
                return web.Response(status=500, text="not committed")
            return web.Response(status=400, text=str(exc))
        except Exception as exc:
            if not not_committed(CHANNEL, exc):
                log.warning("event not committed ({}); Slack will retry", exc)
            return web.Response(status=500, text="not committed")
        return web.Response(status=200)

    async def _interaction_text(self, payload: str, sink: InboundSink) -> None:
        await self.handle_interaction(sp.decode_interaction(payload), sink)

    # -- outbound -------------------------------------------------------------------------

    async def send_text(
        self,
        platform_id: str,
        thread_id: str | None,
        text: str,
        files: list[OutgoingFile] | None = None,
    ) -> str | None:
        if not text.strip() and not files:
            raise PermanentFailure("slack cannot send an empty message")
        first: str | None = None
        if text.strip():
            response = await call(
                lambda: self.api.chat_postMessage(
                    channel=platform_id, text=text, thread_ts=thread_id
                )
            )
            first = f"{platform_id}_{response['ts']}"
        for item in files or []:
            data = item.path.read_bytes()
            upload = functools.partial(
                self.api.files_upload_v2,
                channel=platform_id,
                file=data,
                filename=item.name,
                thread_ts=thread_id,
            )
            await call(upload)
        return first

    async def edit_text(
        self, platform_id: str, thread_id: str | None, message_id: str, text: str
    ) -> None:
        channel, ts = split_message_id(message_id)
        await call(lambda: self.api.chat_update(channel=channel or platform_id, ts=ts, text=text))

    async def add_reaction(
        self, platform_id: str, thread_id: str | None, message_id: str, emoji: str
    ) -> None:
        channel, ts = split_message_id(message_id)
        await call(
            lambda: self.api.reactions_add(
                channel=channel or platform_id, timestamp=ts, name=emoji_name(emoji)
            )
        )

    async def send_question(
        self, platform_id: str, thread_id: str | None, question: AskQuestion
    ) -> str | None:
        text, blocks = question_blocks(question)
        response = await call(
            lambda: self.api.chat_postMessage(
                channel=platform_id, text=text, blocks=blocks, thread_ts=thread_id
            )
        )
        return f"{platform_id}_{response['ts']}"

    async def send_card(
        self, platform_id: str, thread_id: str | None, card: SendCard
    ) -> str | None:
        fallback, blocks = card_blocks(card)
        response = await call(
            lambda: self.api.chat_postMessage(
                channel=platform_id, text=fallback, blocks=blocks, thread_ts=thread_id
            )
        )
        return f"{platform_id}_{response['ts']}"

    async def set_typing(self, platform_id: str, thread_id: str | None) -> None:
        return None  # no bot typing indicator in the Web API

    async def open_dm(self, user_handle: str) -> str:
        response = await call(lambda: self.api.conversations_open(users=user_handle))
        channel = response.get("channel") or {}
        channel_id = channel.get("id") if isinstance(channel, dict) else None
        if not channel_id:
            raise RetryLater("conversations.open returned no channel")
        return str(channel_id)


async def _record_refusal(sink: InboundSink, reason: str) -> None:
    """Record an unauthenticated request as a drop; it is refused whether or not that works
    (there is nothing to retry: it was not a message of ours)."""
    try:
        await sink.on_invalid(CHANNEL, EVENTS_PLATFORM_ID, reason)
    except Exception as exc:
        if not not_committed(CHANNEL, exc):
            log.warning("could not record a refused request: {}", exc)


def _ts_ms(ts: str) -> int:
    try:
        return int(float(ts) * 1000)
    except ValueError:
        raise DecodeError(f"invalid slack ts {ts!r}") from None


def _channel_of(raw: Any) -> str:
    if isinstance(raw, dict):
        channel = raw.get("channel")
        if isinstance(channel, dict):
            channel = channel.get("id")
        if channel is None and isinstance(raw.get("event"), dict):
            channel = raw["event"].get("channel")
        return safe_platform_id(channel)
    return "unknown"
