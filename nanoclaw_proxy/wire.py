"""The HTTP details of the proxy's hop: Anthropic-shaped errors, the credential the SDK sent,
and which headers cross in each direction."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from aiohttp import web

# Hop-by-hop headers (RFC 9110 §7.6.1) and what we set ourselves.
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
_CREDENTIALS = frozenset({"authorization", "x-api-key", "cookie"})
_RESPONSE_DROP = _HOP | {"content-encoding", "set-cookie"}
# Response headers naming the account behind the key: the container has no business knowing
# whose key it is (request ids and rate-limit headers stay: they identify nothing).
_IDENTIFYING = re.compile(r"organi[sz]ation|workspace-id|account-id", re.IGNORECASE)
FINAL = {"x-should-retry": "false"}  # a refusal retrying cannot fix
TRANSIENT = {"x-should-retry": "true"}  # our plumbing failed; try again


def error_response(
    status: int, error_type: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"type": "error", "error": {"type": error_type, "message": message}},
        status=status,
        headers=headers,
    )


def request_token(headers: Any) -> str | None:
    """The credential the container sent (either way the SDK sends it)."""
    key = headers.get("x-api-key")
    if key:
        return str(key).strip()
    auth = str(headers.get("authorization", ""))
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def downstream_headers(upstream: Any) -> dict[str, str]:
    """The upstream response's headers the container gets."""
    return {
        name: value
        for name, value in upstream.items()
        if name.lower() not in _RESPONSE_DROP and not _IDENTIFYING.search(name)
    }


def upstream_headers(incoming: Any, api_key: str) -> dict[str, str]:
    headers = {
        name: value
        for name, value in incoming.items()
        if name.lower() not in _HOP and name.lower() not in _CREDENTIALS
    }
    headers = {k: v for k, v in headers.items() if k.lower() != "accept-encoding"}
    headers["x-api-key"] = api_key
    headers["accept-encoding"] = "identity"  # the meter reads the body as it passes
    return headers
