"""Webhooks: HMAC-signed POSTs to the aiohttp endpoint become ``webhook`` rows."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

from nanoclaw_common.channels.webhook import WebhookAdapter, sign
from nanoclaw_common.messages import AskQuestion, WebhookContent, decode_inbound_content
from nanoclaw_router.app import Router
from tests.fakes.recording import RecordingAdapter
from tests.integration.channels.conftest import Live, eventually
from tests.integration.router.conftest import free_port

SECRET = "hook-secret-0123456789"


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_signed_posts_become_webhook_rows_once(live: Live) -> None:
    group = live.group()
    live.wire("webhook", "github", group, is_group=False)
    adapter = WebhookAdapter({"github": SECRET}, "127.0.0.1", free_port())

    async def scenario(router: Router) -> None:
        await eventually(lambda: adapter.bound_port)
        url = f"http://127.0.0.1:{adapter.bound_port}/webhook/github"
        body = json.dumps({"ref": "refs/heads/main", "commits": 3}).encode()
        headers = {
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": "d-123",
            "X-Hub-Signature-256": sign(SECRET, body),
        }
        results = await asyncio.to_thread(
            lambda: [
                post(url, body, headers),
                post(url, body, headers),  # the sender's retry: deduplicated
                post(url, body, {**headers, "X-Hub-Signature-256": sign("wrong", body)}),
                post(url, body, {k: v for k, v in headers.items() if "Signature" not in k}),
                post(url.replace("github", "gitlab"), body, headers),
                post(
                    url, b"not json", {**headers, "X-Hub-Signature-256": sign(SECRET, b"not json")}
                ),
            ]
        )
        assert [status for status, _ in results] == [200, 200, 401, 401, 404, 400]
        assert json.loads(results[0][1]) == {"ok": True, "id": "wh-github-d-123"}
        await eventually(lambda: len(live.rows()) == 1)

    live.run({"webhook": adapter}, scenario)
    [row] = live.rows()
    assert row.kind == "webhook" and row.id.startswith("wh-github-d-123:")
    content = decode_inbound_content(row.content)
    assert isinstance(content, WebhookContent)
    assert (content.source, content.event) == ("github", "push")
    assert content.payload == {"ref": "refs/heads/main", "commits": 3}
    [drop] = live.central.list_drops()
    assert drop.reason == "invalid_input"  # only the signed non-JSON body left a trace


def test_an_unwired_source_asks_the_owner(live: Live) -> None:
    live.group()
    live.central.upsert_user("chat:owner", "chat")
    live.central.grant_role("chat:owner", "owner")
    owner_dm = RecordingAdapter()
    adapter = WebhookAdapter({"ci": SECRET}, "127.0.0.1", free_port())

    async def scenario(router: Router) -> None:
        await eventually(lambda: adapter.bound_port)
        body = b'{"status": "failed"}'
        status, _ = await asyncio.to_thread(
            post,
            f"http://127.0.0.1:{adapter.bound_port}/webhook/ci",
            body,
            {"X-Nanoclaw-Signature": sign(SECRET, body), "X-Nanoclaw-Event": "build"},
        )
        assert status == 200
        await eventually(lambda: owner_dm.of_kind("question"), what="the registration card")

    live.run({"webhook": adapter, "chat": owner_dm}, scenario)
    card = owner_dm.of_kind("question")[0].payload
    assert isinstance(card, AskQuestion) and "webhook" in card.question
