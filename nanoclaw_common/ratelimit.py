"""Token buckets: at most ``burst`` at once, refilled at ``per_minute``.

Used where an outside party decides how often something happens and every time costs us a
turn of an agent (webhook deliveries). Time is a parameter (monotonic seconds); nothing
here reads a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

MAX_KEYS: Final = 10_000  # keys are configured names; this only bounds a mistake


@dataclass
class TokenBucket:
    per_minute: float
    burst: int
    tokens: float = -1.0  # below 0: not used yet (full)
    updated_s: float = 0.0

    def take(self, now_s: float) -> float:
        """Take one token: 0.0 when there was one, else the seconds until there is."""
        rate_s = self.per_minute / 60.0
        if self.tokens < 0:
            self.tokens = float(self.burst)
        else:
            elapsed = max(0.0, now_s - self.updated_s)
            self.tokens = min(float(self.burst), self.tokens + elapsed * rate_s)
        self.updated_s = now_s
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / rate_s


@dataclass
class RateLimiter:
    """One bucket per key (a webhook source)."""

    per_minute: float
    burst: int
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def take(self, key: str, now_s: float) -> float:
        """0.0 when ``key`` may go ahead now, else the seconds to wait."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_KEYS:
                self._buckets.clear()
            bucket = self._buckets[key] = TokenBucket(self.per_minute, self.burst)
        return bucket.take(now_s)


def retry_after_header(wait_s: float) -> str:
    """``Retry-After`` in whole seconds, at least 1."""
    return str(max(1, math.ceil(wait_s)))
