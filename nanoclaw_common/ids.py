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


# -- inbound row ids after a collision -----------------------------------------------------
# An inbound row id is an idempotency key (``<platform message id>:<agent group id>``). When
# a different row already holds it (docs/internals.md, "Id collisions"), the message is
# stored as ``<id>#<n>``: the first free n, or a random tail once many are taken. A re-send
# of the same message finds its ``#<n>`` row again, because the rows before it differ.

_ALTERNATIVE = re.compile(r"#(?:[1-9][0-9]{0,2}|r[0-9a-f]{12})$")


def alternative_id(row_id: str, n: int) -> str:
    """The ``n``-th alternative (1, 2, …) of an inbound row id; n = 0 is random."""
    return f"{row_id}#{n}" if n > 0 else f"{row_id}#r{secrets.token_hex(6)}"


def original_row_id(row_id: str) -> str:
    """``row_id`` without the ``#<n>`` an id collision added (unchanged when none)."""
    return _ALTERNATIVE.sub("", row_id, count=1)
