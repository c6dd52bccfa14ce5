"""Generic webhooks: ``POST /webhook/<source>``, signed with HMAC-SHA256.

Each source named in ``settings.webhook_secrets`` has its own secret (settings validation
refuses empty and short ones). Two signature schemes are accepted:

- **Ours** (use it for anything you write yourself). Four headers::

      X-Nanoclaw-Timestamp: <unix seconds>
      X-Nanoclaw-Event: <event name>
      X-Nanoclaw-Delivery: <delivery id: unique per delivery, the same for its retries>
      X-Nanoclaw-Signature: sha256=<hex HMAC-SHA256(secret, signed_message(...))>

  where the signed message is ``"<timestamp>\n<event>\n<delivery>\n"`` followed by the raw
  body (newlines, because event names and delivery ids may contain dots). Everything that
  shapes the row is signed, and the timestamp must be within five minutes of our clock: a
  captured request replayed inside that window has the same delivery id, so it is the same
  row; changing the id, the event or the timestamp breaks the signature.
- **GitHub's**, so a GitHub webhook works as is: ``X-Hub-Signature-256: sha256=<hex HMAC of
  the body>``, with ``X-GitHub-Event`` and ``X-GitHub-Delivery``. Only the body is signed
  and there is no timestamp, so a captured request can be replayed at any time under a new
  delivery id (or another event name) and becomes a new row. docs/internals.md says so.

Either way a delivery id is required: the row's message id is ``wh-<source>-<delivery id>``,
so a retried delivery is deduplicated and two deliveries with the same body are two rows
(there is no body-hash fallback that would swallow a payload sent twice on purpose).

A request that is not authentic (no or a wrong signature, a stale timestamp, a missing
signed header, a non-ASCII header) gets 401 and a recorded drop; the body is never parsed. A
body over ``MAX_BODY_BYTES`` gets 413 and a drop. Authentic deliveries are rate limited per
source (a token bucket: ``burst`` at once, then ``rate_per_minute``): past it, 429 with
``Retry-After`` and a ``rate_limited`` drop, before anything is parsed or stored. An authentic
one must be JSON nested at most ``jsonlimits.MAX_DEPTH`` levels, with valid names, else 400
and a recorded drop (a 40,000-deep body is measured on the raw bytes, never recursed into).
The router records drops of one source and reason at most once a second, with a count, so a
flood costs neither a write nor a log line per request.

The request is a chat ``webhook/<source>`` from sender ``webhook:<source>``, so a source is
wired to agent groups like any chat (an unwired one raises a registration card). The answer
(200) is sent after the commit; 503 when the row (or the drop) could not be committed, so
the sender retries.

The router turns the event into a ``webhook`` row: the event's text is
``{"event": <name>, "payload": <body>}`` (``common.webhook_text`` / ``common.parse_webhook_text``).
Sources cannot receive messages: the outbound half refuses permanently.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web
from loguru import logger

from nanoclaw_common.channels.base import (
    INVALID_INPUT,
    RATE_LIMITED,
    ChannelAdapter,
    InboundSink,
    OutgoingFile,
)
from nanoclaw_common.channels.common import make_event, not_committed, webhook_text
from nanoclaw_common.errors import DecodeError, PermanentFailure
from nanoclaw_common.jsonlimits import decode_json
from nanoclaw_common.messages import MAX_TEXT_CHARS, AskQuestion, InboundEvent
from nanoclaw_common.ratelimit import RateLimiter, retry_after_header
from nanoclaw_common.settings import MIN_WEBHOOK_SECRET_CHARS

log = logger.bind(component="webhook")

CHANNEL: Final = "webhook"
MAX_BODY_BYTES: Final = MAX_TEXT_CHARS - 1_000  # the body travels inside the event's text
MAX_SKEW_S: Final = 300  # our scheme: the timestamp must be this close to our clock
SOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
DELIVERY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")
EVENT_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
TIMESTAMP = re.compile(r"^[0-9]{1,12}$")

SIGNATURE = "X-Nanoclaw-Signature"
TIMESTAMP_HEADER = "X-Nanoclaw-Timestamp"
EVENT_HEADER = "X-Nanoclaw-Event"
DELIVERY_HEADER = "X-Nanoclaw-Delivery"
GITHUB_SIGNATURE = "X-Hub-Signature-256"
GITHUB_EVENT = "X-GitHub-Event"
GITHUB_DELIVERY = "X-GitHub-Delivery"


class NotAuthentic(Exception):
    """The request does not prove it comes from the source's secret holder (401)."""


@dataclass(frozen=True)
class Signed:
    """What an authentic request says about itself. In our scheme every field was signed;
    in GitHub's only the body was (``event`` and ``delivery`` are the sender's word)."""

    event: str
    delivery: str | None
    timestamp_s: int | None  # ours only


def signed_message(timestamp: str, event: str, delivery: str, body: bytes) -> bytes:
    """What our scheme's signature covers."""
    return f"{timestamp}\n{event}\n{delivery}\n".encode() + body


def sign(secret: str, body: bytes, *, timestamp: str, event: str, delivery: str) -> str:
    """Our scheme's ``X-Nanoclaw-Signature`` value."""
    digest = hmac.new(
        secret.encode(), signed_message(timestamp, event, delivery, body), hashlib.sha256
    )
    return "sha256=" + digest.hexdigest()


def sign_body(secret: str, body: bytes) -> str:
    """GitHub's ``X-Hub-Signature-256`` value: the body alone."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def same_signature(expected: str, given: str | None) -> bool:
    """Constant-time comparison of untrusted header text. ``hmac.compare_digest`` raises
    ``TypeError`` on a non-ASCII ``str``; such a header is simply not the signature."""
    if not given or not given.isascii() or len(given) > 200:
        return False
    return hmac.compare_digest(expected, given)


def authenticate(secret: str, body: bytes, headers: Mapping[str, str], now_s: float) -> Signed:
    """Check the request's signature (ours if ``X-Nanoclaw-Signature`` is present, else
    GitHub's); raises ``NotAuthentic``. GitHub requests ignore our other headers: they
    are not signed there."""
    ours = headers.get(SIGNATURE)
    if ours is not None:
        values = {
            name: headers.get(name) for name in (TIMESTAMP_HEADER, EVENT_HEADER, DELIVERY_HEADER)
        }
        missing = [name for name, value in values.items() if not value]
        if missing:
            raise NotAuthentic(f"missing {', '.join(missing)}")
        timestamp, event, delivery = (str(values[name]) for name in values)
        if not all(value.isascii() for value in (timestamp, event, delivery)):
            raise NotAuthentic("a signed header is not ASCII")
        if not TIMESTAMP.match(timestamp):
            raise NotAuthentic(f"{TIMESTAMP_HEADER} is not unix seconds")
        if abs(now_s - int(timestamp)) > MAX_SKEW_S:
            raise NotAuthentic(f"{TIMESTAMP_HEADER} is more than {MAX_SKEW_S}s away")
        expected = sign(secret, body, timestamp=timestamp, event=event, delivery=delivery)
        if not same_signature(expected, ours):
            raise NotAuthentic("bad signature")
        return Signed(event, delivery, int(timestamp))
    github = headers.get(GITHUB_SIGNATURE)
    if github is None:
        raise NotAuthentic("unsigned")
    if not same_signature(sign_body(secret, body), github):
        raise NotAuthentic("bad signature")
    return Signed(headers.get(GITHUB_EVENT) or "webhook", headers.get(GITHUB_DELIVERY), None)


async def _record(
    sink: InboundSink, source: str, reason: str, *, code: str = INVALID_INPUT
) -> None:
    """Record a refused request, best effort: the answer (401, 413, 429) is the same either
    way, and the sender has nothing to retry that would change it."""
    try:
        await sink.on_invalid(CHANNEL, source, reason, code=code)
    except Exception as exc:
        if not not_committed(CHANNEL, exc):
            log.warning("could not record a refused webhook for {}: {}", source, exc)


class WebhookAdapter(ChannelAdapter):
    channel_type = CHANNEL
    text_limit = MAX_TEXT_CHARS

    def __init__(
        self,
        secrets: dict[str, str],
        host: str,
        port: int,
        *,
        rate_per_minute: int = 60,
        burst: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        bad = [name for name in secrets if not SOURCE_NAME.match(name)]
        if bad:
            raise PermanentFailure(f"webhook source names must match {SOURCE_NAME.pattern}: {bad}")
        short = sorted(
            name
            for name, secret in secrets.items()
            if len(secret.strip()) < MIN_WEBHOOK_SECRET_CHARS
        )
        if short:
            # Settings validation refuses these already; an adapter built another way too.
            raise PermanentFailure(f"webhook secrets too short for: {short}")
        self.secrets = dict(secrets)
        self.host = host
        self.port = port
        self.bound_port = 0
        self.limiter = RateLimiter(rate_per_minute, burst)
        self.clock = clock
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

    async def handle(
        self, request: web.Request, sink: InboundSink, *, now_s: float | None = None
    ) -> web.StreamResponse:
        source = request.match_info.get("source", "")
        secret = self.secrets.get(source)
        if secret is None:
            return web.Response(status=404, text="unknown webhook source")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            await _record(sink, source, f"webhook body over {MAX_BODY_BYTES} bytes")
            return web.Response(status=413, text=f"body over {MAX_BODY_BYTES} bytes")
        try:
            signed = authenticate(
                secret, body, request.headers, time.time() if now_s is None else now_s
            )
        except NotAuthentic as exc:
            # Refused either way: an unauthenticated request is nothing to retry. No log
            # line here: the router logs drops, at most once a second per source.
            await _record(sink, source, f"refused webhook: {exc}")
            return web.Response(status=401, text="invalid signature")
        wait_s = self.limiter.take(source, self.clock())
        if wait_s > 0:
            await _record(sink, source, "over the per-source webhook rate limit", code=RATE_LIMITED)
            return web.Response(
                status=429,
                text="too many deliveries, retry later",
                headers={"Retry-After": retry_after_header(wait_s)},
            )
        try:
            event = self.to_event(source, body, signed)
        except DecodeError as exc:
            try:
                await sink.on_invalid(CHANNEL, source, str(exc))
            except Exception as record_exc:
                # The drop is this request's commit: without it, the sender must retry.
                if not not_committed(CHANNEL, record_exc):
                    log.warning("invalid webhook not recorded ({})", record_exc)
                return web.Response(status=503, text="not committed, retry later")
            return web.Response(status=400, text=str(exc))
        try:
            await sink.on_event(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not not_committed(CHANNEL, exc):
                log.warning(
                    "webhook {} not committed ({}); the sender should retry", event.message_id, exc
                )
            return web.Response(status=503, text="not committed, retry later")
        return web.json_response({"ok": True, "id": event.message_id})

    def to_event(self, source: str, body: bytes, signed: Signed) -> InboundEvent:
        """The event of an authentic request; ``DecodeError`` for a body or names we do not
        take."""
        if not EVENT_NAME.match(signed.event):
            raise DecodeError(f"invalid webhook event name {signed.event[:80]!r}")
        if signed.delivery is None:
            raise DecodeError(f"a delivery id is required ({GITHUB_DELIVERY})")
        if not DELIVERY_ID.match(signed.delivery):
            raise DecodeError("invalid webhook delivery id")
        payload: Any = decode_json(body, what="webhook body", max_bytes=MAX_BODY_BYTES)
        stamp_s = signed.timestamp_s if signed.timestamp_s is not None else time.time()
        return make_event(
            channel_type=CHANNEL,
            platform_id=source,
            message_id=f"wh-{source}-{signed.delivery}",
            sender_id=f"webhook:{source}",
            sender_name=source,
            text=webhook_text(signed.event, payload),
            timestamp_ms=int(stamp_s * 1000),
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
