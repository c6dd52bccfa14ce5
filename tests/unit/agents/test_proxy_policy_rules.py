"""The proxy's pure rules: peer identities from cgroup files, the server-side capability
check, the budget ledger (real SQLite), the runner's sorting of failures, the guard's
admission and its rate-limited log."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from agent_runner.providers.anthropic_api import Outcome, classify, next_delay, retry_after_s
from nanoclaw_common.errors import Refused
from nanoclaw_common.peer_identity import identity_from_cgroup, identity_of_pid
from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.metering import DayUse, Reservation, TokenLedger
from nanoclaw_common.store.proxy_policy import ProxyPolicies, ServerCapabilities
from nanoclaw_proxy.capabilities import Checked, check_request, domain_allowed
from nanoclaw_proxy.capabilities import Refused as CapabilityRefused
from nanoclaw_proxy.guard import ConnectionGuard, RateLimitedLog

ID = "5fb5e779a765cddf62ae19582f1e469e685cebf3c66849e4c753e55ff910c95e"
NOW = 1_768_485_660_000

# -- identities ----------------------------------------------------------------------------


def test_a_container_is_named_by_its_cgroup_on_every_layout() -> None:
    hybrid = "\n".join(
        f"{n}:{c}:/libpod_parent/libpod-{ID}"
        for n, c in [(9, "name=systemd"), (8, "pids"), (4, "memory"), (0, "")]
    )
    v2_systemd = f"0::/machine.slice/libpod-{ID}.scope\n"
    v2_split = f"0::/machine.slice/libpod-{ID}.scope/container\n"
    rootless = f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope\n"
    for text in (hybrid, v2_systemd, v2_split, rootless):
        assert identity_from_cgroup(text) == f"container:{ID}"


def test_podmans_monitor_and_host_processes_are_not_containers() -> None:
    conmon = f"0::/machine.slice/libpod-conmon-{ID}.scope\n"
    assert identity_from_cgroup(conmon).startswith("cgroup:")
    host = "0::/user.slice/user-1000.slice/session-3.scope\n"
    other = "0::/user.slice/user-1000.slice/session-4.scope\n"
    assert identity_from_cgroup(host).startswith("cgroup:")
    assert identity_from_cgroup(host) != identity_from_cgroup(other)
    assert identity_from_cgroup("") == "unknown"
    # A short hex run in a path (this machine's memory cgroup) is not a container id.
    assert (
        identity_from_cgroup("4:memory:/process_api/233031891a5d70366acc9d7349e75445\n0::/\n")[:7]
        == "cgroup:"
    )


def test_a_process_and_its_children_share_an_identity() -> None:
    mine = identity_of_pid(os.getpid())
    context = multiprocessing.get_context("fork")
    queue: Any = context.SimpleQueue()
    child = context.Process(target=lambda: queue.put(identity_of_pid(os.getpid())))
    child.start()
    child.join(10)
    assert queue.get() == mine
    assert identity_of_pid(2**22 + 12345) == "unknown"  # no such process


# -- capabilities --------------------------------------------------------------------------


def request(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "max_tokens": 100, "messages": [], **fields}).encode()


def refused(outcome: Checked | CapabilityRefused) -> str:
    assert isinstance(outcome, CapabilityRefused), outcome
    return outcome.message


DEFAULT = ServerCapabilities()


def test_client_tools_and_default_web_tools_pass_unchanged() -> None:
    tools = [
        {"name": "bash", "input_schema": {"type": "object"}},
        {"type": "custom", "name": "x", "input_schema": {}},
        {"type": "bash_20250124", "name": "bash"},
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
        {"type": "web_search_20250305", "name": "web_search"},
        {"type": "web_fetch_20250910", "name": "web_fetch"},
    ]
    body = request(tools=tools)
    outcome = check_request(body, "web-fetch-2025-09-10", DEFAULT, "main")
    assert outcome == Checked(body, 100)


@pytest.mark.parametrize(
    ("fields", "beta", "words"),
    [
        ({"tools": [{"type": "code_execution_20250825", "name": "c"}]}, None, "--server-tool"),
        ({"tools": [{"type": "mcp_toolset", "mcp_server_name": "x"}]}, None, "--mcp-connector"),
        ({"tools": [{"type": "advisor_20260301", "name": "a"}]}, None, "not known"),
        ({"tools": [{"type": "tool_search_tool_regex_20251119"}]}, None, "tool_search_tool"),
        ({"mcp_servers": [{"type": "url", "url": "https://evil.example/mcp"}]}, None, "MCP"),
        ({"container": "container_011"}, None, "code execution"),
        ({}, "files-api-2025-04-14", "--allow-beta files-api-2025-04-14"),
        ({}, "prompt-caching-2024-07-31, mcp-client-2025-04-04", "mcp-client-2025-04-04"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "document", "source": {"type": "file", "file_id": "file_011"}}
                        ],
                    }
                ]
            },
            None,
            "files of the account",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "content": [{"type": "container_upload", "file_id": "f"}],
                            }
                        ],
                    }
                ]
            },
            None,
            "code execution container",
        ),
    ],
)
def test_what_is_off_is_refused_saying_how_to_turn_it_on(
    fields: dict[str, Any], beta: str | None, words: str
) -> None:
    message = refused(check_request(request(**fields), beta, DEFAULT, "main"))
    assert words in message
    assert message.startswith("NanoClaw proxy:")


def test_the_owner_can_turn_things_on_and_web_off() -> None:
    caps = ServerCapabilities(
        server_tools=("code_execution",),
        mcp_connector=True,
        allowed_betas=("files-api-2025-04-14",),
    )
    body = request(
        tools=[{"type": "code_execution_20250825", "name": "c"}, {"type": "mcp_toolset"}],
        mcp_servers=[{"type": "url", "url": "https://mcp.example/x", "name": "x"}],
        container="container_1",
    )
    assert isinstance(check_request(body, "files-api-2025-04-14", caps, "g"), Checked)
    no_web = ServerCapabilities(web_search=False, web_fetch=False)
    search = request(tools=[{"type": "web_search_20250305", "name": "web_search"}])
    assert "--web-search" in refused(check_request(search, None, no_web, "g"))
    url_image = request(
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://evil.example/?q=secret"},
                    }
                ],
            }
        ]
    )
    assert "--web-fetch" in refused(check_request(url_image, None, no_web, "g"))
    assert "web-fetch-2025-09-10" in refused(
        check_request(request(), "web-fetch-2025-09-10", no_web, "g")
    )


def test_the_domain_allowlist_is_written_into_the_web_tools_and_checked_for_urls() -> None:
    caps = ServerCapabilities(web_domains=("docs.python.org", "*.example.com"))
    body = request(
        tools=[
            {"type": "web_search_20250305", "name": "web_search", "blocked_domains": ["x.org"]},
            {
                "type": "web_fetch_20250910",
                "name": "web_fetch",
                "allowed_domains": ["docs.python.org/3/library", "evil.net"],
            },
        ]
    )
    outcome = check_request(body, None, caps, "g")
    assert isinstance(outcome, Checked)
    search, fetch = json.loads(outcome.body)["tools"]
    assert search["allowed_domains"] == ["docs.python.org", "*.example.com"]
    assert "blocked_domains" not in search
    assert fetch["allowed_domains"] == ["docs.python.org/3/library"]  # evil.net dropped
    only_evil = request(
        tools=[{"type": "web_fetch_20250910", "name": "f", "allowed_domains": ["evil.net"]}]
    )
    assert "allowlist" in refused(check_request(only_evil, None, caps, "g"))
    deep = request(
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "content": [
                            {
                                "type": "image",
                                "source": {"type": "url", "url": "https://evil.net/x.png"},
                            }
                        ],
                    }
                ],
            }
        ]
    )
    assert "evil.net" in refused(check_request(deep, None, caps, "g"))
    fine = request(
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "document",
                        "source": {"type": "url", "url": "https://a.example.com/doc.pdf"},
                    }
                ],
            }
        ]
    )
    assert isinstance(check_request(fine, None, caps, "g"), Checked)
    assert domain_allowed("docs.python.org", caps.web_domains)
    assert not domain_allowed("example.com", caps.web_domains)  # *. means subdomains only
    assert not domain_allowed("python.org.evil.net", caps.web_domains)


def test_junk_bodies_are_refused() -> None:
    assert "not JSON" in refused(check_request(b"{nope", None, DEFAULT, "g"))
    assert "JSON object" in refused(check_request(b"[1]", None, DEFAULT, "g"))
    nested: Any = {"type": "text"}
    for _ in range(100):
        nested = {"type": "tool_result", "content": [nested]}
    body = request(messages=[{"role": "user", "content": [nested]}])
    assert "nested too deeply" in refused(check_request(body, None, DEFAULT, "g"))


# -- the ledger ----------------------------------------------------------------------------


@pytest.fixture
def group_id(central: CentralStore) -> str:
    return central.create_agent_group("Main", "main").id


def test_reservations_fit_the_budget_atomically(
    central: CentralStore, group_id: str, tmp_path: Path
) -> None:
    """Twenty threads, each with its own connection, race for room for two."""
    results: list[Reservation | DayUse] = []
    lock = threading.Lock()
    barrier = threading.Barrier(20)

    def reserve() -> None:
        store = CentralStore.open(central.db.path)
        try:
            barrier.wait()
            held = TokenLedger(store).reserve(
                group_id, "2026-01-15", 500, budget=1080, owner_pid=1, now=NOW
            )
            with lock:
                results.append(held)
        finally:
            store.close()

    threads = [threading.Thread(target=reserve) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    held = [r for r in results if isinstance(r, Reservation)]
    assert len(held) == 2 and len(results) == 20
    ledger = TokenLedger(central)
    assert ledger.day_use(group_id, "2026-01-15", now=NOW) == DayUse(0, 1000)
    ledger.settle(held[0], 300, 100)
    ledger.release(held[1])
    assert ledger.day_use(group_id, "2026-01-15", now=NOW) == DayUse(400, 0)


def test_dead_and_expired_reservations_stop_counting(central: CentralStore, group_id: str) -> None:
    ledger = TokenLedger(central)
    ledger.reserve(group_id, "d", 100, budget=0, owner_pid=111, now=NOW, ttl_ms=1000)
    ledger.reserve(group_id, "d", 200, budget=0, owner_pid=222, now=NOW)
    assert ledger.day_use(group_id, "d", now=NOW).reserved == 300
    assert ledger.day_use(group_id, "d", now=NOW + 1000).reserved == 200  # the first expired
    assert ledger.forget_owners_except({222}, now=NOW) == 1
    assert ledger.forget_owners_except(set(), now=NOW) == 1
    assert ledger.live_reservations(now=NOW) == 0


def test_capabilities_are_validated_when_set(central: CentralStore, group_id: str) -> None:
    policies = ProxyPolicies(central)
    assert policies.get(group_id) == ServerCapabilities()
    changed = policies.update(
        group_id,
        web_search=False,
        web_domains=["Docs.Python.org.", "*.example.com"],
        server_tools=["code_execution"],
        allowed_betas=["files-api-2025-04-14"],
    )
    assert changed.web_search is False and changed.web_fetch is True
    assert changed.web_domains == ("*.example.com", "docs.python.org")
    assert changed.server_tools == ("code_execution",)
    for bad in (
        {"web_domains": ["evil net"]},
        {"server_tools": ["rm_rf"]},
        {"allowed_betas": ["a b"]},
        {"nonsense": True},
    ):
        with pytest.raises(Refused):
            policies.update(group_id, **bad)


# -- the runner's sorting of failures ------------------------------------------------------


def error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def test_ours_and_theirs_transient_and_permanent() -> None:
    budget = classify(
        429,
        {"x-should-retry": "false"},
        error(
            "rate_limit_error",
            "NanoClaw: the agent group 'main' has reached its daily token budget",
        ),
        "",
    )
    assert not budget.transient and budget.reason.startswith("NanoClaw: the agent group")
    limited = classify(429, {"retry-after": "7"}, error("rate_limit_error", "slow"), "")
    assert limited.transient and limited.retry_after_s == 7.0 and limited.busy
    overloaded = classify(529, {}, error("overloaded_error", "Overloaded"), "")
    assert overloaded.transient and next_delay(overloaded, 0) == 0.05
    assert next_delay(overloaded, 30) == 60.0
    token = classify(
        401, {}, error("authentication_error", "NanoClaw proxy: unknown or revoked"), ""
    )
    assert token.transient  # this run is being replaced; not the user's problem
    key = classify(401, {}, error("authentication_error", "invalid x-api-key"), "")
    assert not key.transient and "ANTHROPIC_API_KEY" in key.reason
    overflow = classify(400, {}, error("invalid_request_error", "prompt is too long"), "")
    assert overflow.context_overflow and not overflow.transient
    assert next_delay(Outcome(True, "refused"), 10) == 1.0  # ours: looked at again soon
    assert retry_after_s({"retry-after-ms": "250"}) == 0.25
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    assert retry_after_s({"retry-after": "99999"}) == 600.0


# -- the guard -----------------------------------------------------------------------------


def test_admission_per_peer_and_in_all() -> None:
    guard = ConnectionGuard(total=5, per_peer=3)
    assert [guard.admit("a") for _ in range(3)] == [None, None, None]
    assert "limit 3" in (guard.admit("a") or "")
    assert guard.admit("b") is None and guard.admit("b") is None
    assert "in all" in (guard.admit("c") or "")
    guard.release("a")
    assert guard.admit("c") is None
    assert guard.stats == {"refused_peer": 1, "refused_total": 1}


def test_the_log_is_rate_limited_per_key() -> None:
    clock = [0.0]
    logs = RateLimitedLog(interval_s=10, clock=lambda: clock[0])
    assert logs.warning("k", "x") is True
    assert [logs.warning("k", "x") for _ in range(50)] == [False] * 50
    assert logs.warning("other", "y") is True
    clock[0] = 10.0
    assert logs.warning("k", "x") is True  # says "50 more like it"
