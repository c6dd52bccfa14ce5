"""The wake contract. ``nanoclaw_common.sandbox.Sandbox`` implements it with Podman; tests use
a recording fake. Router (new message), sweeper (due work, retries) and delivery
(agent-to-agent, approvals) call it after refreshing the session's projections."""

from __future__ import annotations

from typing import Protocol

from nanoclaw_common.store.rows import Session


class Waker(Protocol):
    def wake(self, session: Session) -> bool:
        """Make sure the session's container runs. Idempotent: one container per session,
        however many callers wake it at once. False on a transient failure (the message
        stays pending and the sweeper retries); never raises for Podman trouble."""
