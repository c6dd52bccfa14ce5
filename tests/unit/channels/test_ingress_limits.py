"""Bounded decoding of untrusted JSON (``jsonlimits``, and every decoder on an inbound path),
the token bucket, and the webhook handler's rate limit with time as a parameter."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from nanoclaw_common import messages
from nanoclaw_common.channels import cli_protocol, slack_payloads
from nanoclaw_common.channels.base import INVALID_INPUT, RATE_LIMITED
from nanoclaw_common.channels.common import parse_webhook_text
from nanoclaw_common.channels.webhook import WebhookAdapter
from nanoclaw_common.errors import DecodeError
from nanoclaw_common.jsonlimits import MAX_DEPTH, decode_json, nesting_depth, too_deep
from nanoclaw_common.messages import ActionEvent, InboundEvent
from nanoclaw_common.ratelimit import RateLimiter, TokenBucket, retry_after_header
from tests.fakes.server_thread import ServerThread
from tests.fakes.webhook_client import nanoclaw_headers, post_answer

DEEP = b"[" * 5_000 + b"]" * 5_000


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    return 0


tricky_text = st.text(alphabet='[]{}"\\ab\n\u00e9', max_size=8)
json_values = st.recursive(
    st.one_of(st.none(), st.integers(), st.booleans(), tricky_text),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(tricky_text, inner, max_size=3)
    ),
    max_leaves=30,
)


@given(json_values)
def test_nesting_depth_is_exact_for_valid_json(value: Any) -> None:
    """Brackets and quotes inside strings (escaped or not) do not count."""
    raw = json.dumps(value, ensure_ascii=False)
    assert nesting_depth(raw) == depth_of(value)
    assert nesting_depth(raw.encode()) == depth_of(value)


def test_nesting_depth_counts_what_a_decoder_would_enter() -> None:
    assert nesting_depth(b"[[[") == 3  # unclosed: a decoder recurses before failing
    assert nesting_depth(b'[[["abc') == 3  # an unterminated string hides nothing after it
    assert nesting_depth(b'"' + b'\\"' * 50_000) == 0  # linear, not a backtracking blow-up
    assert not too_deep(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)
    assert too_deep(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
    assert not too_deep(b"[" + b"[1]," * 5_000 + b"[]]")  # wide is fine


def test_decode_json_refuses_deep_big_and_invalid_input() -> None:
    with pytest.raises(DecodeError, match="nested deeper than 64 levels"):
        decode_json(DEEP, what="body", max_bytes=100_000)
    with pytest.raises(DecodeError, match="over the 10-byte limit"):
        decode_json(b'{"a": "long"}', what="body", max_bytes=10)
    with pytest.raises(DecodeError, match="not valid JSON"):
        decode_json(b"{", what="body", max_bytes=10)
    # Past the pre-check (a limit set too high), msgspec's RecursionError is still ours.
    with pytest.raises(DecodeError, match="nested too deep"):
        decode_json(DEEP, what="body", max_bytes=100_000, max_depth=10**6)
    assert decode_json(b'{"a": [1]}', what="body", max_bytes=100) == {"a": [1]}


@pytest.mark.parametrize(
    "decode",
    [
        # msgspec recurses to skip a field it reads before a tagged union's tag.
        lambda: messages.decode_outbound_content(b'{"text":' + DEEP + b',"type":"text"}'),
        lambda: messages.decode_inbound_content(
            b'{"type":"webhook","source":"a","event":"b","payload":' + DEEP + b"}"
        ),
        lambda: cli_protocol.decode_request(b'{"text":' + DEEP + b',"type":"message"}'),
        lambda: cli_protocol.decode_frame(b'{"text":' + DEEP + b',"type":"text"}'),
        lambda: slack_payloads.decode_envelope(b'{"type":"x","extra":' + DEEP + b"}"),
        lambda: slack_payloads.decode_callback_body(b'{"type":"x","event":' + DEEP + b"}"),
        lambda: slack_payloads.decode_interaction('{"type":"block_actions","x":' + DEEP.decode()),
        lambda: parse_webhook_text('{"event":"e","payload":' + DEEP.decode() + "}"),
    ],
    ids=[
        "outbound-row",
        "inbound-row",
        "cli-request",
        "cli-frame",
        "slack-frame",
        "slack-event",
        "slack-interaction",
        "webhook-text",
    ],
)
def test_no_inbound_decoder_lets_a_recursion_error_out(decode: Any) -> None:
    with pytest.raises(DecodeError):
        decode()


def test_a_token_bucket_takes_a_burst_then_refills_with_time() -> None:
    bucket = TokenBucket(per_minute=60, burst=3)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(1.0)
    assert bucket.take(100.5) == pytest.approx(0.5)
    assert bucket.take(101.0) == 0.0  # one token a second
    assert bucket.take(101.0) > 0
    assert bucket.take(1_000.0) == 0.0  # long idle: full again, never more than the burst
    assert [bucket.take(1_000.0) for _ in range(3)][-1] > 0
    assert bucket.take(999.0) > 0  # a clock that steps back gives nothing away
    assert retry_after_header(0.2) == "1" and retry_after_header(2.5) == "3"


def test_each_source_has_its_own_bucket() -> None:
    limiter = RateLimiter(per_minute=6, burst=1)
    assert limiter.take("ci", 0.0) == 0.0
    assert limiter.take("ci", 0.0) == pytest.approx(10.0)
    assert limiter.take("github", 0.0) == 0.0


class Clock:
    def __init__(self) -> None:
        self.now_s = 1_000.0

    def __call__(self) -> float:
        return self.now_s


class Sink:
    def __init__(self) -> None:
        self.events: list[InboundEvent] = []
        self.refused: list[tuple[str, str]] = []

    async def on_event(self, event: InboundEvent) -> None:
        self.events.append(event)

    async def on_action(self, action: ActionEvent) -> None:
        raise AssertionError("no clicks here")

    async def on_invalid(
        self, channel_type: str, platform_id: str, reason: str, *, code: str = INVALID_INPUT
    ) -> None:
        self.refused.append((code, reason))


class Hooks:
    def __init__(self) -> None:
        self.clock = Clock()
        self.sink = Sink()
        self.adapter = WebhookAdapter(
            {"ci": "s" * 20, "cd": "t" * 20}, "127.0.0.1", 0, rate_per_minute=30, burst=2,
            clock=self.clock,
        )  # fmt: skip
        self.server = ServerThread(self._app).start()

    def _app(self) -> web.Application:
        app = web.Application()

        async def hook(request: web.Request) -> web.StreamResponse:
            return await self.adapter.handle(request, self.sink)

        app.router.add_post("/webhook/{source}", hook)
        return app

    def deliver(self, source: str, delivery: str, body: bytes = b"{}") -> tuple[int, str]:
        secret = "s" * 20 if source == "ci" else "t" * 20
        headers = nanoclaw_headers(secret, body, event="e", delivery=delivery)
        url = f"http://127.0.0.1:{self.server.port}/webhook/{source}"
        status, answer = post_answer(url, body, headers)
        return status, answer.get("Retry-After", "")


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    served = Hooks()
    yield served
    served.server.stop()


def test_signed_deliveries_past_the_rate_are_429_with_retry_after(hooks: Hooks) -> None:
    assert hooks.deliver("ci", "d1")[0] == 200
    assert hooks.deliver("ci", "d2")[0] == 200
    assert hooks.deliver("ci", "d3") == (429, "2")  # 30 a minute: one every 2 s
    assert hooks.deliver("cd", "x1")[0] == 200  # another source is not held up
    hooks.clock.now_s += 2.0
    assert hooks.deliver("ci", "d3")[0] == 200
    assert [e.message_id for e in hooks.sink.events] == [
        "wh-ci-d1",
        "wh-ci-d2",
        "wh-cd-x1",
        "wh-ci-d3",
    ]
    assert hooks.sink.refused == [(RATE_LIMITED, "over the per-source webhook rate limit")]


def test_an_unsigned_flood_does_not_use_up_the_sources_rate(hooks: Hooks) -> None:
    url = f"http://127.0.0.1:{hooks.server.port}/webhook/ci"
    for _ in range(10):
        assert post_answer(url, b"{}", {"Content-Type": "application/json"})[0] == 401
    assert hooks.deliver("ci", "real")[0] == 200
    assert [code for code, _ in hooks.sink.refused] == [INVALID_INPUT] * 10


def test_a_deep_body_is_a_400_and_a_drop_and_still_counts(hooks: Hooks) -> None:
    deep = b"[" * 40_000 + b"]" * 40_000
    assert hooks.deliver("ci", "deep", deep)[0] == 400
    [(code, reason)] = hooks.sink.refused
    assert code == INVALID_INPUT and "nested deeper than 64 levels" in reason
    assert hooks.deliver("ci", "ok", msgspec.json.encode({"a": [[1]]}))[0] == 200
    assert hooks.deliver("ci", "over")[0] == 429  # the deep one used a token too
