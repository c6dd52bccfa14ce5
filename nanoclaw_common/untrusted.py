"""Showing text that a container (or any outside party) chose: in a log line, a note to an
agent, an owner notice, a CLI table.

A container writes every byte of ``outbound.db``: a chat id with a newline forges a second log
line, a terminal escape rewrites the operator's screen, a 300 KB id becomes a 300 KB DM. So any
such value passes through ``shown()`` before it is put into host-written text: control
characters (C0, DEL, C1, the Unicode line and paragraph separators, bidi overrides) become
visible escapes, and the result is capped.

This is for *display*. Stored values are kept as they are (they are ids and must still match);
only their rendering is made safe.
"""

from __future__ import annotations

import re
from typing import Final

#: A default cap for an id or a name shown inline.
ID_CHARS: Final = 120
#: A default cap for a reason, an error message or a quoted text.
TEXT_CHARS: Final = 500

# C0 controls (tab and newline too: a log line is one line), DEL, C1 controls, and the
# format characters that reorder or split what a person reads: line/paragraph separators,
# bidi embeddings/overrides/isolates, zero-width joiners and the BOM.
_UNSAFE: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(value: object, limit: int = ID_CHARS) -> str:
    """``value`` as one safe line of at most about ``limit`` characters: unsafe characters
    escaped (``\\n`` becomes ``\\x0a``), and anything longer cut, with the original length
    noted. ``None`` is shown as ``None``."""
    text = value if isinstance(value, str) else str(value)
    # Escape no more than can be shown: a 300 KB value costs no more than a short one.
    safe = _UNSAFE.sub(_escape, text[: limit + 1])
    if len(text) <= limit and len(safe) <= limit:
        return safe
    return f"{safe[:limit]}…(cut: {len(text)} chars)"


def shown_text(value: object) -> str:
    """``shown`` with the longer cap for reasons and quoted text."""
    return shown(value, TEXT_CHARS)


def escaped(value: object) -> str:
    """``value`` with unsafe characters escaped, not cut: for a log record's own line, which
    the logging setup caps as a whole."""
    text = value if isinstance(value, str) else str(value)
    return _UNSAFE.sub(_escape, text)


# What a terminal may receive from a reply: newlines and tabs stay, as a person wrote them.
_UNSAFE_ON_TERMINAL: Final = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff]"
)


def terminal_text(value: object) -> str:
    """Multi-line text for a terminal (``nanoclaw chat``): line breaks and tabs kept, every
    other control character (escape sequences above all) and the reordering format
    characters escaped. Not capped: the caller's frame or row limits apply."""
    text = value if isinstance(value, str) else str(value)
    return _UNSAFE_ON_TERMINAL.sub(_escape, text)
