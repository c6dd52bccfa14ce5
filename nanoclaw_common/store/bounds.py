"""Bounded reads of a container-written ``outbound.db``: what the host may fetch of each
column, checked in SQL before the value is read (``typeof`` and ``octet_length`` are answered
from the record header), the row shape delivery's tail works with (``Tailed``), and the
host's connection (``open_host_reader``: ``SQLITE_LIMIT_LENGTH``). ``outbound.py`` uses these
in every read the host makes; docs/security.md, "Rows the container writes", has the why.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import msgspec

from nanoclaw_common import messages
from nanoclaw_common.ids import is_safe_id
from nanoclaw_common.store import rows
from nanoclaw_common.store.sqlite import Database, Mode

#: ``SQLITE_LIMIT_LENGTH`` of the host's connections to ``outbound.db``. The largest
#: legitimate value is a row's content, whose JSON the decoder refuses above
#: ``messages.MAX_PAYLOAD_BYTES``; every other column is far smaller. So nothing longer is
#: ever worth reading, and a longer one fails the query instead of being allocated.
MAX_VALUE_BYTES: Final = messages.MAX_PAYLOAD_BYTES
#: Ids, addresses, run ids: generous for what they hold (``messages.MAX_ID_CHARS`` characters
#: of up to 4 UTF-8 bytes, an inbound id's ``:<agent group id>``), tiny next to memory.
MAX_FIELD_BYTES: Final = 1024
#: The prefix of the deliveries key of a row whose own id is unusable (too long, not text,
#: not a safe id). ``#`` is not in a safe id, so no row's own id can take such a key.
UNUSABLE_ID_PREFIX: Final = "#row-"

TEXT: Final = ("text",)
TEXT_OR_NULL: Final = ("text", "null")
INTEGER: Final = ("integer",)
INTEGER_OR_NULL: Final = ("integer", "null")

# (column, SQLite types it may hold, byte bound) for every column of ``rows.OutboundRow`` but
# ``content``, in that order.
_META: Final[tuple[tuple[str, tuple[str, ...], int], ...]] = (
    ("id", TEXT, MAX_FIELD_BYTES),
    ("seq", INTEGER, MAX_FIELD_BYTES),
    ("in_reply_to", TEXT_OR_NULL, MAX_FIELD_BYTES),
    ("timestamp_ms", INTEGER, MAX_FIELD_BYTES),
    ("deliver_after_ms", INTEGER_OR_NULL, MAX_FIELD_BYTES),
    ("kind", TEXT, MAX_FIELD_BYTES),
    ("platform_id", TEXT_OR_NULL, MAX_FIELD_BYTES),
    ("channel_type", TEXT_OR_NULL, MAX_FIELD_BYTES),
    ("thread_id", TEXT_OR_NULL, MAX_FIELD_BYTES),
)
_RUN_ID: Final = ("run_id", TEXT_OR_NULL, MAX_FIELD_BYTES)
CONTENT: Final = ("content", TEXT, messages.MAX_PAYLOAD_BYTES)
_KINDS: Final = ("chat", "system")


def fits(column: str, types: tuple[str, ...], limit: int) -> str:
    """SQL that is true when ``column`` holds one of ``types`` within ``limit`` bytes. Both
    tests are answered from the record header: the value itself is not read."""
    kinds = ", ".join(f"'{t}'" for t in types)
    return f"(typeof({column}) IN ({kinds}) AND ifnull(octet_length({column}), 0) <= {limit})"


def guarded(column: str, types: tuple[str, ...], limit: int) -> str:
    """SQL for ``column``'s value when it ``fits``, else NULL: what a comparison in a WHERE
    clause must use (``run_id = ?`` alone would fetch a 100 MB run id to compare it)."""
    return f"(CASE WHEN {fits(column, types, limit)} THEN {column} END)"


def _probe(column: str, limit: int) -> str:
    """SQL for (the value if within ``limit`` bytes else NULL, its type, its length)."""
    return (
        f"CASE WHEN octet_length({column}) <= {limit} THEN {column} END,"
        f" typeof({column}), octet_length({column})"
    )


ALL_FIT: Final = " AND ".join(fits(*spec) for spec in (*_META, CONTENT, _RUN_ID))
# A content this small is read with the row (the common chat reply): delivery then needs
# no second read of the file before it sends. A page of rows holds at most
# READ_PAGE_ROWS × this much; a larger content is fetched when its row is processed.
PREFETCH_BYTES: Final = 4096

TAIL_SELECT: Final = (
    "SELECT rowid, "
    + ", ".join(_probe(name, limit) for name, _t, limit in (*_META, _RUN_ID))
    + ", typeof(content), octet_length(content),"
    + f" CASE WHEN typeof(content) = 'text' AND octet_length(content) <= {PREFETCH_BYTES}"
    + " THEN content END FROM messages_out"
)


class Tailed(msgspec.Struct, frozen=True):
    """One ``messages_out`` row as delivery's tail sees it, every column checked.

    ``key`` is what the host tracks it by (``deliveries.message_out_id``): the row's id, or
    ``#row-<rowid>`` when the id itself is unusable. ``row`` is the row with its content left
    out (``content`` is ""; ``OutboundReader.content_at`` fetches it when the row is
    processed), or None when a column is not what it must be; then ``defect`` says which,
    in words that quote sizes and types, never the value. ``seq`` is the row's seq when it
    is an integer (None otherwise), whatever the other columns."""

    rowid: int
    key: str
    seq: int | None
    row: rows.OutboundRow | None
    defect: str | None
    content_bytes: int
    content: str | None = None  # read with the row when at most PREFETCH_BYTES


def tailed(values: Sequence[Any]) -> Tailed:
    rowid = int(values[0])
    fields: list[Any] = []
    defects: list[str] = []
    for index, (name, types, limit) in enumerate((*_META, _RUN_ID)):
        value, kind, size = values[1 + 3 * index : 4 + 3 * index]
        fields.append(value)
        if kind not in types:
            defects.append(f"{name} is {kind}, not {' or '.join(types)}")
        elif size is not None and size > limit:
            defects.append(f"{name} is {size} bytes, over the {limit}-byte limit")
    content_kind, content_size, small_content = values[-3], values[-2], values[-1]
    if content_kind != "text":
        defects.append(f"content is {content_kind}, not text")
    elif content_size > messages.MAX_PAYLOAD_BYTES:
        defects.append(
            f"content is {content_size} bytes, over the {messages.MAX_PAYLOAD_BYTES}-byte limit"
        )
    row_id, seq, kind = fields[0], fields[1], fields[5]
    usable_id = isinstance(row_id, str) and is_safe_id(row_id)
    if isinstance(row_id, str) and not usable_id and not defects:
        defects.append("id is not a safe id (letters, digits and _.:- only, at most 200)")
    if not defects and kind not in _KINDS:
        defects.append("kind is neither chat nor system")
    key = row_id if usable_id else f"{UNUSABLE_ID_PREFIX}{rowid}"
    number = seq if isinstance(seq, int) else None
    size = int(content_size or 0)
    if defects:
        return Tailed(rowid, key, number, None, "; ".join(defects), size)
    row = rows.OutboundRow(
        id=row_id,
        seq=seq,
        in_reply_to=fields[2],
        timestamp_ms=fields[3],
        deliver_after_ms=fields[4],
        kind=kind,
        platform_id=fields[6],
        channel_type=fields[7],
        thread_id=fields[8],
        content="",
        run_id=fields[9],
    )
    content = small_content if isinstance(small_content, str) else None
    return Tailed(rowid, key, number, row, None, size, content)


ACK_STATUS: Final = guarded("status", TEXT, 16)
ACK_RUN_ID: Final = guarded("run_id", TEXT, MAX_FIELD_BYTES)
ACK_FITS: Final = " AND ".join(
    (
        fits("message_id", TEXT, MAX_FIELD_BYTES),
        fits("run_id", TEXT, MAX_FIELD_BYTES),
        fits("status_changed_ms", INTEGER, MAX_FIELD_BYTES),
        f"{ACK_STATUS} IN ('processing', 'completed', 'failed')",
    )
)
STATE_FITS: Final = " AND ".join(
    (
        fits("run_id", TEXT_OR_NULL, MAX_FIELD_BYTES),
        fits("started_at_ms", INTEGER_OR_NULL, MAX_FIELD_BYTES),
        fits("current_tool", TEXT_OR_NULL, MAX_FIELD_BYTES),
        fits("tool_declared_timeout_ms", INTEGER_OR_NULL, MAX_FIELD_BYTES),
        fits("tool_started_at_ms", INTEGER_OR_NULL, MAX_FIELD_BYTES),
        fits("turns", INTEGER, MAX_FIELD_BYTES),
        fits("updated_at_ms", INTEGER, MAX_FIELD_BYTES),
    )
)


def open_host_reader(path: Path | str, mode: Mode = Mode.SESSION_READONLY) -> Database:
    """The host's connection to a container-written ``outbound.db``: values capped at
    ``MAX_VALUE_BYTES`` (``SQLITE_LIMIT_LENGTH``), the schema's own SQL (views, triggers)
    barred from functions with side effects, cell sizes checked on every page read (a
    forged file fails cleanly instead of being trusted), and opened only when it and its
    journal are regular files, by opens that cannot block (``container_file``: ``session_vfs``)."""
    db = Database(path, mode, create=False, max_value_bytes=MAX_VALUE_BYTES, container_file=True)
    try:
        db.execute("PRAGMA trusted_schema = OFF")
        db.execute("PRAGMA cell_size_check = ON")
    except BaseException:
        db.close()
        raise
    return db
