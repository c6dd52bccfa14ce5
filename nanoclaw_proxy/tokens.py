"""Which session a request comes from, without letting bad tokens cost every session.

The proxy's ``central.db`` reads run on one reader thread (``AsyncCentral``), so each lookup
of an unknown token queues in front of every session's requests. Three things keep a tool
that floods the socket with bad credentials from slowing the others down:

- ``well_formed``: a credential that cannot be a token (the wrong characters or length) is
  refused without a lookup;
- ``TokenCache``: valid tokens are remembered for ``CACHE_TTL_S``, so a session's requests
  do not look its token up again and again. An entry goes when its session's next run
  presents a new token (``put`` replaces the session's older entries), when a re-check
  after ``central.db`` changed finds it revoked or replaced (``versions``/``confirm``, which
  the proxy runs every ``REVALIDATE_S``: one ``PRAGMA data_version`` when nothing changed),
  and at the latest when its time is up;
- ``FailureLimiter``: a token bucket per calling process for lookups that found nothing.
  When a process's bucket is empty, its unknown tokens get a 429 without a lookup, while
  cached tokens, and other processes, are served as before.

Pure logic: callers pass ``now`` (monotonic seconds). No I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Final

from nanoclaw_common.store.rows import ProxyToken

CACHE_TTL_S: Final = 30.0
REVALIDATE_S: Final = 0.2  # how soon a revoked token stops working
# A bucket of FAILURE_BURST failed lookups per process, refilled at FAILURE_RATE_PER_S.
FAILURE_BURST: Final = 10.0
FAILURE_RATE_PER_S: Final = 1.0
MAX_BUCKETS: Final = 4096  # past this, full buckets (idle callers) are forgotten
# Tokens are secrets.token_urlsafe(32) (43 characters); anything far from that shape is junk.
_TOKEN: Final = re.compile(r"^[A-Za-z0-9_-]{16,256}$")


def well_formed(token: str) -> bool:
    return bool(_TOKEN.match(token))


@dataclass
class _Entry:
    token: ProxyToken
    expires_at: float
    version: int  # central.db's data_version when the token was last confirmed


class TokenCache:
    """Token hash -> its ``ProxyToken``, for ``ttl_s``. Each entry remembers the
    ``central.db`` data version it was confirmed at: when the database has changed since,
    the entry is confirmed again (``stale``, ``confirm``) before long."""

    def __init__(self, ttl_s: float = CACHE_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: str, now: float) -> ProxyToken | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if now >= entry.expires_at:
            del self._entries[digest]
            return None
        return entry.token

    def put(self, digest: str, token: ProxyToken, *, now: float, version: int) -> None:
        """Remember a token just found (``version``: the data version read before the lookup).
        A session has one valid token (each run issues a new one and revokes the last), so
        the session's other entries go."""
        stale = [
            d
            for d, e in self._entries.items()
            if e.token.session_id == token.session_id and d != digest
        ]
        for old in stale:
            del self._entries[old]
        self._entries[digest] = _Entry(token, now + self.ttl_s, version)

    def prune(self, now: float) -> None:
        """Forget expired entries (``get`` only drops the ones asked for)."""
        for digest in [d for d, e in self._entries.items() if now >= e.expires_at]:
            del self._entries[digest]

    def versions(self) -> dict[str, int]:
        """Each entry's data version (a copy: the re-check reads it on another thread)."""
        return {d: e.version for d, e in self._entries.items()}

    def confirm(self, found: Mapping[str, ProxyToken | None], version: int) -> int:
        """Apply fresh lookups (``stale`` digests -> what central.db holds now): an entry
        revoked or now naming another run goes, the others are confirmed at ``version``.
        Returns how many went."""
        gone = 0
        for digest, current in found.items():
            entry = self._entries.get(digest)
            if entry is None:
                continue
            if current is None or current != entry.token:
                del self._entries[digest]
                gone += 1
            else:
                entry.version = version
        return gone


@dataclass
class _Bucket:
    tokens: float
    updated_at: float


class FailureLimiter:
    """Failed token lookups per caller: ``FAILURE_BURST`` at once, then
    ``FAILURE_RATE_PER_S``."""

    def __init__(
        self, burst: float = FAILURE_BURST, rate_per_s: float = FAILURE_RATE_PER_S
    ) -> None:
        self.burst = burst
        self.rate_per_s = rate_per_s
        self._buckets: dict[Hashable, _Bucket] = {}

    def _refill(self, key: Hashable, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        elapsed = max(0.0, now - bucket.updated_at)
        bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate_per_s)
        bucket.updated_at = now
        return bucket

    def retry_after_s(self, key: Hashable, now: float) -> float:
        """0 when ``key`` may have a lookup now, else how long until it may."""
        bucket = self._refill(key, now)
        if bucket.tokens >= 1:
            return 0.0
        return (1 - bucket.tokens) / self.rate_per_s

    def failed(self, key: Hashable, now: float) -> None:
        """A lookup for ``key`` found nothing: it costs one token."""
        bucket = self._refill(key, now)
        bucket.tokens = max(0.0, bucket.tokens - 1)
        if len(self._buckets) > MAX_BUCKETS:
            self._forget_full(now)

    def _forget_full(self, now: float) -> None:
        for key in list(self._buckets):
            if self._refill(key, now).tokens >= self.burst:
                del self._buckets[key]
