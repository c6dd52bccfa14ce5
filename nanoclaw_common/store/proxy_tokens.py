"""Proxy tokens in ``central.db``: which session a proxy request comes from, and the peer
identity the token works from (migrations 0001, 0070; docs/security.md, "Credential proxy").

``Sandbox.wake`` issues one per run, bound to ``container:<id>`` of the container it just
created; only its sha256 is stored. A session has one valid token: issuing revokes the
session's older ones.
"""

from __future__ import annotations

from nanoclaw_common.clock import now_ms
from nanoclaw_common.store import rows
from nanoclaw_common.store.central.base import CentralPart
from nanoclaw_common.store.sqlite import columns


class ProxyTokens(CentralPart):
    """Verb-named methods over ``proxy_tokens``."""

    def issue(
        self,
        token_hash: str,
        session_id: str,
        agent_group_id: str,
        run_id: str,
        *,
        bound_to: str,
        now: int | None = None,
    ) -> None:
        """Record a run's token (by hash), usable only from the peer identity ``bound_to``
        (``nanoclaw_common.peer_identity``); the session's older tokens are revoked."""
        with self.db.write():
            self.db.execute("DELETE FROM proxy_tokens WHERE session_id = ?", (session_id,))
            self.db.execute(
                "INSERT INTO proxy_tokens (token_hash, session_id, agent_group_id, run_id,"
                " created_at_ms, bound_to) VALUES (?, ?, ?, ?, ?, ?)",
                (token_hash, session_id, agent_group_id, run_id, now or now_ms(), bound_to),
            )

    def find(self, token_hash: str) -> rows.ProxyToken | None:
        """The token's row by its sha256 (None: unknown or revoked)."""
        found = self.db.one(
            f"SELECT {columns(rows.ProxyToken)} FROM proxy_tokens WHERE token_hash = ?",
            (token_hash,),
        )
        return rows.ProxyToken(*found) if found else None

    def revoke(self, session_id: str) -> None:
        """Delete the session's token (its run is over); nothing when it has none."""
        with self.db.write():
            self.db.execute("DELETE FROM proxy_tokens WHERE session_id = ?", (session_id,))
