"""Decoding JSON that someone outside chose, with a bounded size and nesting depth.

msgspec has no depth limit of its own: it recurses once per level (also to *skip* a value it
does not need, such as a field before a union's tag) and raises ``RecursionError`` near
Python's recursion limit, which callers that catch ``msgspec.DecodeError`` turn into a 500
or a crashed worker. And a value that decodes here, 900 levels deep, may not decode in
another process whose stack is deeper. So untyped input (a webhook body, a platform payload
with ``Any`` fields) is measured before it is decoded, on the raw bytes, and refused past
``MAX_DEPTH``; every decode also maps a ``RecursionError`` to ``DecodeError``.

``nesting_depth`` is exact for valid JSON. For invalid JSON it may count too high (brackets
inside an unterminated string), never too low before the point where the decoder stops.
"""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Any, Final, TypeVar

import msgspec

from nanoclaw_common.errors import DecodeError

#: Real payloads (GitHub, Slack blocks) nest a dozen levels; rows add two around them.
MAX_DEPTH: Final = 64

T = TypeVar("T")

# A JSON string, or an unterminated one up to the end: matching the unterminated case to
# the end keeps the scan linear (otherwise every later quote would start a new attempt).
_STRING: Final = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_STEP: Final = [1 if b in b"[{" else -1 for b in range(256)]


def nesting_depth(data: bytes | str) -> int:
    """How deep arrays and objects nest in ``data`` (0 for a scalar)."""
    raw = data.encode() if isinstance(data, str) else data
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(0, max(accumulate(_STEP[b] for b in brackets), default=0))


def too_deep(data: bytes | str, limit: int = MAX_DEPTH) -> bool:
    raw = data.encode() if isinstance(data, str) else data
    # Cheap first: fewer opening brackets than the limit cannot nest past it.
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    return nesting_depth(raw) > limit


def decode_json(
    data: bytes | str,
    type_: type[T] | Any = Any,
    *,
    what: str,
    max_bytes: int,
    max_depth: int = MAX_DEPTH,
) -> T:
    """``data`` decoded as ``type_``; ``DecodeError`` (with a message a person can act on)
    when it is over ``max_bytes``, nested deeper than ``max_depth``, or not valid."""
    size = len(data.encode() if isinstance(data, str) else data)
    if size > max_bytes:
        raise DecodeError(f"invalid {what}: {size} bytes is over the {max_bytes}-byte limit")
    if too_deep(data, max_depth):
        raise DecodeError(f"invalid {what}: nested deeper than {max_depth} levels")
    try:
        result: T = msgspec.json.decode(data, type=type_)
    except msgspec.ValidationError as exc:
        raise DecodeError(f"invalid {what}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise DecodeError(f"invalid {what}: not valid JSON ({exc})") from None
    except RecursionError:
        raise DecodeError(f"invalid {what}: nested too deep") from None
    return result
