"""The credential proxy as a real process, driven by the real anthropic SDK over the Unix
socket, forwarding to the fake Messages API."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest
from anthropic.types import MessageParam

from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.metering import utc_day
from nanoclaw_common.store.proxy_tokens import ProxyTokens
from tests.central_verbs import add_token_usage, get_token_usage
from tests.fakes.anthropic_api import ORGANIZATION_ID, FakeAnthropic, text
from tests.integration.agents.harness import AgentSession, Proxy, uds_client
from tests.waiting import wait_until

MESSAGES: list[MessageParam] = [{"role": "user", "content": "hello"}]
_clients: list[anthropic.Anthropic] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def sdk(proxy: Proxy, token: str, max_retries: int = 0) -> anthropic.Anthropic:
    client = anthropic.Anthropic(
        api_key=token,
        base_url="http://proxy",
        http_client=uds_client(proxy.socket),
        max_retries=max_retries,
    )
    _clients.append(client)
    return client


def today() -> str:
    return utc_day(int(time.time() * 1000))


def test_replaces_the_credential_with_the_real_key_and_meters(
    proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession, central: CentralStore
) -> None:
    fake_api.reply(
        {
            **text("hi there"),
            "usage": {"input_tokens": 11, "output_tokens": 7, "cache_read_input_tokens": 5},
        }
    )
    reply = sdk(proxy, agent.token).messages.create(
        model="claude-sonnet-4-6", max_tokens=100, messages=MESSAGES
    )
    assert reply.content[0].type == "text" and reply.content[0].text == "hi there"
    (seen,) = fake_api.message_requests()
    headers = seen.headers
    assert headers["x-api-key"] == fake_api.api_key
    assert "authorization" not in headers
    assert agent.token not in str(seen.headers)
    assert headers["anthropic-version"]
    usage = get_token_usage(central, agent.group_id, today())
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.requests) == (16, 7, 1)


def test_accepts_the_token_as_x_api_key_too(
    proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession
) -> None:
    fake_api.reply(text("ok"))
    with uds_client(proxy.socket) as client:
        response = client.post(
            "http://proxy/v1/messages",
            headers={"x-api-key": agent.token, "anthropic-version": "2023-06-01"},
            json={"model": "m", "max_tokens": 5, "messages": MESSAGES},
        )
    assert response.status_code == 200, response.text
    (seen,) = fake_api.message_requests()
    assert seen.headers["x-api-key"] == fake_api.api_key


def test_unknown_or_missing_token_is_refused(
    proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession, central: CentralStore
) -> None:
    with pytest.raises(anthropic.AuthenticationError) as refused:
        sdk(proxy, "not-a-token").messages.create(model="m", max_tokens=5, messages=MESSAGES)
    assert "malformed session token" in str(refused.value)
    with pytest.raises(anthropic.AuthenticationError) as refused:
        sdk(proxy, "x" * 43).messages.create(model="m", max_tokens=5, messages=MESSAGES)
    assert "unknown or revoked session token" in str(refused.value)
    with uds_client(proxy.socket) as client:
        bare = client.post("http://proxy/v1/messages", json={"messages": MESSAGES})
    assert bare.status_code == 401
    assert bare.json()["error"]["type"] == "authentication_error"
    # A revoked token (the session's container was replaced) is refused as well.
    ProxyTokens(central).revoke(agent.session_id)
    with pytest.raises(anthropic.AuthenticationError):
        sdk(proxy, agent.token).messages.create(model="m", max_tokens=5, messages=MESSAGES)
    assert fake_api.requests == []


def test_only_the_messages_api_is_forwarded(
    proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession
) -> None:
    with uds_client(proxy.socket) as client:
        response = client.get(
            "http://proxy/v1/organizations/me", headers={"x-api-key": agent.token}
        )
    assert response.status_code == 404
    assert "is not forwarded" in response.json()["error"]["message"]
    assert fake_api.requests == []


def test_streams_events_as_they_come_and_meters_the_stream(
    proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession, central: CentralStore
) -> None:
    gate = threading.Event()
    fake_api.stream_gate = gate
    fake_api.reply({**text("streamed words"), "usage": {"input_tokens": 40, "output_tokens": 9}})
    with sdk(proxy, agent.token).messages.stream(
        model="claude-sonnet-4-6", max_tokens=50, messages=MESSAGES
    ) as stream:
        events = iter(stream)
        first = next(events)
        # The fake holds the rest until the gate opens: the first event got through alone.
        assert first.type == "message_start"
        gate.set()
        final = stream.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == "streamed words"
    assert final.usage.output_tokens == 9
    # The SDK may finish at `message_stop`, before the body's end (when the proxy records).
    usage = wait_until(
        lambda: get_token_usage(central, agent.group_id, today()),
        timeout_s=20.0,
        what="the stream's usage",
    )
    assert (usage.input_tokens, usage.output_tokens) == (40, 9)


def test_refuses_past_the_daily_budget_without_retries(
    proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession, central: CentralStore
) -> None:
    central.update_container_config(agent.group_id, token_budget_daily=100)
    add_token_usage(central, agent.group_id, today(), 80, 30)
    # max_retries=2 is the SDK's default: the proxy's x-should-retry: false must stop it.
    client = sdk(proxy, agent.token, max_retries=2)
    with pytest.raises(anthropic.RateLimitError) as refused:
        client.messages.create(model="m", max_tokens=5, messages=MESSAGES)
    message = str(refused.value)
    assert "daily token budget" in message and "110 of 100 tokens" in message
    assert fake_api.requests == []
    # Raising the budget lets the group go on at once.
    central.update_container_config(agent.group_id, token_budget_daily=1000)
    fake_api.reply(text("ok"))
    client.messages.create(model="m", max_tokens=5, messages=MESSAGES)
    assert len(fake_api.message_requests()) == 1


def test_default_budget_from_settings(
    home: Path, central: CentralStore, fake_api: FakeAnthropic, agent: AgentSession
) -> None:
    from tests.integration.agents.harness import start_proxy

    add_token_usage(central, agent.group_id, today(), 500, 0)
    proxy = start_proxy(home, fake_api.api_key, fake_api.url, NANOCLAW_TOKEN_BUDGET_DAILY="400")
    try:
        with pytest.raises(anthropic.RateLimitError):
            sdk(proxy, agent.token).messages.create(model="m", max_tokens=5, messages=MESSAGES)
        # A group budget of 0 means unlimited, whatever the default.
        central.update_container_config(agent.group_id, token_budget_daily=0)
        fake_api.reply(text("ok"))
        sdk(proxy, agent.token).messages.create(model="m", max_tokens=5, messages=MESSAGES)
    finally:
        proxy.stop()


def test_model_api_errors_pass_through(
    proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession
) -> None:
    # The fake has no reply queued: it answers 500, which the SDK sees as the API's error.
    with pytest.raises(anthropic.InternalServerError) as failed:
        sdk(proxy, agent.token).messages.create(model="m", max_tokens=5, messages=MESSAGES)
    assert "no scripted reply" in str(failed.value)


def test_never_logs_a_key_or_a_token(
    proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession
) -> None:
    fake_api.reply(text("a"), text("b"))
    client = sdk(proxy, agent.token)
    client.messages.create(model="m", max_tokens=5, messages=MESSAGES)
    with client.messages.stream(model="m", max_tokens=5, messages=MESSAGES) as stream:
        stream.get_final_message()
    with pytest.raises(anthropic.AuthenticationError):
        sdk(proxy, "wrong-token-value").messages.create(model="m", max_tokens=5, messages=MESSAGES)
    assert proxy.stop() == 0
    log = proxy.log()
    assert "POST /v1/messages -> 200" in log  # the log is there, at DEBUG level
    assert fake_api.api_key not in log
    assert agent.token not in log
    assert "wrong-token-value" not in log


def test_a_stream_the_container_abandons_is_still_metered(
    proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession, central: CentralStore
) -> None:
    gate = threading.Event()
    fake_api.stream_gate = gate
    fake_api.reply({**text("never read"), "usage": {"input_tokens": 70, "output_tokens": 5}})
    with (
        uds_client(proxy.socket) as client,
        client.stream(
            "POST",
            "http://proxy/v1/messages",
            headers={"x-api-key": agent.token, "anthropic-version": "2023-06-01"},
            json={"model": "m", "max_tokens": 5, "stream": True, "messages": MESSAGES},
        ) as response,
    ):
        assert response.status_code == 200
        first = next(response.iter_lines())
        assert first == "event: message_start"
    # The client is gone; the rest of the stream meets a closed connection.
    gate.set()
    usage = wait_until(
        lambda: get_token_usage(central, agent.group_id, today()),
        timeout_s=20.0,
        what="the partial usage",
    )
    assert (usage.input_tokens, usage.requests) == (70, 1)
    wait_until(
        lambda: "stream ended early" in proxy.log(),
        timeout_s=20.0,
        what="the log line",
    )


def test_headers_naming_the_account_do_not_reach_the_container(
    proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession
) -> None:
    fake_api.reply(text("ok"))
    with uds_client(proxy.socket) as client:
        response = client.post(
            "http://proxy/v1/messages",
            headers={"x-api-key": agent.token, "anthropic-version": "2023-06-01"},
            json={"model": "m", "max_tokens": 5, "messages": MESSAGES},
        )
        counted = client.post(
            "http://proxy/v1/messages/count_tokens",
            headers={"x-api-key": agent.token, "anthropic-version": "2023-06-01"},
            json={"model": "m", "messages": MESSAGES},
        )
    for answer in (response, counted):
        assert answer.status_code == 200, answer.text
        assert "anthropic-organization-id" not in answer.headers
        assert ORGANIZATION_ID not in str(answer.headers)
        assert answer.headers["request-id"].startswith("req_fake_")  # request ids are fine
