"""The credential proxy: an aiohttp app on the Unix socket every agent container reaches.

Per request:
1. The connection was admitted by the guard (``guard``: per-container connection caps, idle
   and head deadlines) and carries its peer's identity (``nanoclaw_common.peer_identity``:
   the container, from the connecting pid's cgroup).
2. The credential the SDK sent (``x-api-key``, or ``Authorization: Bearer``) is a per-run
   token; its sha256 names the session and agent group (``ProxyTokens.find``), and it works
   only from the identity it is bound to (the container ``wake()`` created). Missing,
   malformed, unknown, revoked or used from elsewhere: 401. Valid tokens are cached,
   malformed ones refused without a lookup, and an identity whose tokens keep failing gets
   429s without lookups (``tokens``): the database reader is not there for junk.
3. Only the Messages API is forwarded (``/v1/messages``, ``/v1/messages/count_tokens``,
   ``/v1/models``): a container has no business elsewhere on the account.
4. A ``/v1/messages`` body is checked against the group's server-side capabilities
   (``capabilities``: server tools, the MCP connector, URL sources, beta flags; 400 with what
   is off and how to turn it on), then its worst case (input estimate + ``max_tokens``) is
   reserved against the group's daily budget in one transaction (``TokenLedger.reserve``;
   429 with ``x-should-retry: false`` when it does not fit).
5. Every incoming credential and hop-by-hop header is dropped, the real key is set as
   ``x-api-key``, and the request goes to ``ANTHROPIC_BASE_URL``. The response (SSE included)
   is streamed back chunk by chunk while ``UsageMeter`` reads the token counts; the
   reservation is then settled with the real usage (or released when there was none).
   Response headers that identify the account do not reach the container.

Errors are Anthropic-shaped (``{"type":"error","error":{"type","message"}}``), so the SDK
raises its usual exceptions. Our own refusals that retrying cannot fix carry
``x-should-retry: false``; our plumbing failing (the model API unreachable) carries
``x-should-retry: true``. Nothing here logs a header, a body or a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import aiohttp
import msgspec
from aiohttp import web
from loguru import logger

from nanoclaw_common.clock import now_ms
from nanoclaw_common.diskfull import FullDiskLog
from nanoclaw_common.settings import Settings
from nanoclaw_common.store.async_central import AsyncDoors
from nanoclaw_common.store.metering import (
    DayUse,
    Reservation,
    effective_budget,
    utc_day,
)
from nanoclaw_common.store.proxy_policy import ServerCapabilities
from nanoclaw_common.store.rows import ProxyToken
from nanoclaw_common.untrusted import shown
from nanoclaw_proxy import capabilities, metering, tokens
from nanoclaw_proxy.central import ProxyCentral
from nanoclaw_proxy.guard import ConnectionGuard, RateLimitedLog
from nanoclaw_proxy.wire import (
    FINAL,
    TRANSIENT,
    downstream_headers,
    error_response,
    request_token,
    token_hash,
    upstream_headers,
)

log = logger.bind(component="proxy")

ALLOWED = (
    ("POST", "/v1/messages"),
    ("POST", "/v1/messages/count_tokens"),
    ("GET", "/v1/models"),
)
HEALTH_PATH = "/nanoclaw/health"
MAX_REQUEST_BYTES = 32 * 1024 * 1024
# Request bodies held in memory at once (each may be MAX_REQUEST_BYTES): per container, and
# in all. Past them a call gets a 429 with retry-after before its body is read.
PEER_BODY_BYTES: Final = 3 * MAX_REQUEST_BYTES
TOTAL_BODY_BYTES: Final = 16 * MAX_REQUEST_BYTES
RETRY_SOON: Final = {"retry-after": "5"}
BODY_TIMEOUT_S: Final = 30.0  # a body that trickles in holds a connection: cut it
BIG_BODY_BYTES: Final = 1024 * 1024  # parsed off the event loop
STATE: web.AppKey[ProxyState] = web.AppKey("state")


class Policy(msgspec.Struct, frozen=True):
    """What a group's calls are checked against."""

    name: str
    folder: str
    caps: ServerCapabilities
    budget: int  # tokens a day; 0 or less: unlimited


class Admission:
    """What a ``/v1/messages`` call was admitted with: the body to forward and its
    reservation (None for a group without a budget)."""

    def __init__(self, body: bytes, reservation: Reservation | None) -> None:
        self.body = body
        self.reservation = reservation


class ProxyState:
    """The proxy's resources. ``central.db`` is reached through ``AsyncDoors`` over
    ``ProxyCentral``, its parts alone (internals.md, "Central DB from async code"): token
    lookups and policies on its reader, reservations and settlements on its writer, so the
    event loop never waits for SQLite, and a lookup never waits behind a reservation that
    waits for another process's lock. One reader: the token cache compares ``data_version``
    values, which only mean something on one connection."""

    def __init__(self, settings: Settings, central_path: Path, guard: ConnectionGuard) -> None:
        self.settings = settings
        self.central_path = central_path
        self.guard = guard
        self.central = AsyncDoors(central_path, ProxyCentral.connect, readers=1)
        self.http: aiohttp.ClientSession | None = None
        self.now_ms: Callable[[], int] = now_ms
        self.monotonic: Callable[[], float] = time.monotonic
        self.cache = tokens.TokenCache()
        self.limiter = tokens.FailureLimiter()
        self.logs = RateLimitedLog()
        self.disk = FullDiskLog(log=log)  # central.db refusing the metering: one condition
        # lookups, cache_hits, malformed, rate_limited, revoked_in_cache, wrong_peer,
        # refused_capability, refused_budget (logged at close).
        self.stats: Counter[str] = Counter()
        self.in_flight = 0
        self.body_bytes: Counter[str] = Counter()  # request bodies held, per peer identity
        self.draining = False
        self.idle = asyncio.Event()
        self.idle.set()
        self._watch: asyncio.Task[None] | None = None

    def hold_body(self, identity: str, size: int) -> bool:
        """Count ``size`` bytes of request body against ``identity``'s share; False (and
        nothing counted) when it does not fit."""
        total = sum(self.body_bytes.values())
        if self.body_bytes[identity] + size > PEER_BODY_BYTES or total + size > TOTAL_BODY_BYTES:
            self.stats["body_bytes_refused"] += 1
            return False
        self.body_bytes[identity] += size
        return True

    def release_body(self, identity: str, size: int) -> None:
        self.body_bytes[identity] -= size
        if self.body_bytes[identity] <= 0:
            del self.body_bytes[identity]

    async def start(self) -> None:
        # Reservations of proxies that died mid-call: this one holds the proxy lock, so no
        # other proxy is serving.
        gone = await self.central.write(forget_dead_owners, self.now_ms())
        if gone:
            log.info("dropped {} reservation(s) left by an earlier proxy", gone)
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
        await asyncio.to_thread(self.central.close)
        log.info(
            "token checks: {}; connections: {}",
            dict(sorted(self.stats.items())) or "none",
            dict(sorted(self.guard.stats.items())) or "no refusals",
        )

    # -- tokens ---------------------------------------------------------------------------

    async def authenticate(self, token: str, identity: str) -> ProxyToken | int | None:
        """The token's row; None when unknown, revoked or bound to another identity; or,
        when ``identity`` has used up its failed lookups, the seconds it must wait (no
        lookup made)."""
        digest = token_hash(token)
        now = self.monotonic()
        found = self.cache.get(digest, now)
        if found is not None:
            self.stats["cache_hits"] += 1
        else:
            wait_s = self.limiter.retry_after_s(identity, now)
            if wait_s > 0:
                self.stats["rate_limited"] += 1
                return max(1, math.ceil(wait_s))
            self.stats["lookups"] += 1
            found, version = await self.central.read(lookup, digest)
            if found is not None:
                self.cache.put(digest, found, now=self.monotonic(), version=version)
        if found is not None and found.bound_to == identity:
            return found
        # Unknown, or a token used from a container it was not issued to: both cost the
        # caller a failed lookup, so a thief cannot try tokens quickly either.
        self.limiter.failed(identity, self.monotonic())
        if found is not None:
            self.stats["wrong_peer"] += 1
            self.logs.warning(
                f"peer:{identity}",
                "refused a token used from {} (issued to {})",
                identity,
                found.bound_to or "nothing: issued before tokens were bound",
                session=found.session_id,
            )
        return None

    async def watch_tokens(self) -> None:
        """Re-check cached tokens whenever central.db changed, so a revoked token stops
        working within ``REVALIDATE_S`` (its entry would otherwise live ``CACHE_TTL_S``)."""
        while True:
            await asyncio.sleep(tokens.REVALIDATE_S)
            self.cache.prune(self.monotonic())
            if not len(self.cache):
                continue
            try:
                version, found = await self.central.read(recheck, self.cache.versions())
            except Exception:
                log.exception("re-checking cached tokens failed")
                continue
            gone = self.cache.confirm(found, version)
            if gone:
                self.stats["revoked_in_cache"] += gone
                log.info("{} cached token(s) revoked or replaced", gone)


# -- central.db: plain functions of a store, run by the doors --------------------------------


def forget_dead_owners(central: ProxyCentral, now: int) -> int:
    return central.ledger.forget_owners_except({os.getpid()}, now=now)


def lookup(central: ProxyCentral, digest: str) -> tuple[ProxyToken | None, int]:
    """The token's row, and central.db's data version read just before it (a change after
    that version makes the cache re-check the token)."""
    version = central.db.data_version()
    return central.tokens.find(digest), version


def recheck(
    central: ProxyCentral, cached: dict[str, int]
) -> tuple[int, dict[str, ProxyToken | None]]:
    """(central.db's data version, the current row of each cached token (``cached``: hash ->
    the version it was confirmed at) confirmed at another version). Nothing is looked up
    when nothing changed."""
    version = central.db.data_version()
    found = central.tokens
    return version, {
        digest: found.find(digest) for digest, confirmed in cached.items() if confirmed != version
    }


def policy_of(central: ProxyCentral, group_id: str, default_budget: int) -> Policy:
    group = central.groups.get_agent_group(group_id)
    config = central.groups.get_container_config(group_id)
    return Policy(
        name=group.name if group else group_id,
        folder=group.folder if group else group_id,
        caps=central.policies.get(group_id),
        budget=effective_budget(config.token_budget_daily if config else None, default_budget),
    )


def reserve_tokens(
    central: ProxyCentral, group_id: str, day: str, needed: int, *, budget: int, now: int
) -> Reservation | DayUse:
    return central.ledger.reserve(
        group_id, day, needed, budget=budget, owner_pid=os.getpid(), now=now
    )


def settle_usage(
    central: ProxyCentral,
    reservation: Reservation | None,
    group_id: str,
    day: str,
    usage: metering.Usage | None,
) -> None:
    ledger = central.ledger
    if reservation is None:
        if usage is not None:
            ledger.add_usage(group_id, day, usage.total_input, usage.output_tokens)
    elif usage is None:
        ledger.release(reservation)
    else:
        ledger.settle(reservation, usage.total_input, usage.output_tokens)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def forward(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    started = time.monotonic()
    identity = state.guard.identity_of(request.transport) or "unknown"
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
    found = await state.authenticate(token, identity)
    if isinstance(found, int):
        return error_response(
            429,
            "rate_limit_error",
            "NanoClaw proxy: too many requests with unknown session tokens from this container; "
            f"retry in {found} s.",
            headers={"retry-after": str(found)},
        )
    if found is None:
        state.logs.warning(
            f"unknown:{identity}",
            "refused a request with an unknown token: {} {}",
            request.method,
            shown(request.path, 200),
        )
        return error_response(
            401,
            "authentication_error",
            "NanoClaw proxy: unknown or revoked session token, or one issued to another "
            "container. The agent's container is restarted with a fresh one on its next wake.",
        )
    ids = {"session": found.session_id, "group": found.agent_group_id, "run": found.run_id}
    if (request.method, request.path) not in ALLOWED:
        return error_response(
            404,
            "not_found_error",
            f"NanoClaw proxy: {request.method} {shown(request.path, 200)} is not forwarded.",
        )
    size = min(request.content_length or MAX_REQUEST_BYTES, MAX_REQUEST_BYTES)
    if not state.hold_body(identity, size):
        return error_response(
            429,
            "rate_limit_error",
            "NanoClaw proxy: too many large requests in flight from this container.",
            {"retry-after": "1"},
        )
    try:
        return await _read_and_forward(state, request, found, ids, started)
    except Exception as exc:
        # The budget's reservation could not be written: nothing was sent upstream. The
        # SDK retries a 503, and the runner after it.
        if not state.disk.refused("the metering of model calls", exc):
            raise
        return error_response(
            503, "api_error", "NanoClaw proxy: the host's disk is full; retry later.", RETRY_SOON
        )
    finally:
        state.release_body(identity, size)


async def _read_and_forward(
    state: ProxyState,
    request: web.Request,
    found: ProxyToken,
    ids: dict[str, str],
    started: float,
) -> web.StreamResponse:
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            body = await request.read()
    except TimeoutError:
        return error_response(
            408, "invalid_request_error", "NanoClaw proxy: the request body came too slowly."
        )
    metered = request.path == "/v1/messages"
    now = state.now_ms()
    reservation: Reservation | None = None
    if metered:
        admitted = await _admit(state, found.agent_group_id, body, request, now)
        if isinstance(admitted, web.Response):
            log.warning("refused {}: {}", request.path, admitted.status, **ids)
            return admitted
        body, reservation = admitted.body, admitted.reservation
    settled = False
    day = utc_day(now)

    async def settle(usage: metering.Usage | None) -> None:
        nonlocal settled
        if settled or not metered:
            return
        settled = True
        try:
            await state.central.write(settle_usage, reservation, found.agent_group_id, day, usage)
        except Exception as exc:
            # The answer is the agent's whatever the ledger says: on a full disk its usage
            # goes unrecorded (its reservation expires with its time to live).
            if not state.disk.refused("the metering of model calls", exc):
                raise
            return
        state.disk.written("the metering of model calls")

    try:
        return await _relay(state, request, body=body, ids=ids, settle=settle, started=started)
    finally:
        if not settled:  # never forwarded, or the relay failed before it settled
            await asyncio.shield(settle(None))


async def _admit(
    state: ProxyState, group_id: str, body: bytes, request: web.Request, now: int
) -> Admission | web.Response:
    """Check a ``/v1/messages`` body against the group's capabilities and reserve its worst
    case against the group's budget: the admission, or the refusal to send."""
    policy = await state.central.read(policy_of, group_id, state.settings.token_budget_daily)
    beta = request.headers.get("anthropic-beta")
    if len(body) > BIG_BODY_BYTES:
        # Parsing megabytes of JSON on the loop would hold every session's calls up.
        checked = await asyncio.to_thread(
            capabilities.check_request, body, beta, policy.caps, policy.folder
        )
    else:
        checked = capabilities.check_request(body, beta, policy.caps, policy.folder)
    if isinstance(checked, capabilities.Refused):
        state.stats["refused_capability"] += 1
        return error_response(400, "invalid_request_error", checked.message, FINAL)
    if policy.budget <= 0:
        return Admission(checked.body, None)
    needed = metering.estimate_input_tokens(len(checked.body)) + checked.max_tokens
    day = utc_day(now)
    held = await state.central.write(
        reserve_tokens, group_id, day, needed, budget=policy.budget, now=now
    )
    if isinstance(held, DayUse):
        state.stats["refused_budget"] += 1
        message = metering.budget_message(
            policy.name,
            policy.folder,
            used_tokens=held.used,
            reserved_tokens=held.reserved,
            needed=needed,
            budget=policy.budget,
            now_ms=now,
        )
        headers = {**FINAL, "retry-after": str(metering.seconds_to_next_utc_day(now))}
        return error_response(429, "rate_limit_error", message, headers)
    return Admission(checked.body, held)


async def _relay(
    state: ProxyState,
    request: web.Request,
    *,
    body: bytes,
    ids: dict[str, str],
    settle: Callable[[metering.Usage | None], Awaitable[None]],
    started: float,
) -> web.StreamResponse:
    url = state.settings.anthropic_base_url.rstrip("/") + request.path_qs
    headers = upstream_headers(request.headers, state.settings.anthropic_api_key)
    assert state.http is not None
    try:
        upstream = await state.http.request(request.method, url, data=body, headers=headers)
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("model API unreachable: {}", type(exc).__name__, **ids)
        await settle(None)
        return error_response(
            502,
            "api_error",
            f"NanoClaw proxy could not reach the model API ({type(exc).__name__}).",
            TRANSIENT,
        )
    meter = metering.UsageMeter(upstream.headers.get("content-type", ""))
    response = web.StreamResponse(
        status=upstream.status, headers=downstream_headers(upstream.headers)
    )
    if state.draining:
        response.force_close()  # the client reconnects to the next proxy for its next call
    complete = False
    usage: metering.Usage | None = None
    try:
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            meter.feed(chunk)
            await response.write(chunk)
        # Settled before the body ends: a client that read this response to the end and
        # sends the next request at once is checked against a day that includes it.
        usage = meter.finish()
        await settle(usage)
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
            usage = meter.finish()
            await asyncio.shield(settle(usage))
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


def make_app(settings: Settings, central_path: Path, guard: ConnectionGuard) -> web.Application:
    state = ProxyState(settings, central_path, guard)

    @web.middleware
    async def track(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """In-flight requests (a stopping proxy waits for them) and the guard's deadlines:
        none while a request is being handled, the idle one again after it."""
        guarded = guard.protocol_of(request.transport)
        if guarded is not None:
            guarded.request_started()
        state.in_flight += 1
        state.idle.clear()
        try:
            response = await handler(request)
            if state.draining and not response.prepared:
                response.force_close()
            return response
        finally:
            state.in_flight -= 1
            if not state.in_flight:
                state.idle.set()
            if guarded is not None:
                guarded.request_done()

    app = web.Application(client_max_size=MAX_REQUEST_BYTES, middlewares=[track])
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
