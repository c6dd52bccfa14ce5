"""Webhooks: signed POSTs to the aiohttp endpoint become ``webhook`` rows, once each."""

from __future__ import annotations

import asyncio
import json
import time

from nanoclaw_common.channels.base import INVALID_INPUT
from nanoclaw_common.channels.webhook import WebhookAdapter
from nanoclaw_common.messages import AskQuestion, WebhookContent, decode_inbound_content
from nanoclaw_router.app import Router
from tests.fakes.recording import RecordingAdapter
from tests.fakes.webhook_client import github_headers, nanoclaw_headers, post
from tests.integration.channels.conftest import Live
from tests.integration.router.conftest import free_port
from tests.waiting import wait_until_async

SECRET = "hook-secret-0123456789"


def contents(live: Live) -> list[WebhookContent]:
    found = []
    for row in live.rows():
        content = decode_inbound_content(row.content)
        assert isinstance(content, WebhookContent)
        found.append(content)
    return found


def test_our_scheme_signs_everything_that_makes_the_row(live: Live) -> None:
    group = live.group()
    live.wire("webhook", "ci", group, is_group=False)
    adapter = WebhookAdapter({"ci": SECRET}, "127.0.0.1", free_port())

    async def scenario(router: Router) -> None:
        await wait_until_async(
            lambda: adapter.bound_port, timeout_s=10.0, what="the webhook server to listen"
        )
        url = f"http://127.0.0.1:{adapter.bound_port}/webhook/ci"
        body = json.dumps({"build": 41, "status": "failed"}).encode()
        signed = nanoclaw_headers(SECRET, body, event="build.failed", delivery="d-1")
        now = int(time.time())

        def resign(**changes: str) -> dict[str, str]:
            # The captured request with one header changed, the signature kept.
            return {**signed, **changes}

        results = await asyncio.to_thread(
            lambda: [
                post(url, body, signed),
                post(url, body, signed),  # the sender's retry: the same row
                # A replay under a new delivery id, or as another event: not signed so.
                post(url, body, resign(**{"X-Nanoclaw-Delivery": "d-2"})),
                post(url, body, resign(**{"X-Nanoclaw-Event": "build.passed"})),
                post(url, body + b" ", signed),
                # Correctly signed, but too old or too far ahead (the exact bounds are
                # tested with a fixed clock in tests/unit/channels/test_signatures.py).
                post(
                    url,
                    body,
                    nanoclaw_headers(SECRET, body, event="b", delivery="d-3", timestamp=now - 600),
                ),
                post(
                    url,
                    body,
                    nanoclaw_headers(SECRET, body, event="b", delivery="d-4", timestamp=now + 600),
                ),
                # Our scheme without a delivery id is not authentic.
                post(url, body, {k: v for k, v in signed.items() if k != "X-Nanoclaw-Delivery"}),
                # The same body twice on purpose, as two deliveries: two rows.
                post(
                    url, body, nanoclaw_headers(SECRET, body, event="build.failed", delivery="d-5")
                ),
                post(url.replace("/ci", "/unknown"), body, signed),
            ]
        )
        assert [status for status, _ in results] == [
            200,
            200,
            401,
            401,
            401,
            401,
            401,
            401,
            200,
            404,
        ]
        assert json.loads(results[0][1]) == {"ok": True, "id": "wh-ci-d-1"}
        await wait_until_async(lambda: len(live.rows()) == 2, timeout_s=10.0, what="2 inbound rows")

    live.run({"webhook": adapter}, scenario)
    assert sorted(r.id.split(":")[0] for r in live.rows()) == ["wh-ci-d-1", "wh-ci-d-5"]
    assert [(c.source, c.event) for c in contents(live)] == [("ci", "build.failed")] * 2
    assert contents(live)[0].payload == {"build": 41, "status": "failed"}
    # Every refusal is counted; unknown sources are not (there is nothing to count them on).
    drops = {(d.platform_id, d.reason): d.message_count for d in live.central.list_drops()}
    assert drops == {("ci", "invalid_input"): 6}


def test_github_signatures_are_accepted_with_their_delivery_id(live: Live) -> None:
    group = live.group()
    live.wire("webhook", "github", group, is_group=False)
    adapter = WebhookAdapter({"github": SECRET}, "127.0.0.1", free_port())

    async def scenario(router: Router) -> None:
        await wait_until_async(
            lambda: adapter.bound_port, timeout_s=10.0, what="the webhook server to listen"
        )
        url = f"http://127.0.0.1:{adapter.bound_port}/webhook/github"
        body = json.dumps({"ref": "refs/heads/main", "commits": 3}).encode()
        headers = github_headers(SECRET, body, event="push", delivery="72d3162e-cc78")
        results = await asyncio.to_thread(
            lambda: [
                post(url, body, headers),
                post(url, body, headers),  # GitHub's redelivery: deduplicated
                post(
                    url, body, github_headers("wrong-secret-99", body, event="push", delivery="x")
                ),
                post(url, body, {k: v for k, v in headers.items() if "Signature" not in k}),
                # Signed, but without a delivery id there is no row id: refused, counted.
                post(url, body, github_headers(SECRET, body, event="push", delivery=None)),
                post(
                    url,
                    b"not json",
                    github_headers(SECRET, b"not json", event="push", delivery="y"),
                ),
            ]
        )
        assert [status for status, _ in results] == [200, 200, 401, 401, 400, 400]
        await wait_until_async(lambda: len(live.rows()) == 1, timeout_s=10.0, what="1 inbound row")

    live.run({"webhook": adapter}, scenario)
    [row] = live.rows()
    assert row.kind == "webhook" and row.id.startswith("wh-github-72d3162e-cc78:")
    [content] = contents(live)
    assert (content.source, content.event) == ("github", "push")
    assert content.payload == {"ref": "refs/heads/main", "commits": 3}
    drops = {(d.platform_id, d.reason): d.message_count for d in live.central.list_drops()}
    assert drops == {("github", "invalid_input"): 4}


def test_a_commit_failure_is_a_503_not_an_ack() -> None:
    class BrokenSink:
        def __init__(self) -> None:
            self.invalid = 0

        async def on_event(self, event: object) -> None:
            raise OSError("database is locked")

        async def on_action(self, action: object) -> None:
            raise OSError("database is locked")

        async def on_invalid(
            self, channel_type: str, platform_id: str, reason: str, *, code: str = INVALID_INPUT
        ) -> None:
            raise OSError("database is locked")

    async def main() -> None:
        adapter = WebhookAdapter({"ci": SECRET}, "127.0.0.1", free_port())
        serving = asyncio.create_task(adapter.run_inbound(BrokenSink()))
        try:
            await wait_until_async(
                lambda: adapter.bound_port, timeout_s=10.0, what="the webhook server to listen"
            )
            url = f"http://127.0.0.1:{adapter.bound_port}/webhook/ci"
            body = b'{"a": 1}'
            ok = nanoclaw_headers(SECRET, body, event="e", delivery="d-1")
            bad_json = nanoclaw_headers(SECRET, b"{", event="e", delivery="d-2")
            results = await asyncio.to_thread(
                lambda: [
                    post(url, body, ok),
                    # Poison whose drop cannot be recorded: not acknowledged either.
                    post(url, b"{", bad_json),
                    # Unauthenticated: refused whether or not the refusal is recorded.
                    post(url, body, {**ok, "X-Nanoclaw-Signature": "sha256=00"}),
                ]
            )
            assert [status for status, _ in results] == [503, 503, 401]
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)

    asyncio.run(main())


def test_an_unwired_source_asks_the_owner(live: Live) -> None:
    live.group()
    live.central.upsert_user("chat:owner", "chat")
    live.central.grant_role("chat:owner", "owner")
    owner_dm = RecordingAdapter("chat", message_ids="m{n}", dm_prefix="")
    adapter = WebhookAdapter({"ci": SECRET}, "127.0.0.1", free_port())

    async def scenario(router: Router) -> None:
        await wait_until_async(
            lambda: adapter.bound_port, timeout_s=10.0, what="the webhook server to listen"
        )
        body = b'{"status": "failed"}'
        status, _ = await asyncio.to_thread(
            post,
            f"http://127.0.0.1:{adapter.bound_port}/webhook/ci",
            body,
            nanoclaw_headers(SECRET, body, event="build", delivery="first"),
        )
        assert status == 200
        await wait_until_async(
            lambda: owner_dm.of_kind("question"), timeout_s=10.0, what="the registration card"
        )

    live.run({"webhook": adapter, "chat": owner_dm}, scenario)
    card = owner_dm.of_kind("question")[0].payload
    assert isinstance(card, AskQuestion) and "webhook" in card.question
