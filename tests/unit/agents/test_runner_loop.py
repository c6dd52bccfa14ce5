"""The poll loop and the turn, in process, one step at a time, with the scripted model."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import pytest

from agent_runner import shed
from agent_runner.model import Usage
from agent_runner.runner import select_batch
from nanoclaw_common import messages
from nanoclaw_common.store import NewInbound

from .conftest import NOW, Harness, Session, call, say

Make = Callable[..., Harness]
OK = say('<message to="main">ok</message>')


def prompt_of(harness: Harness, call_index: int = 0) -> str:
    return json.dumps(harness.provider.requests[call_index].messages[-1])


def test_a_batch_is_claimed_answered_and_acked(session: Session, make_runner: Make) -> None:
    first = session.chat("hello")
    harness = make_runner(say('<message to="main">hi back</message>'))
    assert harness.step() is True
    assert session.texts() == ["hi back"]
    assert session.ack(first) == "completed"
    assert session.outbound.acks()[0].run_id == "run-1"
    assert harness.step() is False  # nothing left
    assert session.outbound.container_state().turns == 1  # type: ignore[union-attr]


def test_accumulate_gate_and_context_rows(session: Session, make_runner: Make) -> None:
    context = session.chat("just chatting", trigger=False)
    harness = make_runner(OK)
    assert harness.step() is False
    assert session.ack(context) is None
    mention = session.chat("@bot what do you think?")
    assert harness.step() is True
    prompt = prompt_of(harness)
    assert "just chatting" in prompt and "what do you think?" in prompt
    assert prompt.index("just chatting") < prompt.index("what do you think?")
    assert session.ack(context) == session.ack(mention) == "completed"


def test_newest_rows_first_then_the_older_ones(session: Session, make_runner: Make) -> None:
    ids = [session.chat(f"message {n}") for n in range(5)]
    harness = make_runner(OK, OK, max_messages_per_prompt=3)
    assert harness.step()
    first = prompt_of(harness, 0)
    assert [f"message {n}" in first for n in range(5)] == [False, False, True, True, True]
    assert first.index("message 2") < first.index("message 4")
    assert harness.step()
    second = prompt_of(harness, 1)
    assert "message 0" in second and "message 1" in second and "message 2" not in second
    assert {session.ack(i) for i in ids} == {"completed"}


def test_a_trigger_row_behind_newer_context_is_not_stranded(
    session: Session, make_runner: Make
) -> None:
    trigger = session.chat("please answer")
    later = [session.chat(f"noise {n}", trigger=False) for n in range(3)]
    harness = make_runner(OK, max_messages_per_prompt=2)
    assert harness.step()
    assert "please answer" in prompt_of(harness) and "noise" not in prompt_of(harness)
    assert session.ack(trigger) == "completed"
    assert [session.ack(i) for i in later] == [None, None, None]  # context for the next one


def test_select_batch_rules(session: Session) -> None:
    ids = [session.chat("x", trigger=n == 1) for n in range(4)]
    rows = session.inbound.pending_messages(limit=10, first_poll=True)
    assert [r.id for r in select_batch(rows, 2)] == [ids[0], ids[1]]
    assert [r.id for r in select_batch(rows, 10)] == ids
    assert select_batch(rows[2:], 10) == []


def test_on_wake_rows_only_on_the_first_poll(session: Session, make_runner: Make) -> None:
    note = session.chat("container restarted", on_wake=True)
    harness = make_runner(OK)
    assert harness.step()
    assert "container restarted" in prompt_of(harness) and session.ack(note) == "completed"
    late = session.chat("packages installed", on_wake=True)
    assert harness.step() is False
    assert session.ack(late) is None


def test_due_times_and_the_idle_timeout(session: Session, make_runner: Make) -> None:
    later = NOW + 10 * 60_000
    task = "task-1"
    session.inbound.insert_message(
        NewInbound(
            id=task,
            content=messages.TaskContent(prompt="remind me"),
            timestamp_ms=NOW,
            process_after_ms=later,
        )
    )
    harness = make_runner(OK)
    assert harness.step(now=later - 1) is False
    assert harness.runner.idle_timeout_s(now=later - 500) == 0.5
    assert harness.runner.idle_timeout_s(now=later - 60_000) == 2.0
    assert harness.step(now=later) is True
    assert "<task" in prompt_of(harness) and session.ack(task) == "completed"


def test_unawaited_question_answers_are_acked_not_prompted(
    session: Session, make_runner: Make
) -> None:
    session.inbound.insert_message(
        NewInbound(
            id="late-answer",
            content=messages.QuestionResponse(question_id="q-1", selected_option="a", user_id="u"),
            timestamp_ms=NOW,
        )
    )
    harness = make_runner(OK)
    assert harness.step() is False
    assert session.ack("late-answer") == "completed"
    assert harness.provider.calls == 0


def test_clear_archives_and_starts_afresh(session: Session, make_runner: Make) -> None:
    harness = make_runner(say('<message to="main">one</message>'), OK, OK)
    session.chat("remember the milk")
    harness.step()
    old = session.chat("old stuff")
    clear = session.chat("/clear")
    after = session.chat("hello again")
    harness.step()
    assert session.texts()[1:] == ["Session cleared.", "ok"]
    assert session.ack(old) == session.ack(clear) == session.ack(after) == "completed"
    # The fresh conversation holds the batch's other rows, those before the /clear too: a
    # message is never acked unanswered.
    messages_sent = harness.provider.requests[1].messages
    assert len(messages_sent) == 1
    prompt = json.dumps(messages_sent)
    assert "/clear" not in prompt
    assert prompt.index("old stuff") < prompt.index("hello again")
    (archive,) = (session.paths.workspace / "conversations").iterdir()
    assert "remember the milk" in archive.read_text()
    assert "old stuff" not in archive.read_text()
    session.chat("/clearance sale")  # not /clear
    harness.step()
    assert "/clearance sale" in json.dumps(harness.provider.requests[2].messages)


def test_commands_are_normalized_like_the_router_gate(session: Session, make_runner: Make) -> None:
    harness = make_runner(OK, say("Title: T\nA summary."))
    session.chat("hello")
    harness.step()
    compact = session.chat("/Compact@NanoBot now")
    harness.step()
    assert harness.runner.conversation.state.compactions == 1
    clear = session.chat("  /CLEAR@nanobot ")
    harness.step()
    assert harness.runner.conversation.messages == []
    assert session.texts() == ["ok", "Conversation compacted.", "Session cleared."]
    assert session.ack(compact) == session.ack(clear) == "completed"
    assert harness.provider.calls == 2  # the answer and the summary: no prompt for commands


def test_only_a_persons_message_can_clear_or_compact(session: Session, make_runner: Make) -> None:
    harness = make_runner(OK, fallback=OK)
    session.chat("remember: the code is 42")
    harness.step()
    peer = messages.ChatContent(text="/clear", sender_id="agent:ag-helper", sender_name="Helper")
    from_agent = session.chat("/clear", channel="agent", chat="ag-helper", content=peer)
    note = session.chat("/compact", content=messages.system_note("/compact"))
    session.inbound.insert_message(
        NewInbound(id="task-clear", content=messages.TaskContent(prompt="/clear"), timestamp_ms=NOW)
    )
    session.inbound.insert_message(
        NewInbound(
            id="hook-clear",
            content=messages.WebhookContent(source="ci", event="/clear", payload="/clear"),
            timestamp_ms=NOW,
        )
    )
    harness.step()
    # Nothing was cleared or compacted: they all reached the model as ordinary input.
    assert "the code is 42" in json.dumps(harness.runner.conversation.messages)
    assert harness.runner.conversation.state.compactions == 0
    prompt = prompt_of(harness, 1)
    assert prompt.count("/clear") >= 3 and "/compact" in prompt
    assert "Session cleared." not in session.texts()
    assert {session.ack(i) for i in (from_agent, note, "task-clear", "hook-clear")} == {"completed"}


def test_compact_command(session: Session, make_runner: Make) -> None:
    harness = make_runner(OK, say("Title: Shopping\nWe talked about milk."))
    session.chat("buy milk")
    harness.step()
    command = session.chat("/compact")
    harness.step()
    assert session.texts() == ["ok", "Conversation compacted."]
    assert session.ack(command) == "completed"
    assert harness.provider.requests[1].tool_choice == {"type": "none"}
    state = harness.runner.conversation
    assert state.state.compactions == 1
    assert "We talked about milk." in json.dumps(state.messages)
    assert (session.paths.workspace / "conversations").is_dir()


def test_compaction_at_the_cost_cap_not_near_a_1m_window(
    session: Session, make_runner: Make
) -> None:
    """claude-sonnet-5 has a 1M window; compaction still comes at compact_at_tokens (the
    estimate after a call that read 170k tokens is above the default 165k)."""
    big = Usage(input_tokens=20_000, cache_read_input_tokens=150_000)
    summary = say("Title: Big\nA long talk.")
    harness = make_runner(say('<message to="main">ok</message>', usage=big), summary, OK)
    session.chat("first")
    harness.step()
    session.chat("second")
    harness.step()
    assert harness.provider.requests[1].tool_choice == {"type": "none"}  # the summary call
    assert harness.runner.conversation.state.compactions == 1
    assert session.texts() == ["ok", "ok"]
    # With a higher cap the same conversation is not compacted.
    roomy = make_runner(
        say('<message to="main">ok</message>', usage=big), OK, compact_at_tokens=500_000
    )
    roomy.runner.conversation.clear()
    session.chat("third")
    roomy.step()
    session.chat("fourth")
    roomy.step()
    assert [r.tool_choice for r in roomy.provider.requests] == [None, None]
    assert roomy.runner.conversation.state.compactions == 0


def test_unwrapped_output_gets_exactly_one_nudge(session: Session, make_runner: Make) -> None:
    harness = make_runner(say("Hello, plain text"), say("still plain"), OK)
    message_id = session.chat("hi")
    harness.step()
    assert harness.provider.calls == 2  # the answer, one nudge, and no more
    assert "Your response was not delivered" in prompt_of(harness, 1)
    assert "Your destinations: helper, main, team." in prompt_of(harness, 1)
    assert session.texts() == []
    assert session.ack(message_id) == "completed"


def test_no_nudge_when_a_tool_already_delivered(session: Session, make_runner: Make) -> None:
    harness = make_runner(call("send_message", text="sent by tool"), say("done, no wrapping"))
    session.chat("hi")
    harness.step()
    assert harness.provider.calls == 2 and session.texts() == ["sent by tool"]


def test_unknown_destination_is_refused_with_a_note(session: Session, make_runner: Make) -> None:
    harness = make_runner(
        say('<message to="bob">for bob</message><message to="main">for main</message>'),
        say('<message to="main">sorry, bob is not here</message>'),
    )
    session.chat("tell bob hi")
    harness.step()
    assert session.texts() == ["for main", "sorry, bob is not here"]
    note = prompt_of(harness, 1)
    assert (
        'unknown destination \\"bob\\"' in note and "Your destinations: helper, main, team" in note
    )


def test_blocks_are_threaded_per_destination(session: Session, make_runner: Make) -> None:
    slack = session.chat("from slack", channel="slack", chat="C42", thread_id="th-5")
    session.outbound.complete([slack], "run-0")
    first = session.chat("fan out please")
    harness = make_runner(
        say('<message to="team">to team</message><message to="helper">to helper</message>')
    )
    harness.step()
    team, helper = session.rows()
    assert (team.channel_type, team.platform_id, team.thread_id) == ("slack", "C42", "th-5")
    # The Slack message was answered by an earlier turn: this reply answers the batch.
    assert team.in_reply_to == first
    assert (helper.channel_type, helper.platform_id, helper.thread_id) == (
        "agent",
        "ag-helper",
        None,
    )
    assert helper.in_reply_to == first


def test_model_error_tells_the_user_and_fails_the_ack(session: Session, make_runner: Make) -> None:
    harness = make_runner(say("", error="The model is overloaded."), OK)
    bad = session.chat("one", thread_id="t-7")
    harness.step()
    (row,) = session.rows()
    assert messages.decode_outbound_content(row.content) == messages.SendText(
        text="Error: The model is overloaded."
    )
    assert (row.channel_type, row.platform_id, row.thread_id, row.in_reply_to) == (
        "cli",
        "chat-1",
        "t-7",
        None,
    )
    assert session.ack(bad) == "failed"
    good = session.chat("two")
    harness.step()
    assert session.ack(good) == "completed" and session.texts()[-1] == "ok"


def test_a_model_out_of_reach_gives_the_claims_back_without_a_notice(
    session: Session, make_runner: Make
) -> None:
    """The model stayed out of reach past the run's wait (the proxy restarting, the API
    overloaded): no error notice, no ack. The claim stays ``processing`` for a run that is
    over, and the run stops: the host settles it as a dead run's (tries + 1, backoff)."""
    harness = make_runner(say("", unavailable="the NanoClaw proxy is not answering"), OK)
    message_id = session.chat("are you there?")
    assert harness.step() is True
    assert session.rows() == []  # nothing told to the user
    assert session.ack(message_id) == "processing"
    assert session.outbound.acks()[0].run_id == "run-1"
    assert harness.runner.gave_back and harness.stop.is_set()
    assert harness.runner.failures == 0


def test_turn_ceiling(session: Session, make_runner: Make) -> None:
    harness = make_runner(fallback=call("bash", command="true"), max_turns_per_batch=3)
    message_id = session.chat("loop forever")
    harness.step()
    assert harness.provider.calls == 3
    assert session.texts() == [
        "Error: I stopped after 3 steps without finishing. Ask again to continue, or narrow "
        "the request."
    ]
    assert session.ack(message_id) == "completed"
    assert session.outbound.container_state().turns == 3  # type: ignore[union-attr]


def test_messages_arriving_mid_turn_join_it(session: Session, make_runner: Make) -> None:
    harness = make_runner(
        call("bash", command="true"),
        say('<message to="main">both handled</message>', expect="second message"),
    )
    arrived: list[str] = []
    # The first model call "takes a while"; meanwhile a message arrives.
    harness.provider.script.turns[0] = type(harness.provider.script.turns[0])(
        content=harness.provider.script.turns[0].content, delay_ms=5
    )
    harness.provider.wait = lambda _s: arrived.append(session.chat("second message"))
    first = session.chat("first message")
    harness.step()
    assert session.texts() == ["both handled"]
    last = harness.provider.requests[1].messages[-1]["content"]
    assert last[0]["type"] == "tool_result" and "second message" in last[1]["text"]
    assert session.ack(first) == session.ack(arrived[0]) == "completed"
    assert harness.step() is False


def test_task_scripts_decide_whether_to_wake(session: Session, make_runner: Make) -> None:
    for task_id, script in (
        ("task-skip", "echo '{\"wakeAgent\": false}'"),
        ("task-wake", 'echo noise; echo \'{"wakeAgent": true, "data": {"open": 3}}\''),
        ("task-broken", "exit 1"),
    ):
        session.inbound.insert_message(
            NewInbound(
                id=task_id,
                content=messages.TaskContent(prompt=f"run {task_id}", script=script),
                timestamp_ms=NOW,
            )
        )
    harness = make_runner(OK)
    harness.step()
    prompt = json.loads(prompt_of(harness))["content"][0]["text"]
    assert "run task-wake" in prompt and "run task-skip" not in prompt
    assert 'Script output:\n{\n  "open": 3\n}\n\nInstructions:\nrun task-wake' in prompt
    assert {session.ack(t) for t in ("task-skip", "task-wake", "task-broken")} == {"completed"}


def test_the_conversation_survives_a_new_run(session: Session, make_runner: Make) -> None:
    first = make_runner(say('<message to="main">noted: blue</message>'))
    session.chat("my favourite colour is blue")
    first.step()
    first.runner.teardown()
    session.outbound.start_run("run-2")
    second = make_runner(OK)
    session.chat("what is my favourite colour?")
    second.step()
    history = json.dumps(second.provider.requests[0].messages)
    assert "my favourite colour is blue" in history and "noted: blue" in history


def test_memory_goes_into_the_system_prompt_only_when_safe(
    session: Session, make_runner: Make
) -> None:
    workspace = session.paths.workspace
    memory = workspace / "AGENT.md"
    harness = make_runner(OK, OK, OK)
    memory.write_text("Alice likes tea.")
    session.chat("one")
    harness.step()
    assert "Alice likes tea." in harness.provider.requests[0].system[0]["text"]
    memory.unlink()
    secret = workspace.parent / "secret.txt"
    secret.write_text("outside secret")
    memory.symlink_to(secret)
    session.chat("two")
    harness.step()
    assert "outside secret" not in harness.provider.requests[1].system[0]["text"]
    memory.unlink()
    os.mkfifo(memory)  # would block a plain read forever
    session.chat("three")
    harness.step()
    assert "Your memory" not in harness.provider.requests[2].system[0]["text"]


def test_a_question_is_for_the_person_whose_message_triggered_the_turn(
    session: Session, make_runner: Make
) -> None:
    bob = messages.ChatContent(text="bob chatting", sender_id="cli:bob", sender_name="Bob")
    context = session.chat("bob chatting", trigger=False, content=bob)
    mention = session.chat("@bot ask me which drink")
    harness = make_runner(
        call("ask_user_question", title="Drink", question="Which?", options=["Tea", "Coffee"]),
        OK,
    )

    def host_answers(_timeout_s: float) -> bool:
        (question,) = [c for c in session.contents() if isinstance(c, messages.AskQuestion)]
        session.inbound.insert_message(
            NewInbound(
                id=f"qr-{question.question_id}",
                content=messages.QuestionResponse(
                    question_id=question.question_id, selected_option="Tea", user_id="cli:alice"
                ),
                timestamp_ms=NOW,
                trigger=False,
            )
        )
        return True

    harness.runner.ctx.wait_for_inbound = host_answers
    assert harness.step()
    asked = session.rows()[0]
    assert isinstance(messages.decode_outbound_content(asked.content), messages.AskQuestion)
    # Bob's context row is the batch's oldest; the question is Alice's (delivery makes her
    # the only one whose click counts).
    assert asked.in_reply_to == mention != context
    assert session.ack(mention) == session.ack(context) == "completed"


def test_fifos_planted_where_the_runner_writes_do_not_hang_it(
    session: Session, make_runner: Make
) -> None:
    """agent/ is writable by the agent's own commands: a FIFO at the conversation's temporary
    name, or at the heartbeat, would block a plain open for writing forever."""
    harness = make_runner(OK)
    state = session.paths.conversation_file
    os.mkfifo(state.with_name(state.name + ".tmp"))
    heartbeat = session.paths.session.heartbeat
    os.mkfifo(heartbeat)
    message_id = session.chat("hello")
    assert harness.step()
    assert session.ack(message_id) == "completed"
    assert "hello" in state.read_text()
    with pytest.raises(OSError):  # no reader: refused at once, and the Heartbeat retries
        shed.touch_heartbeat(heartbeat)
