"""Signature checks of the two HTTP front doors (webhooks, Slack's Events API) against header
values of any kind, sent as raw bytes over a real socket to the real aiohttp handlers: a
request that is not authentic is a 401 and one recorded drop, never a 500 or a traceback.

Header values are untrusted text: aiohttp hands non-ASCII bytes over as ``str`` (UTF-8, or
surrogate escapes for anything else), and ``hmac.compare_digest`` raises ``TypeError`` on a
non-ASCII ``str``."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanoclaw_common.channels import webhook
from nanoclaw_common.channels.base import INVALID_INPUT
from nanoclaw_common.channels.slack import SlackAdapter
from nanoclaw_common.channels.webhook import NotAuthentic, WebhookAdapter, authenticate, sign
from nanoclaw_common.messages import ActionEvent, InboundEvent
from tests.fakes.server_thread import ServerThread
from tests.fakes.slack_api import SIGNING_SECRET

SECRET = "webhook-secret-0123"
BODY = b'{"status": "failed"}'


class RecordingSink:
    """Thread-safe enough for one request at a time: the server's loop appends, the test
    reads after the response."""

    def __init__(self) -> None:
        self.events: list[InboundEvent] = []
        self.invalid: list[tuple[str, str, str]] = []

    async def on_event(self, event: InboundEvent) -> None:
        self.events.append(event)

    async def on_action(self, action: ActionEvent) -> None:
        raise AssertionError("no clicks here")

    async def on_invalid(
        self, channel_type: str, platform_id: str, reason: str, *, code: str = INVALID_INPUT
    ) -> None:
        self.invalid.append((channel_type, platform_id, reason))


class Front:
    """Both handlers on one local server."""

    def __init__(self) -> None:
        self.sink = RecordingSink()
        self.hooks = WebhookAdapter({"ci": SECRET}, "127.0.0.1", 0)
        self.slack = SlackAdapter(
            "xoxb-x", "http://127.0.0.1:9/api/", signing_secret=SIGNING_SECRET
        )
        self.server = ServerThread(self._app).start()

    def _app(self) -> web.Application:
        app = web.Application()

        async def hook(request: web.Request) -> web.StreamResponse:
            return await self.hooks.handle(request, self.sink)

        async def events(request: web.Request) -> web.StreamResponse:
            return await self.slack.handle_http(request, self.sink)

        app.router.add_post("/webhook/{source}", hook)
        app.router.add_post("/slack/events", events)
        return app

    def post(self, path: str, headers: list[tuple[str, bytes]], body: bytes = BODY) -> int:
        """A raw HTTP/1.1 POST, header values sent as the exact bytes given."""
        head = [
            f"POST {path} HTTP/1.1".encode(),
            b"Host: 127.0.0.1",
            b"Content-Type: application/json",
            f"Content-Length: {len(body)}".encode(),
            b"Connection: close",
        ]
        head += [name.encode() + b": " + value for name, value in headers]
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=10) as conn:
            conn.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
            response = b""
            while chunk := conn.recv(65536):
                response += chunk
        return int(response.split(b" ", 2)[1])


@pytest.fixture(scope="module")
def front() -> Iterator[Front]:
    served = Front()
    yield served
    served.server.stop()


# Anything an HTTP parser lets through in a header value: printable ASCII, any Unicode
# (sent as UTF-8) and raw high bytes (not UTF-8 at all). Control characters end the header
# in the parser itself (a 400 before any handler runs), so they are not generated.
printable = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=80
).map(lambda text: text.strip().encode())
high_bytes = st.lists(st.one_of(st.integers(0x21, 0x7E), st.integers(0x80, 0xFF)), max_size=80).map(
    bytes
)
crafted = st.sampled_from(
    [
        "sha256=" + "é" * 64,
        "v0=" + "ü" * 64,
        "١٧٠٠٠٠٠٠٠٠",  # digits, but not ASCII digits
        "sha256=" + "0" * 64,
        "",
    ]
).map(str.encode)
values = st.one_of(printable, high_bytes, crafted)


timestamps = st.one_of(values, st.just(str(int(time.time())).encode()))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(headers=st.tuples(values, timestamps, values, values), github=st.booleans())
def test_webhook_headers_of_any_kind_are_a_401_and_a_drop(
    front: Front, headers: tuple[bytes, bytes, bytes, bytes], github: bool
) -> None:
    signature, timestamp, event, delivery = headers
    before = len(front.sink.invalid)
    if github:
        sent = [
            (webhook.GITHUB_SIGNATURE, signature),
            (webhook.GITHUB_EVENT, event),
            (webhook.GITHUB_DELIVERY, delivery),
        ]
    else:
        sent = [
            (webhook.SIGNATURE, signature),
            (webhook.TIMESTAMP_HEADER, timestamp),
            (webhook.EVENT_HEADER, event),
            (webhook.DELIVERY_HEADER, delivery),
        ]
    assert front.post("/webhook/ci", sent) == 401
    [(channel, source, reason)] = front.sink.invalid[before:]
    assert (channel, source) == ("webhook", "ci") and reason.startswith("refused webhook")
    assert front.sink.events == []


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(signature=values, timestamp=timestamps)
def test_slack_headers_of_any_kind_are_a_401_and_a_drop(
    front: Front, signature: bytes, timestamp: bytes
) -> None:
    before = len(front.sink.invalid)
    headers = [("X-Slack-Signature", signature), ("X-Slack-Request-Timestamp", timestamp)]
    assert front.post("/slack/events", headers) == 401
    [(channel, platform_id, _)] = front.sink.invalid[before:]
    assert (channel, platform_id) == ("slack", "events-api")
    assert front.sink.events == []


def test_a_non_ascii_signature_next_to_a_valid_one_is_still_refused(front: Front) -> None:
    """The examples hypothesis must always include, spelled out: the exact headers that
    used to raise ``TypeError`` (a 500) in ``hmac.compare_digest``."""
    stamp = str(int(time.time()))
    before = len(front.sink.invalid)
    assert front.post("/webhook/ci", [(webhook.GITHUB_SIGNATURE, "sha256=é".encode())]) == 401
    nanoclaw = [
        (webhook.SIGNATURE, ("sha256=" + "é" * 64).encode()),
        (webhook.TIMESTAMP_HEADER, stamp.encode()),
        (webhook.EVENT_HEADER, b"build"),
        (webhook.DELIVERY_HEADER, b"d-1"),
    ]
    assert front.post("/webhook/ci", nanoclaw) == 401
    slack = [("X-Slack-Signature", "v0=é".encode()), ("X-Slack-Request-Timestamp", stamp.encode())]
    assert front.post("/slack/events", slack) == 401
    assert len(front.sink.invalid) == before + 3
    # And the same requests correctly signed go through: the refusals were about the headers.
    good = sign(SECRET, BODY, timestamp=stamp, event="build", delivery="d-1")
    nanoclaw[0] = (webhook.SIGNATURE, good.encode())
    assert front.post("/webhook/ci", nanoclaw) == 200
    assert [e.message_id for e in front.sink.events] == ["wh-ci-d-1"]
    front.sink.events.clear()


def test_authenticate_covers_every_field_of_the_row() -> None:
    """Our scheme signs the timestamp, the event name, the delivery id and the body: change
    any one and the signature no longer matches; move the clock five minutes and it is
    stale."""
    now = 1_700_000_000
    stamp, event, delivery = str(now), "build.failed", "d.7"
    headers = {
        webhook.SIGNATURE: sign(SECRET, BODY, timestamp=stamp, event=event, delivery=delivery),
        webhook.TIMESTAMP_HEADER: stamp,
        webhook.EVENT_HEADER: event,
        webhook.DELIVERY_HEADER: delivery,
    }
    signed = authenticate(SECRET, BODY, headers, now_s=now)
    assert (signed.event, signed.delivery, signed.timestamp_s) == (event, delivery, now)
    changes = {
        webhook.TIMESTAMP_HEADER: str(now - 1),
        webhook.EVENT_HEADER: "build",
        webhook.DELIVERY_HEADER: "d.8",
    }
    for name, value in changes.items():
        with pytest.raises(NotAuthentic, match="bad signature"):
            authenticate(SECRET, BODY, {**headers, name: value}, now_s=now)
    # The separator cannot be shifted between fields: "build" + "failed.d.7" signs
    # differently from "build.failed" + "d.7".
    shifted = {**headers, webhook.EVENT_HEADER: "build", webhook.DELIVERY_HEADER: "failed.d.7"}
    with pytest.raises(NotAuthentic):
        authenticate(SECRET, BODY, shifted, now_s=now)
    with pytest.raises(NotAuthentic, match="bad signature"):
        authenticate(SECRET, BODY + b" ", headers, now_s=now)
    with pytest.raises(NotAuthentic, match="bad signature"):
        authenticate("another-secret-42", BODY, headers, now_s=now)
    assert authenticate(SECRET, BODY, headers, now_s=now + 300).delivery == delivery
    for skewed in (now + 301, now - 301):
        with pytest.raises(NotAuthentic, match="away"):
            authenticate(SECRET, BODY, headers, now_s=skewed)
    missing = {k: v for k, v in headers.items() if k != webhook.DELIVERY_HEADER}
    with pytest.raises(NotAuthentic, match="missing X-Nanoclaw-Delivery"):
        authenticate(SECRET, BODY, missing, now_s=now)
    with pytest.raises(NotAuthentic, match="unsigned"):
        authenticate(SECRET, BODY, {}, now_s=now)
