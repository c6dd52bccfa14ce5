"""Logging setup, called only from a program's ``main()``.

Programs log to stderr; supervisord captures it per program (``redirect_stderr=true``) and
rotates the files. Components do ``log = logger.bind(component="delivery")`` and log one line
per state change with ids: ``log.info("delivered {} seq={}", out_id, seq, session=sid)``.
Configured secrets are masked in every record, whatever a component passes in.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from loguru import logger

if TYPE_CHECKING:
    from loguru import Record

# No trailing "\n{exception}": loguru appends the newline and the traceback itself when the
# format is a string; adding them here printed a blank line after every record.
_FORMAT = (
    "{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} {extra[program]}"
    "{extra[component_tag]} {message}{extra[ids]}"
)
_ID_KEYS = ("session", "message", "run", "group", "chat", "seq")


def _make_patcher(secrets: list[str]) -> Any:
    def patch(record: Record) -> None:
        extra = record["extra"]
        component = extra.get("component")
        extra["component_tag"] = f" [{component}]" if component else ""
        extra.setdefault("program", "nanoclaw")
        ids = " ".join(f"{key}={extra[key]}" for key in _ID_KEYS if extra.get(key) is not None)
        extra["ids"] = f" ({ids})" if ids else ""
        message = record["message"]
        for secret in secrets:
            if secret in message:
                message = message.replace(secret, "***")
        record["message"] = message

    return patch


def setup_logging(program: str, level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    """Send every record to stderr, one line each, secrets masked."""
    logger.remove()
    logger.configure(
        extra={"program": program, "component_tag": "", "ids": ""},
        patcher=_make_patcher(sorted(set(secrets), key=len, reverse=True)),
    )
    logger.add(sys.stderr, level=level.upper(), format=_FORMAT, backtrace=False, diagnose=False)
