"""The wake contract. ``nanoclaw_common.sandbox.Sandbox`` implements it with Podman; tests use
a recording fake. The router (a new message, for the lowest latency) and the sweeper (due
work, retries, restarts) call it after refreshing the session's projections.

Delivery does not wake: it writes due rows (agent-to-agent messages, notes) and leaves the
start to the sweeper's next pass (about a second). That keeps podman-py, and its memory, out
of the delivery process (docs/delivery.md, "Who wakes what")."""

from __future__ import annotations

from typing import Protocol

from nanoclaw_common.store.rows import Session


class Waker(Protocol):
    def wake(self, session: Session) -> bool:
        """Make sure the session's container runs. Idempotent: one container per session,
        however many callers wake it at once. False on a transient failure (the message
        stays pending and the sweeper retries); never raises for Podman trouble."""
