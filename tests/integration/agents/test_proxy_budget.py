"""The daily budget under concurrency, through the real proxy process and the real SDK: each
call's worst case is reserved before it is forwarded, in one transaction, and settled with
its real usage afterwards; reservations of failed or abandoned calls do not linger."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest
from anthropic.types import MessageParam

from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.metering import TokenLedger, utc_day
from tests.central_verbs import add_token_usage, get_token_usage
from tests.fakes.anthropic_api import ApiError, FakeAnthropic, text
from tests.integration.agents.harness import AgentSession, Proxy, start_proxy, uds_client
from tests.waiting import wait_until

MESSAGES: list[MessageParam] = [{"role": "user", "content": "hello"}]
_clients: list[anthropic.Anthropic] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def sdk(proxy: Proxy, token: str) -> anthropic.Anthropic:
    client = anthropic.Anthropic(
        api_key=token, base_url="http://proxy", http_client=uds_client(proxy.socket), max_retries=0
    )
    _clients.append(client)
    return client


def today() -> str:
    return utc_day(int(time.time() * 1000))


def live_reservations(central: CentralStore) -> int:
    return TokenLedger(central).live_reservations(now=int(time.time() * 1000))


def test_twenty_concurrent_calls_against_room_for_two(
    proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession, central: CentralStore
) -> None:
    """Each call reserves about 30 input tokens (its body) + 400 max_tokens; 1,080 leaves
    room for two. The old proxy checked the day's usage before forwarding and recorded it
    after the response: all twenty went through (3,240 tokens against 1,080)."""
    central.update_container_config(agent.group_id, token_budget_daily=1080)
    usage = {"input_tokens": 300, "output_tokens": 200}
    fake_api.reply(*[{**text("ok"), "usage": usage, "delay_s": 0.5} for _ in range(20)])
    start = threading.Barrier(20)
    outcomes: list[str] = []
    lock = threading.Lock()

    def call() -> None:
        client = sdk(proxy, agent.token)
        start.wait()
        try:
            client.messages.create(model="m", max_tokens=400, messages=MESSAGES)
            outcome = "ok"
        except anthropic.RateLimitError as exc:
            outcome = "refused" if "daily token budget" in str(exc) else f"other: {exc}"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=call) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == ["ok"] * 2 + ["refused"] * 18
    assert len(fake_api.message_requests()) == 2
    used = get_token_usage(central, agent.group_id, today())
    assert used is not None and (used.input_tokens, used.output_tokens) == (600, 400)
    assert used.input_tokens + used.output_tokens <= 1080
    assert live_reservations(central) == 0  # settled, every one


def test_a_refusal_says_what_happened_and_who_can_change_it(
    proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession, central: CentralStore
) -> None:
    central.update_container_config(agent.group_id, token_budget_daily=1000)
    add_token_usage(central, agent.group_id, today(), 700, 200)
    with pytest.raises(anthropic.RateLimitError) as refused:
        sdk(proxy, agent.token).messages.create(model="m", max_tokens=500, messages=MESSAGES)
    message = str(refused.value)
    assert "900 of 1,000 tokens used today" in message
    assert "resets at 00:00 UTC" in message
    assert "nanoclaw groups config" in message and "--budget" in message
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert fake_api.requests == []


def test_a_failed_call_releases_its_reservation(
    proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession, central: CentralStore
) -> None:
    central.update_container_config(agent.group_id, token_budget_daily=100_000)
    fake_api.reply(ApiError(400, "invalid_request_error", "bad"))
    with pytest.raises(anthropic.BadRequestError):
        sdk(proxy, agent.token).messages.create(model="m", max_tokens=500, messages=MESSAGES)
    assert live_reservations(central) == 0
    assert get_token_usage(central, agent.group_id, today()) is None


def test_a_proxy_killed_mid_call_leaves_no_reservation_behind(
    home: Path, fake_api: FakeAnthropic, agent: AgentSession, central: CentralStore
) -> None:
    central.update_container_config(agent.group_id, token_budget_daily=100_000)
    first = start_proxy(home, fake_api.api_key, fake_api.url)
    fake_api.reply({**text("slow"), "delay_s": 3})
    client = sdk(first, agent.token)

    def call() -> None:
        with contextlib.suppress(anthropic.APIError):  # its proxy is killed under it
            client.messages.create(model="m", max_tokens=500, messages=MESSAGES)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    wait_until(
        lambda: live_reservations(central) == 1,
        timeout_s=20.0,
        what="the call's reservation",
    )
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    assert live_reservations(central) == 1  # nobody could settle it
    second = start_proxy(home, fake_api.api_key, fake_api.url)
    try:
        assert live_reservations(central) == 0
        assert "dropped 1 reservation(s) left by an earlier proxy" in second.log()
    finally:
        second.stop()
    caller.join(40)
