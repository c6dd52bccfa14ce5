"""The proxy's token cache and failure limiter, with the clock passed in."""

from __future__ import annotations

import secrets

from nanoclaw_common.store.rows import ProxyToken
from nanoclaw_proxy.tokens import FailureLimiter, TokenCache, well_formed
from nanoclaw_proxy.wire import downstream_headers


def token(session: str, run: str) -> ProxyToken:
    return ProxyToken(
        token_hash=f"h-{session}-{run}",
        session_id=session,
        agent_group_id="ag-1",
        run_id=run,
        created_at_ms=0,
    )


def test_token_shape() -> None:
    assert well_formed(secrets.token_urlsafe(32))
    for junk in ("", "short", "a" * 257, "has space" + "a" * 20, "semi;colon" + "a" * 20):
        assert not well_formed(junk)


def test_cache_entries_expire_and_a_new_run_replaces_the_old() -> None:
    cache = TokenCache(ttl_s=10)
    first = token("s1", "run-1")
    cache.put("h1", first, now=100, version=7)
    cache.put("other", token("s2", "run-1"), now=100, version=7)
    assert cache.get("h1", 109.9) == first
    assert cache.get("h1", 110) is None  # expired, and gone
    cache.put("h1", first, now=200, version=7)
    cache.put("other", token("s2", "run-1"), now=200, version=7)
    second = token("s1", "run-2")
    cache.put("h2", second, now=201, version=7)
    assert cache.get("h1", 201) is None  # the session's older token went
    assert cache.get("h2", 201) == second
    assert cache.get("other", 201) is not None
    cache.prune(209.9)
    assert sorted(cache.versions()) == ["h2", "other"]
    cache.prune(211)
    assert cache.versions() == {} and len(cache) == 0


def test_a_recheck_drops_revoked_and_replaced_entries() -> None:
    cache = TokenCache(ttl_s=10)
    kept, revoked, moved = token("s1", "r1"), token("s2", "r1"), token("s3", "r1")
    cache.put("a", kept, now=0, version=1)
    cache.put("b", revoked, now=0, version=1)
    cache.put("c", moved, now=0, version=1)
    assert cache.versions() == {"a": 1, "b": 1, "c": 1}
    gone = cache.confirm({"a": kept, "b": None, "c": token("s3", "r2")}, version=2)
    assert gone == 2
    assert cache.versions() == {"a": 2}
    assert cache.confirm({"zzz": None}, version=3) == 0  # put meanwhile elsewhere: ignored


def test_failed_lookups_burst_then_trickle_per_caller() -> None:
    limiter = FailureLimiter(burst=3, rate_per_s=0.5)
    for _ in range(3):
        assert limiter.retry_after_s("p1", 0) == 0
        limiter.failed("p1", 0)
    assert limiter.retry_after_s("p1", 0) == 2.0  # one token takes 2 s at 0.5/s
    assert limiter.retry_after_s("p2", 0) == 0  # someone else
    assert limiter.retry_after_s("p1", 1.0) == 1.0
    assert limiter.retry_after_s("p1", 2.0) == 0
    limiter.failed("p1", 2.0)
    assert limiter.retry_after_s("p1", 2.0) == 2.0
    assert limiter.retry_after_s("p1", 1_000) == 0  # refilled, never above the burst
    for _ in range(3):
        limiter.failed("p1", 1_000)
    assert limiter.retry_after_s("p1", 1_000) > 0


def test_response_headers_lose_the_account() -> None:
    upstream = {
        "content-type": "application/json",
        "request-id": "req_1",
        "anthropic-organization-id": "org-1",
        "Anthropic-Organization-Id": "org-1",
        "openai-organization": "org-2",
        "anthropic-ratelimit-requests-remaining": "49",
        "set-cookie": "a=b",
        "transfer-encoding": "chunked",
    }
    assert downstream_headers(upstream) == {
        "content-type": "application/json",
        "request-id": "req_1",
        "anthropic-ratelimit-requests-remaining": "49",
    }
