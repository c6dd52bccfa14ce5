"""``shown``: container-chosen text made safe to put in a log line or a notice."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nanoclaw_common.untrusted import shown, shown_text


def test_a_newline_cannot_forge_a_second_log_line() -> None:
    forged = "telegram:1\n2026-12-03 12:00:00.000 INFO    delivery [delivery] delivered"
    assert "\n" not in shown(forged, 500)
    assert shown("a\nb\r\x1b[2Jc") == "a\\x0ab\\x0d\\x1b[2Jc"


def test_bidi_and_separators_are_escaped() -> None:
    assert shown("abc\u202edef\u2028") == "abc\\u202edef\\u2028"


def test_long_values_are_cut_with_their_length() -> None:
    value = "x" * 300_000
    out = shown(value, 100)
    assert out.startswith("x" * 100)
    assert out.endswith("…(cut: 300000 chars)")
    assert len(out) < 130
    assert len(shown_text(value)) < 530


def test_short_safe_text_is_unchanged() -> None:
    assert shown("telegram:-100123") == "telegram:-100123"
    assert shown(None) == "None"
    assert shown(42) == "42"


@given(st.text(max_size=400), st.integers(min_value=1, max_value=300))
def test_output_is_one_bounded_line(value: str, limit: int) -> None:
    out = shown(value, limit)
    assert "\n" not in out and "\r" not in out
    assert all(not (0 <= ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F) for c in out)
    assert len(out) <= limit + len("…(cut: 400 chars)") + 3
