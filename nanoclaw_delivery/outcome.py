"""The outcomes of one delivery attempt, as the executor's ``except`` arms see them.

- a handler returns ``Sent`` when the platform (or the host, for a system action) accepted it;
- ``Denied`` refuses the row for good: ACL, leak guard, an unauthorized or invalid action;
- ``nanoclaw_common.errors.RetryLater`` / ``PermanentFailure`` come from adapters (and from
  us, e.g. for a missing adapter); ``DecodeError`` marks poison rows.
"""

from __future__ import annotations

import msgspec

from nanoclaw_common.errors import NanoclawError


class Sent(msgspec.Struct, frozen=True):
    """Accepted. ``platform_message_id`` is the first chunk's id for a split text, the card's
    id for a question, the inbound row id for an agent-to-agent message, or an id naming what
    a system action created."""

    platform_message_id: str | None = None


class Denied(NanoclawError):
    """Refused for good. ``notify_owner`` is False for a plain mistake by the agent (a task id
    that does not exist, a missing file), True for anything an owner should know about (a
    destination the agent may not use, a leaked secret, an unauthorized privileged action)."""

    def __init__(self, reason: str, *, notify_owner: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.notify_owner = notify_owner

    def __repr__(self) -> str:
        return f"Denied({self.reason!r}, notify_owner={self.notify_owner!r})"
