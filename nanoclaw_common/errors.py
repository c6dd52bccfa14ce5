"""The project's exceptions. A leaf module: it imports only the standard library.

Control-flow exceptions carry their data, so the one place that handles an outcome (the
delivery executor, the router's ingest, the runner's batch) can act without guessing.
"""

from __future__ import annotations


class NanoclawError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(NanoclawError):
    """Settings are missing or invalid. Raised at start-up so supervisord sees a FATAL start."""


class DecodeError(NanoclawError):
    """Input from outside (a platform payload, a row the container wrote, a CLI request) could
    not be decoded. Poison input: it is recorded and dropped, never retried."""


class RetryLater(NanoclawError):
    """A transient failure: try again after ``delay_s`` seconds (or the caller's backoff when
    ``delay_s`` is None)."""

    def __init__(self, reason: str, delay_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay_s = delay_s

    def __repr__(self) -> str:
        return f"RetryLater({self.reason!r}, delay_s={self.delay_s!r})"


class PermanentFailure(NanoclawError):
    """The operation can never succeed (unknown chat, refused by the platform for good)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __repr__(self) -> str:
        return f"PermanentFailure({self.reason!r})"


class NotFound(NanoclawError):
    """A row the caller named does not exist."""


class AlreadyExists(NanoclawError):
    """A row the caller would create exists already (a UNIQUE constraint of the table)."""


class Refused(NanoclawError):
    """An action was not authorized, or its input broke a rule (path traversal, bad name)."""
