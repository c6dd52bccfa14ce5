"""A proxy that is away, or a busy API, never fails a message (issue 9 §1): the runner (a
host process, the real SDK) waits an absent proxy out and retries busy answers after their
``retry-after``; when the wait runs out it gives the claim back, and the host's retry path
(``tries + 1``, a backoff) takes it from there. The user is told nothing meanwhile."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from agent_runner.app import EXIT_GAVE_BACK
from nanoclaw_common.store import CentralStore
from tests.fakes.anthropic_api import ApiError, FakeAnthropic, text
from tests.integration.agents.harness import (
    AgentSession,
    Proxy,
    ack_status,
    send_chat,
    start_proxy,
    start_runner,
    texts,
    write_config,
)
from tests.waiting import wait_until

MODEL = "claude-sonnet-4-6"


def kill_proxy_and_keeper(proxy: Proxy) -> None:
    """No proxy at all: the process and the keeper holding its socket, both SIGKILLed, so
    a connection is refused (a stale socket file, nobody listening)."""
    for line in proxy.log().splitlines():
        if "keeper pid" in line:
            keeper = int(line.rsplit("keeper pid", 1)[1].strip(" )"))
            with contextlib.suppress(ProcessLookupError):
                os.kill(keeper, signal.SIGKILL)
    proxy.process.send_signal(signal.SIGKILL)
    proxy.process.wait(10)


def tries(agent: AgentSession, message_id: str) -> int:
    store = agent.inbound()
    try:
        row = store.get_message(message_id)
        assert row is not None
        return row.tries
    finally:
        store.close()


def test_a_proxy_away_for_a_while_is_waited_out(
    home: Path, fake_api: FakeAnthropic, agent: AgentSession, central: CentralStore
) -> None:
    """The old client gave up after its SDK's two retries (~1.5 s) and wrote "Error: Could
    not reach the model API" to the chat, acking the message failed."""
    proxy = start_proxy(home, fake_api.api_key, fake_api.url)
    write_config(agent, proxy.socket, model=MODEL)
    fake_api.reply(
        text('<message to="main">one</message>'), text('<message to="main">two</message>')
    )
    runner = start_runner(agent)
    replacement: Proxy | None = None
    try:
        first = send_chat(agent, "one")
        wait_until(
            lambda: ack_status(agent, first) == "completed",
            timeout_s=20.0,
            what="the first answer",
        )
        kill_proxy_and_keeper(proxy)
        second = send_chat(agent, "two")
        runner.wait_for_log("the NanoClaw proxy is not answering")
        runner.wait_for_log("retrying in", count=4)  # several tries over ~1 s: refused each
        replacement = start_proxy(home, fake_api.api_key, fake_api.url)
        wait_until(
            lambda: ack_status(agent, second) == "completed",
            timeout_s=20.0,
            what="the second answer",
        )
        assert texts(agent) == ["one", "two"]
        assert "model call went through after" in runner.log()
    finally:
        assert runner.terminate() == 0, runner.log()
        if replacement is not None:
            replacement.stop()


def test_when_the_wait_runs_out_the_claim_goes_back_to_the_retry_path(
    home: Path, fake_api: FakeAnthropic, agent: AgentSession, central: CentralStore
) -> None:
    proxy = start_proxy(home, fake_api.api_key, fake_api.url)
    write_config(agent, proxy.socket, model=MODEL, proxy_wait_s=1.0)
    kill_proxy_and_keeper(proxy)
    runner = start_runner(agent)
    message_id = send_chat(agent, "anyone there?")
    assert runner.process.wait(30) == EXIT_GAVE_BACK, runner.log()
    assert "giving 1 claim(s) back to the host" in runner.log()
    assert ack_status(agent, message_id) == "processing"  # not failed
    assert texts(agent) == []  # nobody was told anything
    agent.settle_dead_run(central)  # what wake() or the sweeper does with a run that is over
    assert tries(agent, message_id) == 1


def test_overloaded_and_rate_limited_answers_are_retried_after_retry_after(
    proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession
) -> None:
    write_config(agent, proxy.socket, model=MODEL)
    fake_api.reply(
        ApiError(529, "overloaded_error", "Overloaded", (("retry-after", "0.3"),)),
        ApiError(429, "rate_limit_error", "slow down", (("retry-after", "0.5"),)),
        text('<message to="main">made it</message>'),
    )
    runner = start_runner(agent)
    try:
        message_id = send_chat(agent, "hello")
        wait_until(
            lambda: ack_status(agent, message_id) == "completed",
            timeout_s=20.0,
            what="the answer",
        )
        assert texts(agent) == ["made it"]
        first, second, third = fake_api.message_requests()
        assert second.at - first.at >= 0.3
        assert third.at - second.at >= 0.5
    finally:
        assert runner.terminate() == 0, runner.log()


def test_a_permanent_refusal_is_shown_in_words_a_person_can_act_on(
    proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession
) -> None:
    write_config(agent, proxy.socket, model=MODEL)
    fake_api.reply(ApiError(404, "not_found_error", "model: claude-nope"))
    runner = start_runner(agent)
    try:
        message_id = send_chat(agent, "hello")
        wait_until(
            lambda: ack_status(agent, message_id) == "failed",
            timeout_s=20.0,
            what="the failed ack",
        )
        (notice,) = texts(agent)
        assert notice.startswith("Error: The model API does not know what was asked for")
        assert "check the model this agent group is set to use" in notice
        assert len(fake_api.message_requests()) == 1  # not retried
    finally:
        assert runner.terminate() == 0, runner.log()
