"""The proxy's token checks under load from bad credentials: valid tokens are cached,
malformed ones never reach the database, failed lookups are rate limited per peer (the
container; here the test process's own cgroup identity, shared by its children),
and a revoked or replaced token stops working. The proxy app runs in a thread of the test
(``local_proxy``), on its real socket, with its clock in the test's hands."""

from __future__ import annotations

import secrets
import subprocess
import sys
from typing import Any

import httpx2

from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.proxy_tokens import ProxyTokens
from nanoclaw_proxy.tokens import CACHE_TTL_S, FAILURE_BURST
from tests.fakes.anthropic_api import FakeAnthropic
from tests.integration.agents.conftest import LocalProxy
from tests.integration.agents.harness import AgentSession, uds_client
from tests.waiting import wait_until

COUNT = "http://proxy/v1/messages/count_tokens"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def count(proxy: LocalProxy, token: str) -> httpx2.Response:
    with uds_client(proxy.socket) as client:
        return client.post(
            COUNT, headers={"x-api-key": token, "anthropic-version": "2023-06-01"}, json=BODY
        )


def stats(proxy: LocalProxy) -> dict[str, int]:
    return dict(proxy.state.stats)


def test_a_valid_token_is_looked_up_once_per_ttl(
    local_proxy: LocalProxy, fake_api: FakeAnthropic, agent: AgentSession
) -> None:
    for _ in range(3):
        assert count(local_proxy, agent.token).status_code == 200
    assert stats(local_proxy) == {"lookups": 1, "cache_hits": 2}
    local_proxy.clock[0] += CACHE_TTL_S  # the entry's time is up: looked up again
    assert count(local_proxy, agent.token).status_code == 200
    assert stats(local_proxy) == {"lookups": 2, "cache_hits": 2}
    assert len(fake_api.requests) == 4


def test_malformed_credentials_never_reach_the_database(
    local_proxy: LocalProxy, fake_api: FakeAnthropic
) -> None:
    for junk in ("x", "not a token at all", "a" * 300, "tok.en;" + "a" * 20, "../../etc"):
        refused = count(local_proxy, junk)
        assert refused.status_code == 401
        assert refused.json()["error"]["message"] == "NanoClaw proxy: malformed session token."
    assert stats(local_proxy) == {"malformed": 5}
    assert fake_api.requests == []


def test_failed_lookups_are_rate_limited_per_peer(
    local_proxy: LocalProxy, fake_api: FakeAnthropic, agent: AgentSession
) -> None:
    assert count(local_proxy, agent.token).status_code == 200  # cached from now on
    burst = int(FAILURE_BURST)
    for _ in range(burst):
        assert count(local_proxy, secrets.token_urlsafe(32)).status_code == 401
    limited = count(local_proxy, secrets.token_urlsafe(32))
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "1"
    assert "too many requests with unknown session tokens" in limited.json()["error"]["message"]
    assert stats(local_proxy)["lookups"] == 1 + burst  # the 429 cost no lookup
    # The session's cached token is served as before ...
    assert count(local_proxy, agent.token).status_code == 200
    # ... also from another process of the same peer, which is held to the same limit: a
    # container cannot fork its way around it (other containers have buckets of their
    # own: tests/security/test_proxy.py).
    assert another_process_counts(local_proxy, agent.token) == 200
    assert another_process_counts(local_proxy, secrets.token_urlsafe(32)) == 429
    # A second later this peer may try once more.
    local_proxy.clock[0] += 1.0
    assert count(local_proxy, secrets.token_urlsafe(32)).status_code == 401
    assert count(local_proxy, secrets.token_urlsafe(32)).status_code == 429
    assert stats(local_proxy)["rate_limited"] == 3


def another_process_counts(proxy: LocalProxy, token: str) -> int:
    script = (
        "import sys, httpx2\n"
        "client = httpx2.Client(transport=httpx2.HTTPTransport(uds=sys.argv[1]))\n"
        "r = client.post(sys.argv[2], headers={'x-api-key': sys.argv[3],"
        " 'anthropic-version': '2023-06-01'}, json={'model': 'm', 'messages': []})\n"
        "print(r.status_code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(proxy.socket), COUNT, token],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return int(done.stdout.strip())


def test_a_revoked_or_replaced_token_stops_working(
    local_proxy: LocalProxy, fake_api: FakeAnthropic, agent: AgentSession, central: CentralStore
) -> None:
    assert count(local_proxy, agent.token).status_code == 200
    assert count(local_proxy, agent.token).status_code == 200
    assert stats(local_proxy)["cache_hits"] == 1
    # The container was stopped: its token is revoked in central.db, by another connection.
    ProxyTokens(central).revoke(agent.session_id)

    def refused() -> Any:
        return count(local_proxy, agent.token).status_code == 401

    wait_until(refused, timeout_s=5.0, what="the cached token to be re-checked")
    assert stats(local_proxy)["revoked_in_cache"] == 1
    # A new run: a new token, and the old one is no good even while it was cached.
    agent.new_run(central)
    old = agent.token
    assert count(local_proxy, old).status_code == 200
    agent.new_run(central)
    assert count(local_proxy, agent.token).status_code == 200  # replaces the session's entry
    assert count(local_proxy, old).status_code == 401
