"""The prompt format: exact strings, as the agent sees them."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

from agent_runner.formatter import escape_xml, format_batch, format_time, resolve_zone
from nanoclaw_common import messages
from nanoclaw_common.store.rows import InboundRow

from .conftest import NOW

ROOT = Path("/session")


def row(
    content: messages.InboundContent | str,
    *,
    seq: int = 6,
    kind: str | None = None,
    channel: str | None = "discord",
    chat: str | None = "chan-1",
    at: int = NOW,
    process_after: int | None = None,
) -> InboundRow:
    if isinstance(content, str):
        raw, kind = content, kind or "chat"
    else:
        raw, kind = messages.encode_text(content), kind or messages.INBOUND_KIND[type(content)]
    return InboundRow(
        id=f"r{seq}", seq=seq, kind=kind, timestamp_ms=at, status="pending",
        process_after_ms=process_after, recurrence=None, series_id=None, tries=0, trigger=1,
        platform_id=chat, channel_type=channel, thread_id=None, content=raw,
        source_session_id=None, on_wake=0, created_at_ms=at,
    )  # fmt: skip


def lookup(channel_type: str, platform_id: str) -> str | None:
    return {("discord", "chan-1"): "discord-main", ("agent", "ag-2"): "helper"}.get(
        (channel_type, platform_id)
    )


def fmt(*rows: InboundRow, zone: str = "Europe/Berlin", **kwargs: object) -> str:
    return format_batch(rows, zone_name=zone, lookup=lookup, session_root=ROOT, **kwargs)  # type: ignore[arg-type]


def chat(text: str, **fields: object) -> messages.ChatContent:
    return messages.ChatContent(text=text, sender_id="discord:bob", **fields)  # type: ignore[arg-type]


def test_the_worked_example() -> None:
    message = row(
        chat(
            "see this & that",
            sender_name="Bob",
            reply_to=messages.Quote(sender="Alice", text="hi", id="4"),
            attachments=[
                messages.Attachment(name="photo.jpg", kind="image", local_path="inbox/m6/photo.jpg")
            ],
        )
    )
    task = row(
        messages.TaskContent(prompt="Summarise open PRs", script="echo"),
        seq=8,
        process_after=NOW - 6 * 3600_000,
    )
    assert fmt(message, task, script_outputs={"r8": {"open": 3}}) == (
        '<context timezone="Europe/Berlin" />\n'
        '<message id="6" from="discord-main" sender="Bob" time="Jan 15, 2026, 3:01 PM"'
        ' reply_to="4">\n'
        '  <quoted_message from="Alice">hi</quoted_message>\n'
        "see this &amp; that\n"
        "[image: photo.jpg — saved to /session/inbox/m6/photo.jpg]</message>\n"
        "\n"
        '<task from="discord-main" time="Jan 15, 2026, 9:01 AM">Script output:\n'
        "{\n"
        '  "open": 3\n'
        "}\n"
        "\n"
        "Instructions:\n"
        "Summarise open PRs</task>"
    )


def test_several_chats_are_wrapped_and_kinds_are_grouped_in_order() -> None:
    hook = row(messages.WebhookContent(source="github", event="push", payload={"a": 1}), seq=2)
    first = row(chat("one", sender_name="Bob"), seq=4)
    task = row(messages.TaskContent(prompt="do <it>"), seq=6)
    second = row(chat("two"), seq=8, channel="agent", chat="ag-2")
    prompt = fmt(hook, first, task, second, zone="UTC")
    assert prompt == (
        '<context timezone="UTC" />\n'
        "<messages>\n"
        '<message id="4" from="discord-main" sender="Bob" time="Jan 15, 2026, 2:01 PM">one'
        "</message>\n"
        '<message id="8" from="helper" sender="discord:bob" time="Jan 15, 2026, 2:01 PM">two'
        "</message>\n"
        "</messages>\n"
        "\n"
        '<task from="discord-main" time="Jan 15, 2026, 2:01 PM">Instructions:\ndo <it></task>\n'
        "\n"
        '<webhook from="discord-main" source="github" event="push">{\n'
        "  &quot;a&quot;: 1\n"
        "}</webhook>"
    )


def test_origin_attribute_variants() -> None:
    unknown = fmt(row(chat("x"), channel="telegram", chat="99"), zone="UTC")
    assert 'from="unknown:telegram:99"' in unknown
    assert ' from="' not in fmt(row(chat("x"), channel=None, chat=None), zone="UTC")
    half = fmt(row(chat("x"), channel="slack", chat=None), zone="UTC")
    assert 'from="unknown:slack:"' in half


def test_escaping_and_attachments() -> None:
    content = chat(
        'a "quoted" <b>',
        sender_name='Eve "<x>"',
        attachments=[
            messages.Attachment(name="doc.pdf", url="https://x.test/d?a=1&b=2"),
            messages.Attachment(name="voice.ogg", kind="voice"),
        ],
    )
    prompt = fmt(row(content), zone="UTC")
    assert 'sender="Eve &quot;&lt;x&gt;&quot;"' in prompt
    assert "a &quot;quoted&quot; &lt;b&gt;\n" in prompt
    assert "[file: doc.pdf (https://x.test/d?a=1&amp;b=2)]\n[voice: voice.ogg]</message>" in prompt
    assert escape_xml("&<>\"'") == "&amp;&lt;&gt;&quot;'"


def test_undecodable_content_is_shown_as_text_and_system_rows_are_left_out() -> None:
    broken = row("not json <at all>", seq=2)
    answer = row(
        messages.QuestionResponse(question_id="q1", selected_option="yes", user_id="u"), seq=4
    )
    prompt = fmt(broken, answer, zone="UTC")
    assert prompt == (
        '<context timezone="UTC" />\n<message id="2" from="discord-main" sender="unknown"'
        ' time="Jan 15, 2026, 2:01 PM">not json &lt;at all&gt;</message>'
    )
    assert fmt(zone="UTC") == '<context timezone="UTC" />\n'


def test_time_format_and_zone_fallback() -> None:
    assert format_time(NOW, ZoneInfo("America/New_York")) == "Jan 15, 2026, 9:01 AM"
    assert format_time(NOW - 14 * 3600_000, ZoneInfo("UTC")) == "Jan 15, 2026, 12:01 AM"
    assert format_time(NOW - 2 * 3600_000, ZoneInfo("UTC")) == "Jan 15, 2026, 12:01 PM"
    assert resolve_zone("Not/AZone")[0] == "UTC"
    assert fmt(zone="Not/AZone") == '<context timezone="UTC" />\n'
