"""The messaging tools: the exact row each writes, and their refusals."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from agent_runner.tools import Batch, ToolContext, execute
from nanoclaw_common import messages
from nanoclaw_common.store import NewInbound
from nanoclaw_common.store.rows import Routing

from .conftest import GROUP, NOW, Session


def run(ctx: ToolContext, name: str, /, **arguments: object) -> str:
    text, is_error = execute(ctx, name, arguments)
    assert not is_error, text
    return text


def refused(ctx: ToolContext, name: str, /, **arguments: object) -> str:
    text, is_error = execute(ctx, name, arguments)
    assert is_error, text
    assert text.startswith("Error: ")
    return text


def test_send_message_rows(session: Session, ctx: ToolContext) -> None:
    session.chat("hello")
    ctx.batch.in_reply_to = f"m2:{GROUP}"
    assert run(ctx, "send_message", text="hi") == "Message sent to (current conversation) (id: 3)"
    assert run(ctx, "send_message", text="to team", to="team") == "Message sent to team (id: 5)"
    assert run(ctx, "send_message", text="to main", to="main") == "Message sent to main (id: 7)"
    assert run(ctx, "send_message", text="hey", to="helper") == "Message sent to helper (id: 9)"
    rows = session.rows()
    assert [(r.channel_type, r.platform_id, r.thread_id) for r in rows] == [
        ("cli", "chat-1", "thread-9"),  # the session's routing, thread included
        ("slack", "C42", None),
        ("cli", "chat-1", "thread-9"),  # the session's own chat keeps the session thread
        ("agent", "ag-helper", None),
    ]
    assert {r.in_reply_to for r in rows} == {f"m2:{GROUP}"}
    assert {r.kind for r in rows} == {"chat"}
    assert session.contents()[0] == messages.SendText(text="hi")
    assert ctx.batch.delivered
    assert refused(ctx, "send_message", text="x", to="nobody") == (
        'Error: Unknown destination "nobody". Known: helper, main, team'
    )
    assert refused(ctx, "send_message", text="  ") == "Error: text is required"
    assert "invalid arguments for send_message" in refused(ctx, "send_message", txt="x")


def test_send_message_without_session_routing(session: Session, ctx: ToolContext) -> None:
    session.inbound.set_routing(messages_routing())
    assert "multiple destinations" in refused(ctx, "send_message", text="x")
    session.inbound.replace_destinations([])
    assert refused(ctx, "send_message", text="x") == "Error: No destinations configured."


def messages_routing() -> Routing:
    return Routing(None, None, None)


def test_send_file_copies_into_the_outbox(session: Session, ctx: ToolContext) -> None:
    (session.paths.workspace / "report.txt").write_text("numbers")
    text = run(ctx, "send_file", path="report.txt", text="here", filename="Report 1.txt")
    (row,) = session.rows()
    assert text == f"File sent to (current conversation) (id: {row.id}, filename: Report 1.txt)"
    assert session.contents() == [messages.SendText(text="here", files=["Report 1.txt"])]
    copied = session.paths.session.outbox / row.id / "Report 1.txt"
    assert copied.read_text() == "numbers"
    # Absolute container paths map onto the workspace.
    run(ctx, "send_file", path="/workspace/report.txt")


def test_send_file_refusals(session: Session, ctx: ToolContext, tmp_path: os.PathLike[str]) -> None:
    outside = session.paths.workspace.parent / "secret.txt"
    outside.write_text("no")
    (session.paths.workspace / "link.txt").symlink_to(outside)
    (session.paths.workspace / "folder").mkdir()
    (session.paths.workspace / "ok.txt").write_text("ok")
    assert "outside the workspace" in refused(ctx, "send_file", path=str(outside))
    assert "outside the workspace" in refused(ctx, "send_file", path="link.txt")
    assert "outside the workspace" in refused(ctx, "send_file", path="/session/runner.json")
    assert "not a regular file" in refused(ctx, "send_file", path="folder")
    assert "File not found" in refused(ctx, "send_file", path="missing.txt")
    assert "unsafe filename" in refused(ctx, "send_file", path="ok.txt", filename="../x")
    assert "unsafe filename" in refused(ctx, "send_file", path="ok.txt", filename=".hidden")
    assert session.rows() == []


def test_edit_and_reaction_resolve_platform_ids(session: Session, ctx: ToolContext) -> None:
    inbound_id = session.chat("hi", id="tg-77", channel="telegram", chat="555", thread_id="t1")
    assert inbound_id == f"tg-77:{GROUP}"
    assert run(ctx, "add_reaction", message_id=2, emoji=":thumbs_up:") == "Reaction queued for #2"
    sent = run(ctx, "send_message", text="draft")
    assert sent.endswith("(id: 5)")
    assert refused(ctx, "edit_message", message_id=5, text="final") == (
        "Error: Message #5 has not been delivered yet"
    )
    out_id = session.rows()[-1].id
    session.inbound.record_outbound(out_id, 5)
    session.inbound.finish_delivery(out_id, "delivered", platform_message_id="cli-msg-9")
    assert run(ctx, "edit_message", message_id=5, text="final") == "Message edit queued for #5"
    reaction, _draft, edit = session.rows()
    assert messages.decode_outbound_content(reaction.content) == messages.AddReaction(
        message_id="tg-77", emoji="thumbs_up"
    )
    assert (reaction.channel_type, reaction.platform_id, reaction.thread_id) == (
        "telegram",
        "555",
        "t1",
    )
    assert messages.decode_outbound_content(edit.content) == messages.EditMessage(
        message_id="cli-msg-9", text="final"
    )
    assert refused(ctx, "edit_message", message_id=99, text="x") == "Error: Message #99 not found"
    assert "required" in refused(ctx, "add_reaction", message_id=2, emoji="")


def test_send_card(session: Session, ctx: ToolContext) -> None:
    card = {"title": "Weather", "children": ["Sunny"], "actions": [{"label": "More", "url": "u"}]}
    text = run(ctx, "send_card", card=card, fallback_text="Sunny")
    (row,) = session.rows()
    assert text == f"Card sent (id: {row.id})"
    content = messages.decode_outbound_content(row.content)
    assert isinstance(content, messages.SendCard)
    assert content.card.title == "Weather" and content.fallback_text == "Sunny"
    assert "invalid card" in refused(ctx, "send_card", card={"bogus": 1})


def answer(session: Session, question_id: str, value: str) -> None:
    session.inbound.insert_message(
        NewInbound(
            id=f"ans-{question_id}",
            content=messages.QuestionResponse(
                question_id=question_id, selected_option=value, user_id="cli:alice"
            ),
            timestamp_ms=NOW,
            trigger=False,
        )
    )


def test_ask_user_question_writes_the_card_and_returns_the_answer(
    session: Session, make_ctx: Callable[..., ToolContext]
) -> None:
    waits: list[float] = []

    def wait(timeout_s: float) -> bool:
        # The host answers while the tool waits (no sleeping: the wait is this function).
        waits.append(timeout_s)
        (row,) = session.rows()
        content = messages.decode_outbound_content(row.content)
        assert isinstance(content, messages.AskQuestion)
        answer(session, content.question_id, "coffee-please")
        return True

    ctx = make_ctx(wait=wait)
    ctx.batch = Batch(in_reply_to="m1:ag-1", trigger_id="m3:ag-1")
    options = ["Tea", {"label": "Coffee", "value": "coffee-please", "selected_label": "☕"}]
    result = run(ctx, "ask_user_question", title="Drink", question="Which?", options=options)
    assert result == "coffee-please" and waits == [1.0]
    (row,) = session.rows()
    asked = messages.decode_outbound_content(row.content)
    assert isinstance(asked, messages.AskQuestion)
    assert row.id == asked.question_id and row.kind == "chat"
    assert (row.channel_type, row.platform_id) == ("cli", "chat-1")
    # The question is for whoever triggered the turn: delivery takes target_user_id from it.
    assert row.in_reply_to == "m3:ag-1"
    assert asked.options == [
        messages.QuestionOption(label="Tea", value="Tea", selected_label="Tea"),
        messages.QuestionOption(label="Coffee", value="coffee-please", selected_label="☕"),
    ]
    assert session.ack(f"ans-{asked.question_id}") == "completed"


def test_ask_user_question_times_out(
    session: Session, make_ctx: Callable[..., ToolContext]
) -> None:
    clock = [100.0]

    def wait(timeout_s: float) -> bool:
        clock[0] += timeout_s  # time passes, no answer comes
        return False

    ctx = make_ctx(wait=wait, monotonic=lambda: clock[0])
    text = refused(ctx, "ask_user_question", title="T", question="Q?", options=["a"], timeout_s=3)
    assert text == "Error: Question timed out after 3s"
    assert clock[0] == 103.0
    assert "required" in refused(ctx, "ask_user_question", title="T", question="Q", options=[])
    # A late answer to a question nobody waits for anymore is someone else's business.
    state = session.outbound.container_state()
    assert state is not None and state.current_tool is None


def test_tool_in_flight_is_recorded(session: Session, make_ctx: Callable[..., ToolContext]) -> None:
    seen = []

    def wait(timeout_s: float) -> bool:
        seen.append(session.outbound.container_state())
        (row,) = session.rows()
        content = messages.decode_outbound_content(row.content)
        assert isinstance(content, messages.AskQuestion)
        answer(session, content.question_id, "a")
        return True

    ctx = make_ctx(wait=wait)
    run(ctx, "ask_user_question", title="T", question="Q?", options=["a"], timeout_s=60)
    (state,) = seen
    assert state is not None
    assert state.current_tool == "ask_user_question"
    assert state.tool_declared_timeout_ms == 60_000
    assert state.tool_started_at_ms is not None


@pytest.mark.parametrize("name", ["nope", ""])
def test_unknown_tool(ctx: ToolContext, name: str) -> None:
    assert refused(ctx, name) == f"Error: unknown tool {name!r}"
