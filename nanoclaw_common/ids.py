"""Generated ids: ``<prefix>-<epoch ms>-<8 random base36 chars>``. Sortable by creation time,
readable in logs, and safe as file and container names."""

from __future__ import annotations

import re
import secrets

from nanoclaw_common.clock import now_ms

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$")


def new_id(prefix: str, now: int | None = None) -> str:
    stamp = now_ms() if now is None else now
    tail = "".join(secrets.choice(_ALPHABET) for _ in range(8))
    return f"{prefix}-{stamp}-{tail}"


def is_safe_id(value: str) -> bool:
    """True when ``value`` can be used as one path component or container-name part: no
    separators, no ``..``, no leading dot, bounded length."""
    return bool(_SAFE_ID.match(value)) and ".." not in value
