"""``@bot /command``: the bot's own leading mention is dropped before a command only."""

from __future__ import annotations

import pytest

from nanoclaw_common.channels.base import command_after_self_mention


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<@UBOT> /clear", "/clear"),
        ("  <@UBOT>\t /compact now", "/compact now"),
        ("<@ubot> /clear", "/clear"),  # Telegram usernames are case-insensitive
        ("<@UBOT> hello /clear", "<@UBOT> hello /clear"),  # not a command
        ("<@UBOT>/clear", "<@UBOT>/clear"),  # no gap: not a mention followed by a command
        ("<@UBOTX> /clear", "<@UBOTX> /clear"),  # someone else
        ("<@OTHER> /clear", "<@OTHER> /clear"),
        ("/clear", "/clear"),
        ("<@UBOT>", "<@UBOT>"),
        ("", ""),
    ],
)
def test_only_our_mention_before_a_command_is_dropped(text: str, expected: str) -> None:
    assert command_after_self_mention(text, "<@UBOT>") == expected


def test_an_unknown_identity_changes_nothing() -> None:
    assert command_after_self_mention(" /clear", "") == " /clear"
