"""A container killed at any point of a turn: every message is answered once, the next run does
not pick up the dead turn, and a retried batch is told exactly what was sent for it.

The scenario of issue 9 §2, at each crash point of a turn (docs/delivery.md, rows 3a-3d): the
runner dies while answering A; the host settles the dead run (A waits out its backoff);
B arrives and the new run answers B alone (A's dangling turn is not in front of it); then A
comes due and is answered once, with a retry note that lists what really went out for A.
The real runner process, the real proxy, the real SDK, the fake Messages API.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from nanoclaw_common.sandbox.settle import settle_leftover_claims
from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.runs import RunLedger, leftover_claims
from tests.fakes.anthropic_api import FakeAnthropic, text, tool_use
from tests.integration.agents.harness import (
    AgentSession,
    Proxy,
    ack_status,
    outbound_rows,
    send_chat,
    start_runner,
    texts,
    write_config,
)
from tests.waiting import wait_until

MODEL = "claude-sonnet-4-6"
POINTS = ("before_model_call", "during_model_call", "after_send", "before_batch_ack")


def settle_now(agent: AgentSession, central: CentralStore) -> None:
    """What wake() does with a dead run's claims: A gets ``tries = 1`` and a backoff. Settled
    as if an hour from now, so A stays not due however long B's turn takes on a loaded
    machine; ``come_due`` ends the wait."""
    inbound = agent.inbound()
    try:
        settled = settle_leftover_claims(
            session_id=agent.session_id,
            claims=leftover_claims(agent.paths.outbound_db, agent.run_id),
            inbound=inbound,
            ledger=RunLedger(central),
            max_tries=5,
            now=int(time.time() * 1000) + 3_600_000,
        )
    finally:
        inbound.close()
    assert settled.rescheduled, "the dead run's claim was not settled"


def come_due(agent: AgentSession, message_id: str) -> None:
    """A's backoff has passed (the test moves the row's due time instead of sleeping)."""
    inbound = agent.inbound()
    try:
        row = inbound.get_message(message_id)
        assert row is not None and row.tries == 1
        inbound.reschedule(message_id, tries=row.tries, process_after_ms=int(time.time() * 1000))
    finally:
        inbound.close()


def capture(seen: list[str], answer: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def reply(body: dict[str, Any]) -> dict[str, Any]:
        seen.append(json.dumps(body["messages"]))
        return text(f'<message to="main">{answer}</message>')

    return reply


def held_until(event: threading.Event) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def reply(_body: dict[str, Any]) -> dict[str, Any]:
        event.wait(30)
        return text('<message to="main">too late</message>')

    return reply


def answered_by(agent: AgentSession) -> dict[str, list[str]]:
    """The text of each SendText row → the inbound rows it records answering."""
    reader = agent.outbound()
    try:
        found: dict[str, list[str]] = {}
        for row in outbound_rows(agent):
            content = json.loads(row.content)
            if content.get("type") == "text":
                found[content["text"]] = reader.answered_by(row.id)
        return found
    finally:
        reader.close()


@pytest.mark.parametrize("point", POINTS)
def test_a_kill_at_any_point_of_a_turn_answers_each_message_once(
    point: str, proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession, central: CentralStore
) -> None:
    write_config(agent, proxy.socket, model=MODEL)
    release = threading.Event()
    if point == "during_model_call":
        fake_api.reply(held_until(release))
    elif point == "after_send":
        fake_api.reply(tool_use("send_message", {"text": "working on A"}, "toolu_ack"))
    elif point == "before_batch_ack":
        fake_api.reply(text('<message to="main">answer A, lost</message>'))
    env = {} if point == "during_model_call" else {"NANOCLAW_TEST_CRASH": point}
    runner = start_runner(agent, log_name="run1.log", env=env)
    a = send_chat(agent, "question A")
    if point == "during_model_call":
        fake_api.wait_for_requests(1)
        runner.kill()
    assert runner.process.wait(30) == -signal.SIGKILL, runner.log()
    release.set()
    assert ack_status(agent, a) == "processing"
    sent_for_a = ["working on A"] if point == "after_send" else []
    assert texts(agent) == sent_for_a  # a final answer commits with its ack, or not at all

    settle_now(agent, central)
    agent.new_run(central)
    fake_api.clear_replies()
    b_prompts: list[str] = []
    a_prompts: list[str] = []
    fake_api.reply(capture(b_prompts, "answer B"), capture(a_prompts, "answer A"))
    b = send_chat(agent, "question B")
    runner = start_runner(agent, log_name="run2.log")
    try:
        wait_until(lambda: ack_status(agent, b) == "completed", timeout_s=20.0, what="B's ack")
        # B was answered alone: the dead turn was rolled back, not merged into B's turn.
        (b_history,) = b_prompts
        assert "question B" in b_history
        assert "question A" not in b_history and "answer A" not in b_history
        assert "working on A" not in b_history
        assert ack_status(agent, a) is None  # not picked: it waits out its backoff

        come_due(agent, a)
        wait_until(
            lambda: ack_status(agent, a) == "completed",
            timeout_s=20.0,
            what="A's retried ack",
        )
    finally:
        assert runner.terminate() == 0, runner.log()

    # Each message answered once; what went out mid-turn for A is not repeated.
    assert texts(agent) == [*sent_for_a, "answer B", "answer A"]
    (a_history,) = a_prompts
    retry_prompt = json.dumps(json.loads(a_history)[-1])
    assert retry_prompt.count("question A") == 1
    if sent_for_a:
        assert "your previous attempt was interrupted" in retry_prompt
        assert "working on A" in retry_prompt
    else:
        assert "your previous attempt was interrupted" not in retry_prompt
    assert "answer B" not in retry_prompt  # B's reply is not passed off as A's
    # Every row records exactly the batch it answers.
    assert answered_by(agent) == {
        **{sent: [a] for sent in sent_for_a},
        "answer B": [b],
        "answer A": [a],
    }
