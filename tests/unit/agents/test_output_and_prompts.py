"""Output parsing, the system-prompt addendum, the nudge, the conversation file and the
compaction helpers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from agent_runner import prompts
from agent_runner.compaction import (
    CONTEXT_WINDOWS,
    DEFAULT_CONTEXT_WINDOW,
    archive_transcript,
    compact_threshold,
    context_window,
    slugify,
    split_summary,
)
from agent_runner.conversation import INTERRUPTED, Conversation, with_user
from agent_runner.output import Block, parse_output, split_text
from nanoclaw_common.store.rows import DestinationEntry

from .conftest import NOW

MAIN = DestinationEntry("main", None, "channel", "cli", "c1", None)
TEAM = DestinationEntry("team", "The Team", "channel", "slack", "C1", None)
BOT = DestinationEntry("bot", "bot", "agent", None, None, "ag-2")


def test_parse_output_blocks_internal_and_scratchpad() -> None:
    parsed = parse_output(
        'thinking aloud <internal>secret\nplan</internal>\n<message to="main">\n  hi  \n'
        "</message> tail <message to=\"team\" >two\nlines</message><message to='x'>no</message>"
    )
    assert parsed.blocks == [Block("main", "hi"), Block("team", "two\nlines")]
    assert parsed.scratchpad == "thinking aloud \n tail <message to='x'>no</message>"
    assert parse_output("<internal>only this</internal>").scratchpad == ""
    assert parse_output('<message to="main"></message>').blocks == [Block("main", "")]


def test_split_text_prefers_paragraphs() -> None:
    text = "a" * 6 + "\n\n" + "b" * 6 + "\n" + "c" * 20
    assert split_text(text, 10) == ["aaaaaa", "bbbbbb", "cccccccccc", "cccccccccc"]
    assert split_text("short", 10) == ["short"]


def test_destinations_section_wording() -> None:
    assert prompts.destinations_section([]) == (
        "## Sending messages\n\nYou currently have no configured destinations. You cannot send "
        "messages until an admin wires one up."
    )
    one = prompts.destinations_section([TEAM])
    assert one.startswith("## Sending messages\n\nYour destination is `team` (The Team).\n\n")
    many = prompts.destinations_section([BOT, MAIN, TEAM])
    assert "following destinations:\n\n- `bot`\n- `main`\n- `team` (The Team)\n\nWrap" in many
    assert '<message to="name">' in many and "`send_message`" in many
    addendum = prompts.system_addendum("Nano", [MAIN])
    assert addendum.startswith("# You are Nano\n\nYour name is **Nano**.")
    assert prompts.system_addendum("", [MAIN]).startswith("## Sending messages")


def test_nudge_and_unknown_destination_note() -> None:
    assert prompts.nudge([MAIN, TEAM]) == (
        "<system>Your response was not delivered — it was not wrapped in "
        '<message to="name">...</message> blocks. All output must be wrapped: use '
        '<message to="name"> for content to send, or <internal> for scratchpad. Your '
        "destinations: main, team. Please re-send your response with the correct wrapping."
        "</system>"
    )
    note = prompts.unknown_destinations_note(["bob"], [MAIN])
    assert 'unknown destination "bob"' in note and "Your destinations: main." in note
    assert "Available destinations: `main`, `team`." in prompts.compaction_instructions(
        [MAIN, TEAM]
    )


def test_with_user_answers_interrupted_tool_calls_and_merges() -> None:
    history: list[dict[str, Any]] = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "let me"},
                {"type": "tool_use", "id": "t1", "name": "bash", "input": {}},
                {"type": "tool_use", "id": "t2", "name": "bash", "input": {}},
            ],
        },
    ]
    answered = {"type": "tool_result", "tool_use_id": "t2", "content": "ok"}
    result = with_user(history, [answered, {"type": "text", "text": "next"}])
    assert result[-1] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": INTERRUPTED, "is_error": True},
            answered,
            {"type": "text", "text": "next"},
        ],
    }
    assert len(history) == 2  # the input is untouched
    merged = with_user(result, [{"type": "text", "text": "more"}])
    assert len(merged) == 3 and merged[-1]["content"][-1]["text"] == "more"
    fresh = with_user([{"role": "user", "content": "plain"}], [{"type": "text", "text": "x"}])
    assert fresh == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "plain"}, {"type": "text", "text": "x"}],
        }
    ]


def test_conversation_round_trip_and_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "conversation.json"
    conversation = Conversation.load(path)
    conversation.add_user_text("x" * 400)
    assert conversation.estimated_tokens() > 100
    conversation.add_assistant([{"type": "text", "text": "ok"}], context_tokens=1234)
    assert conversation.estimated_tokens() == 1234
    again = Conversation.load(path)
    assert again.messages == conversation.messages and again.state.context_tokens == 1234
    path.write_text("{broken")
    recovered = Conversation.load(path)
    assert recovered.messages == []
    assert (tmp_path / "state" / "conversation.json.broken").read_text() == "{broken"


def test_archive_transcript_format(tmp_path: Path) -> None:
    history: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": "hello " + "y" * 2100}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "hi"},
                {"type": "tool_use", "id": "t", "name": "bash", "input": {}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "x"}]},
    ]
    zone = ZoneInfo("UTC")
    path = archive_transcript(
        history, tmp_path, title="Weekly Plans!", assistant_name="Nano", now_ms=NOW, zone=zone
    )
    assert path == tmp_path / "2026-01-15-weekly-plans.md"
    text = path.read_text()
    assert text.startswith(
        "# Weekly Plans!\n\nArchived: Jan 15, 2:01 PM\n\n---\n\n**User**: hello "
    )
    assert ("y" * 1994 + "...\n\n**Nano**: hi\n[tool bash]\n") in text
    second = archive_transcript(
        history, tmp_path, title=None, assistant_name="", now_ms=NOW, zone=zone
    )
    assert second == tmp_path / "2026-01-15-conversation-1401.md"
    assert "**Assistant**: hi" in second.read_text()
    assert (
        archive_transcript([], tmp_path, title=None, assistant_name="", now_ms=NOW, zone=zone)
        is None
    )


def test_context_windows_cover_current_models_with_a_safe_fallback() -> None:
    assert context_window("claude-sonnet-5") == 1_000_000  # the default model
    assert context_window("claude-opus-4-6") == 1_000_000
    assert context_window("claude-haiku-4-5-20251001") == 200_000  # dated: looked up undated
    assert context_window("claude-sonnet-4-5-20250929") == 200_000
    # Unknown, newer or provider-prefixed ids: the smallest current window (compact early).
    for model in ("claude-sonnet-7", "claude-opus-4-1", "anthropic.claude-sonnet-5-v1:0", ""):
        assert context_window(model) == DEFAULT_CONTEXT_WINDOW == 200_000
    assert min(CONTEXT_WINDOWS.values()) == DEFAULT_CONTEXT_WINDOW
    # The window less its safety margin caps compact_at_tokens; the cost cap usually wins.
    assert compact_threshold("claude-sonnet-5", 2_000_000) == 825_000
    assert compact_threshold("claude-sonnet-5", 165_000) == 165_000
    assert compact_threshold("claude-sonnet-5", 400_000) == 400_000


def test_summary_title_slug_and_threshold() -> None:
    assert split_summary("Title: Trip to Rome\nWe planned.") == (
        "Trip to Rome",
        "Title: Trip to Rome\nWe planned.",
    )
    assert split_summary("no title") == (None, "no title")
    assert slugify("  Hello, World! -- 2026 ") == "hello-world-2026"
    assert compact_threshold("claude-sonnet-4-5", 165_000) == 165_000
    assert compact_threshold("claude-sonnet-4-5", 400_000) == 165_000  # a 200k window
    assert compact_threshold("claude-unknown-9", 400_000) == 165_000  # the fallback window
    assert compact_threshold("claude-sonnet-4-5", 10_000) == 10_000
    assert json.dumps(prompts.compacted_opening("S", mid_turn=True)).count("Continue") == 1
