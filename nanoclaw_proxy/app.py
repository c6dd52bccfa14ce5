"""The credential proxy: an aiohttp app on a Unix socket that every agent container reaches.

Per request:
1. The credential the SDK sent (``x-api-key``, or ``Authorization: Bearer``) is a per-run
   token; its sha256 names the session and agent group (``CentralStore.find_proxy_token``).
   Missing, malformed, unknown or revoked: 401. Valid tokens are cached, malformed ones
   refused without a lookup, and a process whose unknown tokens keep failing gets 429s
   without lookups (``tokens``): the one database thread is not there for junk.
2. Only the Messages API is forwarded (``/v1/messages``, ``/v1/messages/count_tokens``,
   ``/v1/models``): a container has no business elsewhere on the account.
3. A ``/v1/messages`` call is refused (429, ``x-should-retry: false`` so the SDK does not
   retry) when the group's tokens today reached its budget.
4. Every incoming credential and hop-by-hop header is dropped, the real key is set as
   ``x-api-key``, and the request goes to ``ANTHROPIC_BASE_URL``. The response (SSE included)
   is streamed back chunk by chunk while ``UsageMeter`` reads the token counts, which are
   added to the group's day in ``token_usage``. Response headers that identify the account
   (``anthropic-organization-id`` and the like) do not reach the container.

Errors are Anthropic-shaped (``{"type":"error","error":{"type","message"}}``), so the SDK
raises its usual exceptions and the runner relays the message to the user. Nothing here logs
a header, a body or a key: log lines carry the session, the path, the status and the counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import re
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from loguru import logger

from nanoclaw_common.clock import now_ms
from nanoclaw_common.settings import Settings
from nanoclaw_common.store.central import CentralStore
from nanoclaw_common.store.rows import ProxyToken
from nanoclaw_proxy import metering, tokens

log = logger.bind(component="proxy")

T = TypeVar("T")

ALLOWED = (
    ("POST", "/v1/messages"),
    ("POST", "/v1/messages/count_tokens"),
    ("GET", "/v1/models"),
)
HEALTH_PATH = "/nanoclaw/health"
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
MAX_REQUEST_BYTES = 32 * 1024 * 1024
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

STATE: web.AppKey[ProxyState] = web.AppKey("state")


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


def peer_key(request: web.Request) -> Hashable:
    """Who is calling: the peer process of the Unix socket (``SO_PEERCRED``, its pid as this
    process sees it), else the connection itself."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and sock.family == socket.AF_UNIX:
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            pid, _uid, _gid = _PEERCRED.unpack(creds)
            return ("pid", pid)
        except OSError:
            pass
    return ("connection", id(transport))


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


class ProxyState:
    """The proxy's resources. ``central.db`` is used from one worker thread, so the event loop
    never blocks on SQLite (apsw is synchronous) and the connection is never shared."""

    def __init__(self, settings: Settings, central_path: Path) -> None:
        self.settings = settings
        self.central_path = central_path
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="central")
        self.central: CentralStore | None = None
        self.http: aiohttp.ClientSession | None = None
        self.now_ms: Callable[[], int] = now_ms
        self.monotonic: Callable[[], float] = time.monotonic
        self.cache = tokens.TokenCache()
        self.limiter = tokens.FailureLimiter()
        # lookups, cache_hits, malformed, rate_limited, revoked_in_cache (logged at close).
        self.stats: Counter[str] = Counter()
        self._watch: asyncio.Task[None] | None = None

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _open(self) -> None:
        self.central = CentralStore.open(self.central_path)

    def _close(self) -> None:
        if self.central is not None:
            self.central.close()

    async def start(self) -> None:
        await self.db(self._open)
        self.http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=600),
            auto_decompress=True,
        )
        self._watch = asyncio.create_task(self.watch_tokens())

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self.http is not None:
            await self.http.close()
        await self.db(self._close)
        self.executor.shutdown(wait=True)
        log.info("token checks: {}", dict(sorted(self.stats.items())) or "none")

    # -- tokens ---------------------------------------------------------------------------

    async def authenticate(self, token: str, peer: Hashable) -> ProxyToken | int | None:
        """The token's row; None when unknown or revoked; or, when ``peer`` has used up
        its failed lookups, the seconds it must wait (no lookup made)."""
        digest = token_hash(token)
        now = self.monotonic()
        found = self.cache.get(digest, now)
        if found is not None:
            self.stats["cache_hits"] += 1
            return found
        wait_s = self.limiter.retry_after_s(peer, now)
        if wait_s > 0:
            self.stats["rate_limited"] += 1
            return max(1, math.ceil(wait_s))
        self.stats["lookups"] += 1
        found, version = await self.db(self.lookup, digest)
        if found is None:
            self.limiter.failed(peer, self.monotonic())
            return None
        self.cache.put(digest, found, now=self.monotonic(), version=version)
        return found

    async def watch_tokens(self) -> None:
        """Re-check cached tokens whenever central.db changed, so a revoked token stops
        working within ``REVALIDATE_S`` (its entry would otherwise live ``CACHE_TTL_S``)."""
        while True:
            await asyncio.sleep(tokens.REVALIDATE_S)
            self.cache.prune(self.monotonic())
            if not len(self.cache):
                continue
            try:
                version, found = await self.db(self.recheck, self.cache.versions())
            except Exception:
                log.exception("re-checking cached tokens failed")
                continue
            gone = self.cache.confirm(found, version)
            if gone:
                self.stats["revoked_in_cache"] += gone
                log.info("{} cached token(s) revoked or replaced", gone)

    # -- central.db, in the worker thread -------------------------------------------------

    def lookup(self, digest: str) -> tuple[ProxyToken | None, int]:
        """The token's row, and central.db's data version read just before it (a change
        after that version makes the cache re-check the token)."""
        assert self.central is not None
        version = self.central.db.data_version()
        return self.central.find_proxy_token(digest), version

    def recheck(self, cached: dict[str, int]) -> tuple[int, dict[str, ProxyToken | None]]:
        """(central.db's data version, the current row of each cached token (``cached``:
        hash -> the version it was confirmed at) confirmed at another version). Nothing is
        looked up when nothing changed."""
        assert self.central is not None
        version = self.central.db.data_version()
        return version, {
            digest: self.central.find_proxy_token(digest)
            for digest, confirmed in cached.items()
            if confirmed != version
        }

    def budget_refusal(self, group_id: str, now: int) -> str | None:
        """The refusal message when the group is over its budget today, else None."""
        assert self.central is not None
        config = self.central.get_container_config(group_id)
        budget = metering.effective_budget(
            config.token_budget_daily if config else None, self.settings.token_budget_daily
        )
        if budget <= 0:
            return None
        usage = self.central.get_token_usage(group_id, metering.utc_day(now))
        used = usage.input_tokens + usage.output_tokens if usage else 0
        if not metering.over_budget(used, budget):
            return None
        group = self.central.get_agent_group(group_id)
        return metering.budget_message(group.name if group else group_id, used, budget)

    def record(self, group_id: str, day: str, usage: metering.Usage) -> None:
        assert self.central is not None
        self.central.add_token_usage(group_id, day, usage.total_input, usage.output_tokens)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def forward(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    started = time.monotonic()
    token = request_token(request.headers)
    if token is None:
        return error_response(
            401, "authentication_error", "NanoClaw proxy: the request carries no session token."
        )
    if not tokens.well_formed(token):
        state.stats["malformed"] += 1
        return error_response(
            401, "authentication_error", "NanoClaw proxy: malformed session token."
        )
    found = await state.authenticate(token, peer_key(request))
    if isinstance(found, int):
        return error_response(
            429,
            "rate_limit_error",
            "NanoClaw proxy: too many requests with unknown session tokens from this process; "
            f"retry in {found} s.",
            headers={"retry-after": str(found)},
        )
    if found is None:
        log.warning("refused a request with an unknown token: {} {}", request.method, request.path)
        return error_response(
            401,
            "authentication_error",
            "NanoClaw proxy: unknown or revoked session token. The agent's container is "
            "restarted with a fresh one on its next wake.",
        )
    ids = {"session": found.session_id, "group": found.agent_group_id, "run": found.run_id}
    if (request.method, request.path) not in ALLOWED:
        return error_response(
            404,
            "not_found_error",
            f"NanoClaw proxy: {request.method} {request.path} is not forwarded.",
        )
    metered = request.path == "/v1/messages"
    now = state.now_ms()
    if metered:
        refusal = await state.db(state.budget_refusal, found.agent_group_id, now)
        if refusal is not None:
            log.warning("over budget: refused {}", request.path, **ids)
            return error_response(
                429,
                "rate_limit_error",
                refusal,
                headers={
                    "x-should-retry": "false",
                    "retry-after": str(metering.seconds_to_next_utc_day(now)),
                },
            )
    body = await request.read()
    url = state.settings.anthropic_base_url.rstrip("/") + request.path_qs
    headers = upstream_headers(request.headers, state.settings.anthropic_api_key)
    assert state.http is not None
    try:
        upstream = await state.http.request(request.method, url, data=body, headers=headers)
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("model API unreachable: {}", type(exc).__name__, **ids)
        return error_response(
            502,
            "api_error",
            f"NanoClaw proxy could not reach the model API ({type(exc).__name__}).",
        )
    meter = metering.UsageMeter(upstream.headers.get("content-type", ""))
    response = web.StreamResponse(
        status=upstream.status, headers=downstream_headers(upstream.headers)
    )
    complete = False
    recorded = False

    async def record() -> metering.Usage | None:
        nonlocal recorded
        recorded = True
        found_usage = meter.finish() if metered else None
        if found_usage is not None:
            await state.db(state.record, found.agent_group_id, metering.utc_day(now), found_usage)
        return found_usage

    usage = None
    try:
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            meter.feed(chunk)
            await response.write(chunk)
        # Recorded before the body ends: a client that read this response to the end and
        # sends the next request at once is checked against a budget that includes it.
        usage = await record()
        await response.write_eof()
        complete = True
    except (ConnectionResetError, aiohttp.ClientError) as exc:
        # The container went away, or the API cut the stream: what was used still counts.
        log.warning("stream ended early: {}", type(exc).__name__, **ids)
    finally:
        # A half-read upstream connection must not go back to the pool.
        if complete:
            upstream.release()
        else:
            upstream.close()
        if not recorded:  # the stream broke off: what was used still counts
            usage = await record()
        log.info(
            "{} {} -> {} in={} out={} {}ms",
            request.method,
            request.path,
            upstream.status,
            usage.total_input if usage else 0,
            usage.output_tokens if usage else 0,
            int((time.monotonic() - started) * 1000),
            **ids,
        )
    return response


def make_app(settings: Settings, central_path: Path) -> web.Application:
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    state = ProxyState(settings, central_path)
    app[STATE] = state

    async def on_startup(_app: web.Application) -> None:
        await state.start()

    async def on_cleanup(_app: web.Application) -> None:
        await state.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_get(HEALTH_PATH, health)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def serve(app: web.Application, socket_path: Path, stopped: asyncio.Event) -> None:
    """Listen on ``socket_path`` until ``stopped`` is set, then finish in-flight requests."""
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    socket_path.unlink(missing_ok=True)  # a stale socket from a killed proxy
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.UnixSite(runner, str(socket_path))
    await site.start()
    # Containers run as another uid; the token, not the file mode, is the access control.
    socket_path.chmod(0o666)
    log.info("listening on {}", socket_path)
    try:
        await stopped.wait()
    finally:
        await runner.cleanup()
        socket_path.unlink(missing_ok=True)
