"""A runner killed mid-turn never answers a message twice: the final answer commits with
the batch's ack, and a retried batch is told what it already sent."""

from __future__ import annotations

import json
import signal
from typing import Any

from nanoclaw_common.store import CentralStore
from tests.fakes.anthropic_api import FakeAnthropic, text, tool_use
from tests.integration.agents.harness import (
    AgentSession,
    Proxy,
    ack_status,
    send_chat,
    start_runner,
    texts,
    write_config,
)
from tests.waiting import wait_until

MODEL = "claude-sonnet-4-6"


def current_tool(agent: AgentSession) -> str | None:
    reader = agent.outbound()
    try:
        state = reader.container_state()
        return state.current_tool if state else None
    finally:
        reader.close()


def tries(agent: AgentSession, message_id: str) -> int:
    store = agent.inbound()
    try:
        row = store.get_message(message_id)
        assert row is not None
        return row.tries
    finally:
        store.close()


def test_a_kill_just_before_the_ack_does_not_answer_twice(
    proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession, central: CentralStore
) -> None:
    write_config(agent, proxy.socket, model=MODEL)
    fake_api.reply(text('<message to="main">the answer</message>'))
    runner = start_runner(
        agent, log_name="run1.log", env={"NANOCLAW_TEST_CRASH": "before_batch_ack"}
    )
    message_id = send_chat(agent, "a question")
    # The turn ran to its end; the runner died where a container kill hurts most.
    assert runner.process.wait(30) == -signal.SIGKILL, runner.log()
    assert len(fake_api.message_requests()) == 1
    assert ack_status(agent, message_id) == "processing"
    assert texts(agent) == []  # the answer commits with the ack, or not at all

    agent.settle_dead_run(central)
    agent.new_run(central)
    fake_api.reply(text('<message to="main">the answer</message>'))
    runner = start_runner(agent, log_name="run2.log")
    try:
        wait_until(
            lambda: ack_status(agent, message_id) == "completed",
            timeout_s=20.0,
            what="the retry's ack",
        )
        assert texts(agent) == ["the answer"]
        assert tries(agent, message_id) == 1
    finally:
        assert runner.terminate() == 0, runner.log()


def test_a_retried_batch_is_told_what_it_already_sent(
    proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession, central: CentralStore
) -> None:
    write_config(agent, proxy.socket, model=MODEL)
    fake_api.reply(
        tool_use("send_message", {"text": "On it, this takes a while."}, "toolu_ack"),
        tool_use("bash", {"command": "sleep 60"}, "toolu_sleep"),
    )
    runner = start_runner(agent, log_name="run1.log")
    message_id = send_chat(agent, "do the long thing")
    wait_until(
        lambda: current_tool(agent) == "bash",
        timeout_s=20.0,
        what="the long tool call",
    )
    runner.kill()  # SIGKILL mid-turn, as a container kill
    assert ack_status(agent, message_id) == "processing"
    assert texts(agent) == ["On it, this takes a while."]

    agent.settle_dead_run(central)
    agent.new_run(central)
    seen: dict[str, Any] = {}

    def retried(body: dict[str, Any]) -> dict[str, Any]:
        seen["prompt"] = json.dumps(body["messages"][-1])
        return text('<message to="main">Finished.</message>')

    fake_api.reply(retried)
    runner = start_runner(agent, log_name="run2.log")
    try:
        wait_until(
            lambda: ack_status(agent, message_id) == "completed",
            timeout_s=20.0,
            what="the retry's ack",
        )
    finally:
        assert runner.terminate() == 0, runner.log()
    assert texts(agent) == ["On it, this takes a while.", "Finished."]
    prompt = seen["prompt"]
    assert "do the long thing" in prompt
    assert "your previous attempt was interrupted" in prompt
    assert 'to main: \\"On it, this takes a while.\\"' in prompt
    assert "Do not send them again" in prompt
