"""The conversation's open turn: rolled back when the run died in it, kept when it committed,
closed with a note when it failed, and rolled back to the summary after a compaction."""

from __future__ import annotations

from pathlib import Path

from agent_runner.conversation import Conversation
from agent_runner.model import ApiMessage


def user(text: str) -> ApiMessage:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def assistant(text: str) -> ApiMessage:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def answered(tmp_path: Path) -> Conversation:
    """A conversation with one finished exchange."""
    conversation = Conversation(tmp_path / "conversation.json")
    conversation.begin_turn(["m1"])
    conversation.add_user_text("first")
    conversation.add_assistant(assistant("one")["content"], 10)
    conversation.end_turn()
    return conversation


def test_a_turn_the_run_died_in_is_rolled_back(tmp_path: Path) -> None:
    conversation = answered(tmp_path)
    conversation.begin_turn(["m2"])
    conversation.add_user_text("second")
    tool_use = {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {}}
    conversation.add_assistant([tool_use], 20)
    # The runner was killed here. The next run loads the file and reconciles.
    resumed = Conversation.load(tmp_path / "conversation.json")
    assert resumed.reconcile(settled={"m1"}) == ["m2"]
    assert resumed.messages == [user("first"), assistant("one")]
    assert resumed.state.open_turn is None
    # ... and that is what is on disk.
    assert Conversation.load(tmp_path / "conversation.json").messages == resumed.messages


def test_a_turn_whose_ack_committed_is_kept(tmp_path: Path) -> None:
    conversation = answered(tmp_path)
    conversation.begin_turn(["m2", "m3"])
    conversation.add_user_text("second")
    conversation.add_assistant(assistant("two")["content"], 20)
    # Killed after write_and_ack committed, before end_turn() was saved.
    resumed = Conversation.load(tmp_path / "conversation.json")
    assert resumed.reconcile(settled={"m1", "m2", "m3"}) == []
    assert [m["role"] for m in resumed.messages] == ["user", "assistant"] * 2
    assert resumed.state.open_turn is None


def test_follow_ups_join_the_open_turn(tmp_path: Path) -> None:
    conversation = answered(tmp_path)
    conversation.begin_turn(["m2"])
    conversation.add_user_text("second")
    conversation.extend_turn(["m3"])
    resumed = Conversation.load(tmp_path / "conversation.json")
    # m2 settled but m3 not: the turn did not commit (its rows ack together), roll back.
    assert resumed.reconcile(settled={"m1", "m2"}) == ["m2", "m3"]
    assert len(resumed.messages) == 2


def test_a_failed_turn_is_closed_so_the_next_one_starts_afresh(tmp_path: Path) -> None:
    conversation = answered(tmp_path)
    conversation.begin_turn(["m2"])
    conversation.add_user_text("second")
    conversation.close_turn("(This turn failed: overloaded)")
    assert conversation.messages[-1] == assistant("(This turn failed: overloaded)")
    conversation.begin_turn(["m3"])
    conversation.add_user_text("third")
    # The new prompt is a message of its own, not merged into the failed turn's.
    assert conversation.messages[-1] == user("third")
    assert conversation.abandon_turn() == ["m3"]
    assert conversation.messages[-1] == assistant("(This turn failed: overloaded)")


def test_a_dangling_history_from_an_older_version_is_closed_first(tmp_path: Path) -> None:
    conversation = Conversation(tmp_path / "conversation.json")
    tool_use = {"type": "tool_use", "id": "toolu_9", "name": "bash", "input": {}}
    conversation.state.messages = [user("old"), {"role": "assistant", "content": [tool_use]}]
    conversation.begin_turn(["m5"])
    conversation.add_user_text("new")
    roles = [m["role"] for m in conversation.messages]
    assert roles == ["user", "assistant", "user", "assistant", "user"]
    assert conversation.messages[2]["content"][0]["type"] == "tool_result"
    assert conversation.abandon_turn() == ["m5"]
    assert [m["role"] for m in conversation.messages] == ["user", "assistant", "user", "assistant"]


def test_a_compaction_inside_the_turn_rolls_back_to_the_summary(tmp_path: Path) -> None:
    conversation = answered(tmp_path)
    conversation.begin_turn(["m2"])
    conversation.add_user_text("second")
    summary = user("<conversation_summary>first, one</conversation_summary>")
    merged = user("<conversation_summary>first, one</conversation_summary>")
    merged["content"] = [*merged["content"], {"type": "text", "text": "second"}]
    conversation.replace([merged], summary=summary)
    resumed = Conversation.load(tmp_path / "conversation.json")
    assert resumed.reconcile(settled={"m1"}) == ["m2"]
    assert resumed.messages == [summary, assistant("(Noted: I continue from this summary.)")]
