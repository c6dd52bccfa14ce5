"""The agent runner end to end, as a host process against a session folder: the real
anthropic SDK inside it reaches the fake Messages API through the real credential proxy."""

from __future__ import annotations

import json
import time
from typing import Any

from agent_runner.app import EXIT_CONFIG
from agent_runner.conversation import INTERRUPTED
from nanoclaw_common import messages
from nanoclaw_common.store import CentralStore, NewInbound
from nanoclaw_common.store.rows import TokenUsage
from tests.central_verbs import add_token_usage, get_token_usage
from tests.fakes.anthropic_api import ApiError, FakeAnthropic, text, tool_use
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


def last_user_text(body: dict[str, Any]) -> str:
    return json.dumps(body["messages"][-1])


def container_state(agent: AgentSession) -> Any:
    reader = agent.outbound()
    try:
        return reader.container_state()
    finally:
        reader.close()


def test_a_turn_with_bash_and_send_message(
    proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession, central: CentralStore
) -> None:
    write_config(agent, proxy.socket, model=MODEL, assistant_name="Nano")

    def after_bash(body: dict[str, Any]) -> dict[str, Any]:
        assert "hello from bash" in last_user_text(body)
        return tool_use("send_message", {"text": "working on it"}, "toolu_2")

    fake_api.reply(
        tool_use("bash", {"command": "echo hello from bash > note.txt && cat note.txt"}, "toolu_1"),
        after_bash,
        text('<internal>all good</internal><message to="main">All done: hello from bash</message>'),
    )
    runner = start_runner(agent)
    try:
        message_id = send_chat(agent, "please <run> it")
        wait_until(
            lambda: ack_status(agent, message_id) == "completed",
            timeout_s=20.0,
            what="the ack",
        )
        assert texts(agent) == ["working on it", "All done: hello from bash"]
        assert (agent.workspace / "note.txt").read_text() == "hello from bash\n"
        # The runner took its token from agent/.proxy-token and removed the file.
        assert sorted(p.name for p in agent.paths.agent_dir.iterdir() if "token" in p.name) == []

        first, second, third = fake_api.wait_for_requests(3)
        # The proxy put the real key in; the runner only ever had its token.
        assert {r.headers["x-api-key"] for r in (first, second, third)} == {fake_api.api_key}
        prompt = first.body["messages"][0]["content"][0]["text"]
        assert prompt.startswith('<context timezone="UTC" />\n<message id="2" from="main"')
        assert 'sender="Alice"' in prompt and "please &lt;run&gt; it</message>" in prompt
        system = first.body["system"][0]
        assert system["cache_control"] == {"type": "ephemeral"}
        assert "# You are Nano" in system["text"] and "Your destination is `main`" in system["text"]
        tools = first.body["tools"]
        names = [t["name"] for t in tools]
        assert {"bash", "send_message", "ask_user_question", "web_search", "web_fetch"} <= set(
            names
        )
        assert tools[-1]["cache_control"] == {"type": "ephemeral"}
        result = third.body["messages"][-1]["content"][0]
        assert result["type"] == "tool_result" and result["tool_use_id"] == "toolu_2"

        rows = outbound_rows(agent)
        assert [r.seq % 2 for r in rows] == [1, 1]
        assert all(r.in_reply_to == message_id for r in rows)
        assert {(r.channel_type, r.platform_id) for r in rows} == {("cli", "chat-1")}
        state = container_state(agent)
        assert state.run_id == agent.run_id and state.turns == 3 and state.current_tool is None
        heartbeat = agent.paths.heartbeat.stat().st_mtime
        assert time.time() - heartbeat < 5
        day = time.strftime("%Y-%m-%d", time.gmtime())

        # Each call is metered as its response ends; the last one may trail the ack slightly.
        def three_calls() -> TokenUsage | None:
            usage = get_token_usage(central, agent.group_id, day)
            return usage if usage is not None and usage.requests == 3 else None

        usage = wait_until(
            three_calls,
            timeout_s=20.0,
            what="three metered calls",
        )
        assert usage.requests == 3
    finally:
        assert runner.terminate() == 0, runner.log()
    assert agent.token not in runner.log()


def test_ask_user_question_waits_for_the_answer(
    proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession
) -> None:
    write_config(agent, proxy.socket, model=MODEL)
    fake_api.reply(
        tool_use(
            "ask_user_question",
            {
                "title": "Drink",
                "question": "Tea or coffee?",
                "options": ["Tea", {"label": "Coffee", "value": "coffee-please"}],
            },
        ),
        lambda body: text(
            '<message to="main">You chose '
            + body["messages"][-1]["content"][0]["content"]
            + "</message>"
        ),
    )
    runner = start_runner(agent)
    try:
        # Bob's chatter rides along as context; Alice's message is the one that triggers.
        context = send_chat(agent, "I'm off", sender=("cli:bob", "Bob"), trigger=False)
        message_id = send_chat(agent, "what should I drink?")

        def question() -> Any:
            for row in outbound_rows(agent):
                content = messages.decode_outbound_content(row.content)
                if isinstance(content, messages.AskQuestion):
                    return content
            return None

        asked = wait_until(question, timeout_s=20.0, what="the question row")
        assert [o.value for o in asked.options] == ["Tea", "coffee-please"]
        # The card is Alice's to answer: delivery takes target_user_id from in_reply_to.
        (row,) = [r for r in outbound_rows(agent) if r.id == asked.question_id]
        assert row.in_reply_to == message_id != context
        assert asked.timeout_s == 300
        state = wait_until(
            lambda: (s := container_state(agent)) and s.current_tool == "ask_user_question" and s,
            timeout_s=20.0,
            what="the runner to be in ask_user_question",
        )
        assert state.tool_declared_timeout_ms == 300_000  # the host tolerates the wait
        store = agent.inbound()
        store.insert_message(
            NewInbound(
                id=f"answer-{asked.question_id}",
                content=messages.QuestionResponse(
                    question_id=asked.question_id,
                    selected_option="coffee-please",
                    user_id="cli:alice",
                ),
                timestamp_ms=int(time.time() * 1000),
                trigger=False,
            )
        )
        store.close()
        wait_until(
            lambda: ack_status(agent, message_id) == "completed",
            timeout_s=20.0,
            what="the ack",
        )
        assert texts(agent)[-1] == "You chose coffee-please"
        assert ack_status(agent, f"answer-{asked.question_id}") == "completed"
    finally:
        assert runner.terminate() == 0, runner.log()


def test_compaction_summarizes_and_archives_the_transcript(
    proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession
) -> None:
    write_config(agent, proxy.socket, model=MODEL)
    seen: dict[str, Any] = {}

    def summarize(body: dict[str, Any]) -> dict[str, Any]:
        seen["summary_request"] = body
        return text("Title: Greeting chat\nAlice said hello; I answered 'first answer'.")

    def answer(body: dict[str, Any]) -> dict[str, Any]:
        seen["after"] = body
        return text('<message to="main">second answer</message>')

    fake_api.reply(
        {**text('<message to="main">first answer</message>'), "usage": {"input_tokens": 900_000}},
        summarize,
        answer,
    )
    runner = start_runner(agent)
    try:
        first = send_chat(agent, "hello there")
        wait_until(
            lambda: ack_status(agent, first) == "completed",
            timeout_s=20.0,
            what=f"{first} acked completed",
        )
        second = send_chat(agent, "second question")
        wait_until(
            lambda: ack_status(agent, second) == "completed",
            timeout_s=20.0,
            what=f"{second} acked completed",
        )
        assert texts(agent) == ["first answer", "second answer"]
    finally:
        assert runner.terminate() == 0, runner.log()

    request = seen["summary_request"]
    assert request["tool_choice"] == {"type": "none"}
    assert "Start with one line `Title:" in last_user_text(request)
    assert "second question" not in json.dumps(request["messages"])  # kept verbatim instead
    after = seen["after"]["messages"]
    assert len(after) == 1  # the summary and the new prompt, nothing older
    opening = json.dumps(after[0])
    assert "<conversation_summary>" in opening and "Alice said hello" in opening
    assert "second question" in opening
    (archive,) = (agent.workspace / "conversations").glob("*-greeting-chat.md")
    body = archive.read_text()
    assert body.startswith("# Greeting chat\n\nArchived: ")
    assert "**User**: <context" in body and "**Assistant**: <message" in body
    state = json.loads((agent.paths.state_dir / "conversation.json").read_text())
    assert state["compactions"] == 1


def test_resume_after_the_runner_is_killed(
    proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession, central: CentralStore
) -> None:
    write_config(agent, proxy.socket, model=MODEL)
    fake_api.reply(text('<message to="main">one</message>'))
    runner = start_runner(agent, log_name="run1.log")
    first = send_chat(agent, "first message")
    wait_until(
        lambda: ack_status(agent, first) == "completed",
        timeout_s=20.0,
        what=f"{first} acked completed",
    )
    # Then a message whose tool call is still running when the container dies.
    fake_api.reply(tool_use("bash", {"command": "sleep 60"}, "toolu_sleep"))
    second = send_chat(agent, "second message")
    wait_until(
        lambda: (s := container_state(agent)) and s.current_tool == "bash",
        timeout_s=20.0,
        what="the runner to be in bash",
    )
    runner.kill()
    assert ack_status(agent, second) == "processing"

    fake_api.reply(text('<message to="main">two</message>'))
    agent.new_run(central)  # what wake() does: a new run id and token
    runner = start_runner(agent, log_name="run2.log")
    try:
        wait_until(
            lambda: ack_status(agent, second) == "completed",
            timeout_s=20.0,
            what="the retried ack",
        )
        assert texts(agent) == ["one", "two"]
    finally:
        assert runner.terminate() == 0, runner.log()
    body = fake_api.message_requests()[-1].body
    history = body["messages"]
    flat = json.dumps(history)
    # The conversation went on from agent/state: the first exchange is still there ...
    assert "first message" in flat and '<message to=\\"main\\">one</message>' in flat
    # ... and the turn the dead run was in is gone: the message is asked once, fresh, not
    # left as a dangling user turn (with an "interrupted" tool result) in front of its retry.
    assert flat.count("second message") == 1
    assert "toolu_sleep" not in flat and INTERRUPTED not in flat
    assert [m["role"] for m in history] == ["user", "assistant", "user"]
    assert ack_status(agent, second) == "completed"


def test_model_errors_reach_the_user_and_the_runner_goes_on(
    proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession, central: CentralStore
) -> None:
    write_config(agent, proxy.socket, model=MODEL)
    fake_api.reply(ApiError(400, "invalid_request_error", "something is off"))
    runner = start_runner(agent)
    try:
        first = send_chat(agent, "one")
        wait_until(
            lambda: ack_status(agent, first) == "failed",
            timeout_s=20.0,
            what="the failed ack",
        )
        assert texts(agent) == [
            "Error: The model API refused the request (400 invalid_request_error): something is off"
        ]
        # Over budget: the proxy's refusal is relayed the same way.
        central.update_container_config(agent.group_id, token_budget_daily=10)
        day = time.strftime("%Y-%m-%d", time.gmtime())
        add_token_usage(central, agent.group_id, day, 8, 4)
        second = send_chat(agent, "two")
        wait_until(
            lambda: ack_status(agent, second) == "failed",
            timeout_s=20.0,
            what=f"{second} acked failed",
        )
        assert "daily token budget" in texts(agent)[-1]
        central.update_container_config(agent.group_id, token_budget_daily=0)
        fake_api.reply(text('<message to="main">three</message>'))
        third = send_chat(agent, "three")
        wait_until(
            lambda: ack_status(agent, third) == "completed",
            timeout_s=20.0,
            what=f"{third} acked completed",
        )
        assert texts(agent)[-1] == "three"
    finally:
        assert runner.terminate() == 0, runner.log()


def test_heartbeat_beats_through_a_long_tool_call(
    proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession
) -> None:
    write_config(agent, proxy.socket, model=MODEL)
    fake_api.reply(
        tool_use("bash", {"command": "sleep 1.5"}),
        text('<message to="main">slept</message>'),
    )
    runner = start_runner(agent)
    try:
        message_id = send_chat(agent, "sleep a bit")
        wait_until(
            lambda: (s := container_state(agent)) and s.current_tool == "bash",
            timeout_s=20.0,
            what="the runner to be in bash",
        )
        during = agent.paths.heartbeat.stat().st_mtime_ns
        wait_until(
            lambda: (
                agent.paths.heartbeat.stat().st_mtime_ns > during
                and container_state(agent).current_tool == "bash"
            ),
            timeout_s=20.0,
            what="a heartbeat while the tool runs",
        )
        wait_until(
            lambda: ack_status(agent, message_id) == "completed",
            timeout_s=20.0,
            what=f"{message_id} acked completed",
        )
    finally:
        assert runner.terminate() == 0, runner.log()


def test_without_its_token_file_the_runner_refuses_to_start(
    proxy: Proxy, agent: AgentSession
) -> None:
    write_config(agent, proxy.socket, model=MODEL)
    runner = start_runner(agent, token_file=False)
    assert runner.process.wait(20) == EXIT_CONFIG
    assert "no proxy token (the host writes agent/.proxy-token before each start)" in runner.log()
