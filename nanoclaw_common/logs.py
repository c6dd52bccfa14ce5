"""Logging setup, called only from a program's ``main()``.

Programs log to stderr; supervisord captures it per program (``redirect_stderr=true``) and
rotates the files. Components do ``log = logger.bind(component="delivery")`` and log one line
per state change with ids: ``log.info("delivered {} seq={}", out_id, seq, session=sid)``.

What reaches stderr is safe to read, whatever a component passes in:

- **Secrets** (every configured one, and its URL-encoded form) are masked in the *whole*
  formatted record: the message, the ids, and the traceback, exception chain included.
  Tracebacks are formatted by the standard library, never with loguru's ``diagnose``, which
  prints the values of local variables.
- **One record is one line.** Control characters in the message and the ids are escaped
  (``untrusted.escaped``), so a chat id with a newline cannot forge a second record. The lines
  of a traceback are escaped the same way and indented under the record (``  | ``), so
  nothing an exception's message says can look like a record of its own.
- A message is cut at ``MAX_MESSAGE_CHARS``: a component that forgot ``untrusted.shown``
  still cannot write a 300 KB line.

Other writers of stderr go through the same sink: the standard library's ``logging`` (aiohttp,
asyncio, python-telegram-bot, slack-sdk, httpx; warnings and up), ``warnings``, and uncaught
exceptions in the main thread, in other threads and in ``__del__`` (``sys.excepthook``,
``threading.excepthook``, ``sys.unraisablehook``).
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import traceback
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

from loguru import logger

from nanoclaw_common.untrusted import escaped, shown

if TYPE_CHECKING:
    from loguru import Message, Record

_TEMPLATE: Final = (
    "{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} {extra[program]}"
    "{extra[component_tag]} {extra[_line]}{extra[_ids]}\n{extra[_trace]}"
)
_ID_KEYS: Final = ("session", "message", "run", "group", "chat", "seq")
MAX_MESSAGE_CHARS: Final = 20_000
TRACE_PREFIX: Final = "  | "
MASK: Final = "***"
# Standard-library loggers below this level are not shown (httpx logs every request at INFO).
STDLIB_LEVEL: Final = logging.WARNING


class Masker:
    """Replaces every configured secret, and its URL-encoded form, with ``***``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        values = {s for s in secrets if s}
        values |= {quote(s, safe="") for s in values}
        # Longest first, so a secret that contains another is masked whole.
        ordered = sorted(values, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def mask(self, text: str) -> str:
        return self._pattern.sub(MASK, text) if self._pattern is not None else text


def format_trace(exc_type: Any, exc_value: Any, tb: TracebackType | None, masker: Masker) -> str:
    """A traceback (with its chain) as indented, escaped lines, secrets masked; no locals."""
    if exc_type is None and exc_value is None:
        return ""
    text = "".join(traceback.format_exception(exc_type, exc_value, tb))
    lines = masker.mask(text).rstrip("\n").split("\n")
    return "".join(f"{TRACE_PREFIX}{escaped(line)}\n" for line in lines)


def _formatter(masker: Masker) -> Any:
    def format_record(record: Record) -> str:
        extra = record["extra"]
        component = extra.get("component")
        extra["component_tag"] = f" [{escaped(component)}]" if component else ""
        extra.setdefault("program", "nanoclaw")
        ids = " ".join(
            f"{key}={escaped(extra[key])}" for key in _ID_KEYS if extra.get(key) is not None
        )
        extra["_ids"] = shown(masker.mask(f" ({ids})"), MAX_MESSAGE_CHARS) if ids else ""
        # Masked before escaping too: a secret holding a character that escaping rewrites
        # would otherwise slip past the mask of the finished text.
        extra["_line"] = shown(masker.mask(record["message"]), MAX_MESSAGE_CHARS)
        found = record["exception"]
        extra["_trace"] = (
            format_trace(found.type, found.value, found.traceback, masker) if found else ""
        )
        return _TEMPLATE

    return format_record


def _sink(masker: Masker) -> Any:
    def write(message: Message) -> None:
        # sys.stderr looked up each time: tests and supervisord may swap it.
        sys.stderr.write(masker.mask(str(message)))
        sys.stderr.flush()

    return write


class _ToLoguru(logging.Handler):
    """Standard-library records (aiohttp, asyncio, platform SDKs) into our sink."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a library's bad format arguments must not lose the record
            text = str(record.msg)
        level: str | int = record.levelname if record.levelname in _LEVELS else record.levelno
        logger.opt(exception=record.exc_info or None).bind(component=record.name).log(
            level, "{}", text
        )


_LEVELS: Final = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})


def _install_hooks() -> None:
    def excepthook(
        exc_type: type[BaseException], value: BaseException, tb: TracebackType | None
    ) -> None:
        logger.opt(exception=(exc_type, value, tb)).critical("uncaught {}", exc_type.__name__)

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread is not None else "?"
        logger.opt(exception=(args.exc_type, args.exc_value, args.exc_traceback)).error(
            "uncaught {} in thread {}", args.exc_type.__name__, name
        )

    def unraisable_hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        logger.opt(exception=(unraisable.exc_type, exc, unraisable.exc_traceback)).error(
            "unraisable {}: {}", unraisable.exc_type.__name__, unraisable.err_msg or ""
        )

    sys.excepthook = excepthook
    threading.excepthook = thread_hook
    sys.unraisablehook = unraisable_hook


def setup_logging(program: str, level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    """Send every record to stderr, one line each (plus an indented traceback), secrets
    masked everywhere; route the standard library's logging, warnings and uncaught
    exceptions through the same sink."""
    masker = Masker(secrets)
    logger.remove()
    logger.configure(extra={"program": program, "component_tag": ""})
    logger.add(
        _sink(masker),
        level=level.upper(),
        format=_formatter(masker),
        backtrace=False,
        diagnose=False,
        colorize=False,
    )
    logging.basicConfig(handlers=[_ToLoguru()], level=STDLIB_LEVEL, force=True)
    logging.captureWarnings(True)
    _install_hooks()
