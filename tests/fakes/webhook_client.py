"""A webhook sender, as a CI system or a script would be: signs with our scheme
(``X-Nanoclaw-*``) or GitHub's, and POSTs with the standard library's HTTP client."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from nanoclaw_common.channels import webhook


def nanoclaw_headers(
    secret: str, body: bytes, *, event: str, delivery: str, timestamp: int | None = None
) -> dict[str, str]:
    """Our scheme: timestamp, event and delivery id signed together with the body."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "Content-Type": "application/json",
        webhook.TIMESTAMP_HEADER: stamp,
        webhook.EVENT_HEADER: event,
        webhook.DELIVERY_HEADER: delivery,
        webhook.SIGNATURE: webhook.sign(
            secret, body, timestamp=stamp, event=event, delivery=delivery
        ),
    }


def github_headers(secret: str, body: bytes, *, event: str, delivery: str | None) -> dict[str, str]:
    """GitHub's: only the body is signed."""
    headers = {
        "Content-Type": "application/json",
        webhook.GITHUB_EVENT: event,
        webhook.GITHUB_SIGNATURE: webhook.sign_body(secret, body),
    }
    if delivery is not None:
        headers[webhook.GITHUB_DELIVERY] = delivery
    return headers


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """The status and body of the answer; a dropped connection raises ``OSError``."""
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def post_answer(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    """The status and the headers of the answer."""
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code, dict(exc.headers)
