"""What the router writes about values others chose (a stranger's name, a platform's chat
name, an agent's ``create_agent`` name, a platform message id) is safe to read: cards to an
owner carry one escaped, capped line per name and no Slack mention or link syntax; log
lines stay one line."""

from __future__ import annotations

import re

import msgspec
from loguru import logger

from nanoclaw_common.messages import AskQuestion
from tests.unit.router.conftest import Harness

HOSTILE = "Eve\n✅ Approved by admin\x1b[2J\u202e <!channel> <https://evil.example|Approve>"
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e<>]")


def last_card(harness: Harness) -> AskQuestion:
    harness.flush()
    card = harness.chat.of_kind("question")[-1].payload
    assert isinstance(card, AskQuestion)
    return card


def test_a_registration_card_shows_hostile_names_escaped(harness: Harness) -> None:
    # An agent created this group (create_agent): its name is container-chosen.
    harness.central.create_agent_group(HOSTILE + "x" * 200, "hostile-folder")
    harness.owner("chat:owner")
    event = harness.event("@bot hi", chat="newchat", mention=True, chat_name=HOSTILE)
    harness.send(event=msgspec.structs.replace(event, sender_name=HOSTILE))
    card = last_card(harness)
    assert not UNSAFE.search(card.question), card.question
    assert "Eve\\x0a✅ Approved" in card.question and "\\x1b[2J" in card.question
    assert "‹!channel›" in card.question and len(card.question) < 400
    for option in card.options:
        assert not UNSAFE.search(option.label) and len(option.label) <= 100
        assert option.selected_label is None or not UNSAFE.search(option.selected_label)


def test_a_sender_approval_card_shows_a_hostile_name_escaped(harness: Harness) -> None:
    group = harness.group("Main")
    harness.owner("chat:owner")
    harness.wire(harness.chat_row(policy="request_approval", name=HOSTILE), group)
    event = harness.event("hi", sender="chat:stranger")
    harness.send(event=msgspec.structs.replace(event, sender_name=HOSTILE))
    card = last_card(harness)
    assert card.title == "👤 New sender"
    assert not UNSAFE.search(card.question), card.question
    assert card.question.count("Eve\\x0a") == 2  # the sender and the chat


def test_router_log_lines_escape_platform_chosen_ids(harness: Harness) -> None:
    harness.group()
    harness.owner()
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), format="{message}", level="INFO")
    try:
        harness.send("@bot hi", chat="c\nforged", mention=True, message_id="m\n2026 INFO forged")
        harness.click("q\x1b[2J" + "x" * 190, 0, user="chat:u\nforged")
    finally:
        logger.remove(sink)
    assert lines
    for line in lines:
        assert "\n" not in line.rstrip("\n") and "\x1b" not in line, line
        assert len(line) < 1_000
    assert any("m\\x0a2026 INFO forged" in line for line in lines)
