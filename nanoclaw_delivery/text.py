"""Text helpers: splitting a long reply at the platform's limit, and the leak guard (block a
reply that contains a configured secret; redact secrets from reasons and notes).

Pure functions, no I/O: the engine calls them before any platform call.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# Split preference: a paragraph break, then a line break, then a space. A cut in the first
# half of the window would leave a tiny chunk followed by a full one; we still take it,
# because keeping a paragraph whole reads better than a fuller chunk.
_SEPARATORS = ("\n\n", "\n", " ")


def split_text(text: str, limit: int) -> list[str]:
    """Chunks of at most ``limit`` characters, cut at the last paragraph break within the
    limit, else the last line break, else the last space, else a hard cut. Whitespace at
    each cut is trimmed. Empty or blank text gives no chunks."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    chunks: list[str] = []
    rest = text.strip()
    while rest:
        if len(rest) <= limit:
            chunks.append(rest)
            break
        window = rest[: limit + 1]  # a separator right after the limit still counts
        cut = -1
        for separator in _SEPARATORS:
            cut = window.rfind(separator)
            if cut > 0:
                break
        if cut <= 0:
            chunk, rest = rest[:limit], rest[limit:]
        else:
            chunk, rest = rest[:cut], rest[cut:]
        chunk = chunk.rstrip()
        if chunk:
            chunks.append(chunk)
        rest = rest.lstrip()
    return chunks


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending in an ellipsis when cut (edits cannot be
    split into several messages)."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - 1)] + "…"


def contains_secret(texts: Iterable[str], secrets: Sequence[str]) -> bool:
    """The leak guard: True when any configured secret appears verbatim in any text."""
    if not secrets:
        return False
    return any(secret in text for text in texts if text for secret in secrets)


def bytes_contain_secret(data: bytes, secrets: Sequence[str]) -> bool:
    return any(secret.encode() in data for secret in secrets)


REDACTED = "[redacted secret]"


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every configured secret replaced by ``REDACTED``. Longest first, so a
    secret that contains another is replaced whole. Used on every string delivery writes
    somewhere a person or the container can read (a refusal reason, a note, a notice,
    ``last_error``) that may quote what the container or a platform said."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text
