"""Generic webhooks: ``POST /webhook/<source>`` with an HMAC-SHA256 signature.

Each source named in ``settings.webhook_secrets`` has its own secret. The signature is
``sha256=<hex HMAC of the raw body>`` in ``X-Nanoclaw-Signature`` (GitHub's
``X-Hub-Signature-256`` is accepted too, so a GitHub webhook works as is). Unsigned or
wrongly signed requests get 401 and touch nothing. The body must be JSON (at most
``MAX_BODY_BYTES``); the event name comes from ``X-Nanoclaw-Event`` / ``X-GitHub-Event``, or
``"webhook"``.

The request is a chat ``webhook/<source>`` from sender ``webhook:<source>``, so a source is
wired to agent groups like any chat (an unwired one raises a registration card). Its message
id is the delivery id header (``X-Nanoclaw-Delivery`` / ``X-GitHub-Delivery``), else a hash of
the body: a retried delivery is deduplicated. The answer (200) is sent after the commit; 503
when the row could not be committed, so the sender retries.

The router turns the event into a ``webhook`` row: the event's text is
``{"event": <name>, "payload": <body>}`` (``common.webhook_text`` / ``common.parse_webhook_text``).
Sources cannot receive messages: the outbound half refuses permanently.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
from typing import Any, Final

import msgspec
from aiohttp import web
from loguru import logger

from nanoclaw_common.channels.base import (
    ChannelAdapter,
    InboundSink,
    OutgoingFile,
)
from nanoclaw_common.channels.common import make_event, webhook_text
from nanoclaw_common.clock import now_ms
from nanoclaw_common.errors import DecodeError, PermanentFailure
from nanoclaw_common.messages import MAX_TEXT_CHARS, AskQuestion, InboundEvent

log = logger.bind(component="webhook")

CHANNEL: Final = "webhook"
MAX_BODY_BYTES: Final = MAX_TEXT_CHARS - 1_000  # the body travels inside the event's text
SOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
DELIVERY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")
EVENT_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    return bool(header) and hmac.compare_digest(sign(secret, body), header or "")


class WebhookAdapter(ChannelAdapter):
    channel_type = CHANNEL
    text_limit = MAX_TEXT_CHARS

    def __init__(self, secrets: dict[str, str], host: str, port: int) -> None:
        bad = [name for name in secrets if not SOURCE_NAME.match(name)]
        if bad:
            raise PermanentFailure(f"webhook source names must match {SOURCE_NAME.pattern}: {bad}")
        self.secrets = dict(secrets)
        self.host = host
        self.port = port
        self.bound_port = 0
        self._runner: web.AppRunner | None = None

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def run_inbound(self, sink: InboundSink) -> None:
        app = web.Application(client_max_size=MAX_BODY_BYTES)

        async def handler(request: web.Request) -> web.StreamResponse:
            return await self.handle(request, sink)

        app.router.add_post("/webhook/{source}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        self._runner = runner
        self.bound_port = int(runner.addresses[0][1]) if runner.addresses else self.port
        log.info("webhooks on http://{}:{}/webhook/<source>", self.host, self.bound_port)
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()  # free the port, also for a restart of this half

    async def handle(self, request: web.Request, sink: InboundSink) -> web.StreamResponse:
        source = request.match_info.get("source", "")
        secret = self.secrets.get(source)
        if secret is None:
            return web.Response(status=404, text="unknown webhook source")
        body = await request.read()
        signature = request.headers.get("X-Nanoclaw-Signature") or request.headers.get(
            "X-Hub-Signature-256"
        )
        if not signature_ok(secret, body, signature):
            log.warning("refused webhook for {}: bad signature", source)
            return web.Response(status=401, text="invalid signature")
        try:
            event = self.to_event(source, body, request.headers)
        except DecodeError as exc:
            await sink.on_invalid(CHANNEL, source, str(exc))
            return web.Response(status=400, text=str(exc))
        try:
            await sink.on_event(event)
        except Exception as exc:
            log.warning(
                "webhook {} not committed ({}); the sender should retry", event.message_id, exc
            )
            return web.Response(status=503, text="not committed, retry later")
        return web.json_response({"ok": True, "id": event.message_id})

    def to_event(self, source: str, body: bytes, headers: Any) -> InboundEvent:
        try:
            payload = msgspec.json.decode(body)
        except msgspec.DecodeError as exc:
            raise DecodeError(f"webhook body is not JSON: {exc}") from None
        name = headers.get("X-Nanoclaw-Event") or headers.get("X-GitHub-Event") or "webhook"
        if not EVENT_NAME.match(name):
            raise DecodeError(f"invalid webhook event name {name[:80]!r}")
        delivery = headers.get("X-Nanoclaw-Delivery") or headers.get("X-GitHub-Delivery")
        if delivery is not None and not DELIVERY_ID.match(delivery):
            raise DecodeError("invalid webhook delivery id")
        key = delivery or hashlib.sha256(body).hexdigest()[:40]
        return make_event(
            channel_type=CHANNEL,
            platform_id=source,
            message_id=f"wh-{source}-{key}",
            sender_id=f"webhook:{source}",
            sender_name=source,
            text=webhook_text(name, payload),
            timestamp_ms=now_ms(),
            # A configured source that nobody wired yet raises a registration card.
            is_mention=True,
            is_group=False,
            chat_name=f"webhook {source}",
        )

    # -- outbound: sources only send ------------------------------------------------------

    async def send_text(
        self,
        platform_id: str,
        thread_id: str | None,
        text: str,
        files: list[OutgoingFile] | None = None,
    ) -> str | None:
        raise PermanentFailure("webhook sources cannot receive messages")

    async def edit_text(
        self, platform_id: str, thread_id: str | None, message_id: str, text: str
    ) -> None:
        raise PermanentFailure("webhook sources cannot receive messages")

    async def add_reaction(
        self, platform_id: str, thread_id: str | None, message_id: str, emoji: str
    ) -> None:
        raise PermanentFailure("webhook sources cannot receive messages")

    async def send_question(
        self, platform_id: str, thread_id: str | None, question: AskQuestion
    ) -> str | None:
        raise PermanentFailure("webhook sources cannot receive messages")
