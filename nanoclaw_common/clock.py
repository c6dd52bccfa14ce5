"""Time helpers. Times are stored as integer UTC epoch milliseconds everywhere; decision
logic takes ``now_ms`` as a parameter and reads the clock only when it is None."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ms_to_iso(ms: int) -> str:
    """An ISO-8601 UTC string with a ``Z``, for humans and the agent's prompt."""
    return (
        datetime.fromtimestamp(ms / 1000, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def iso_to_ms(text: str) -> int:
    """Parse ISO-8601 with a zone (``Z`` or ``±HH:MM``). Naive input is refused: the caller
    must decide which zone it means."""
    parsed = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no timezone")
    return int(parsed.timestamp() * 1000)
