"""Token metering and the daily budget: pure functions, no I/O.

``UsageMeter`` reads the usage out of a Messages API response as it streams past, without
holding the stream up: a JSON body's ``usage`` object, or the ``message_start`` and
``message_delta`` events of an SSE stream (``output_tokens`` there is cumulative, so the last
value wins).

Input tokens are counted in full: uncached input plus cache writes plus cache reads, i.e. all
the context the model read. The budget is on input + output of the agent group's UTC day.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

MAX_JSON_BODY = 20_000_000  # a non-streaming body bigger than this is passed on unmetered


class Usage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @property
    def total_input(self) -> int:
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    def merge(self, fields: dict[str, Any]) -> None:
        for name in self.__struct_fields__:
            value = fields.get(name)
            if isinstance(value, int) and value >= 0:
                setattr(self, name, value)


class UsageMeter:
    def __init__(self, content_type: str) -> None:
        self.streaming = content_type.startswith("text/event-stream")
        self.usage: Usage | None = None
        self._buffer = bytearray()
        self._overflow = False

    def feed(self, chunk: bytes) -> None:
        if self.streaming:
            self._buffer += chunk
            *lines, rest = self._buffer.split(b"\n")
            self._buffer = bytearray(rest)
            for line in lines:
                self._line(bytes(line).rstrip(b"\r"))
        elif not self._overflow:
            self._buffer += chunk
            if len(self._buffer) > MAX_JSON_BODY:
                self._overflow = True
                self._buffer = bytearray()

    def finish(self) -> Usage | None:
        """The usage seen (None when the response carried none, e.g. an error)."""
        if self.streaming:
            if self._buffer:
                self._line(bytes(self._buffer).rstrip(b"\r"))
                self._buffer = bytearray()
        elif self._buffer:
            body = _loads(bytes(self._buffer))
            if isinstance(body, dict) and isinstance(body.get("usage"), dict):
                self._merge(body["usage"])
            self._buffer = bytearray()
        return self.usage

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return
        event = _loads(line[5:].strip())
        if not isinstance(event, dict):
            return
        if event.get("type") == "message_start" and isinstance(event.get("message"), dict):
            usage = event["message"].get("usage")
        else:
            usage = event.get("usage")
        if isinstance(usage, dict):
            self._merge(usage)

    def _merge(self, fields: dict[str, Any]) -> None:
        if self.usage is None:
            self.usage = Usage()
        self.usage.merge(fields)


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None


def seconds_to_next_utc_day(now_ms: int) -> int:
    return 86_400 - (now_ms // 1000) % 86_400


# Input is estimated from the request body: JSON of English text and code is about four
# bytes per token (images, base64, are far cheaper per byte). An estimate, not a bound: the
# real usage replaces it when the call ends.
BYTES_PER_TOKEN = 4


def estimate_input_tokens(body_bytes: int) -> int:
    return -(-body_bytes // BYTES_PER_TOKEN)


def over_budget(used_tokens: int, budget: int) -> bool:
    return budget > 0 and used_tokens >= budget


def budget_message(
    group_name: str,
    folder: str,
    *,
    used_tokens: int,
    reserved_tokens: int,
    needed: int,
    budget: int,
    now_ms: int,
) -> str:
    """What the user is told when a call does not fit the group's day."""
    wait_s = seconds_to_next_utc_day(now_ms)
    hours, minutes = wait_s // 3600, (wait_s % 3600) // 60
    in_flight = f", {reserved_tokens:,} more held by calls in progress" if reserved_tokens else ""
    return (
        f"NanoClaw: the agent group '{group_name}' has reached its daily token budget: "
        f"{used_tokens:,} of {budget:,} tokens used today{in_flight}, and this request could "
        f"use up to {needed:,} more. The budget resets at 00:00 UTC (in {hours} h {minutes} "
        f"min). An admin can raise it with: nanoclaw groups config {folder} --budget TOKENS"
    )
