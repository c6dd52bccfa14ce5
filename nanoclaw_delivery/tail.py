"""Where delivery stands in one session's ``outbound.db``, and which new rows it takes.

The tail follows ``rowid``, which SQLite assigns in insertion order, not ``seq``, which the
container chooses: a row written with a seq at or below what the host has seen is still read,
and refused for it, never skipped without a trace. Each row read is one of:

- **new**: every column within bounds (``OutboundReader.tail``), an odd seq above every seq
  recorded before it (the watermark, and the rows read before it in this page) → tracked as
  ``pending``, delivered as usual;
- **refused**: a column out of bounds or of the wrong type (``failed``: the row cannot be
  read, like poison), or a seq that is even, at or below the watermark, or repeated
  (``denied``: the host will not deliver rows out of order or twice) → tracked as settled at
  once, and the agent, the owner and the log are told (``engine.SessionWorker._refuse``);
- **already tracked** (the same key at the same place: read again after the file was found
  rewritten) → only moves the position.

A row whose key is tracked for *another* place (the container deleted a row and wrote a new
one with the same id) gets a key of its own (``#row-<rowid>``) and is refused.

The position is ``inbound.outbound_cursor`` (rowid and key of the last row recorded), moved
in the same transaction that records the rows. If the row at that rowid no longer has that
key, the container rewrote the file: the tail starts again from the first row, and only rows
it has not tracked are taken (all of them refused, if their seqs are old).
"""

from __future__ import annotations

from typing import Final

import msgspec
from loguru import logger

from nanoclaw_common.states import DeliveryStatus
from nanoclaw_common.store import InboundStore, OutboundReader
from nanoclaw_common.store.bounds import UNUSABLE_ID_PREFIX, Tailed
from nanoclaw_common.store.deliveries import Track

log = logger.bind(component="delivery")

READ_PAGE_ROWS: Final = 500  # rows read per query (content is not among what is read)


class Fresh(msgspec.Struct, frozen=True):
    """A row read for the first time. ``refusal`` (status, reason) when it is refused."""

    tailed: Tailed
    track: Track
    refusal: tuple[DeliveryStatus, str] | None = None


class Tail:
    """The reading position of one session (not thread-safe; its worker drives it).
    Rows read but not yet recorded are ``unrecorded``; the worker records them with its next
    write (``InboundStore.begin_attempt(record=…)`` or ``record_outbounds``)."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.unrecorded: list[Track] = []
        self._rescan = False

    def take(self) -> list[Track]:
        pending, self.unrecorded = self.unrecorded, []
        return pending

    def _position(self, inbound: InboundStore, outbound: OutboundReader) -> int:
        """The rowid to read after."""
        if self.unrecorded:
            return self.unrecorded[-1].rowid or 0
        cursor = inbound.outbound_cursor()
        if cursor is None:
            watermark = inbound.delivery_watermark()
            if watermark == 0:
                return 0
            # Deliveries recorded by seq alone (inbound.db version 2): resume after the last
            # row at or below the watermark, and remember that place.
            rowid = outbound.last_rowid_up_to_seq(watermark)
            key = outbound.key_at(rowid) if rowid else None
            if key is not None:
                inbound.reset_outbound_cursor(rowid, key)
            return rowid
        if outbound.key_at(cursor.out_rowid) == cursor.message_out_id:
            self._rescan = False
            return cursor.out_rowid
        if not self._rescan:
            log.warning(
                "outbound.db was rewritten (the row at the tail's place is gone or another):"
                " reading it again from the start; rows already tracked are skipped",
                session=self.session_id,
            )
            self._rescan = True
        return 0

    def read(
        self, inbound: InboundStore, outbound: OutboundReader, limit: int = READ_PAGE_ROWS
    ) -> tuple[list[Fresh], bool]:
        """The next page of rows not read before, classified; and whether the page was full
        (more may wait). Every row read is added to ``unrecorded``."""
        after = self._position(inbound, outbound)
        batch = outbound.tail(after, limit=limit)
        watermark = max([inbound.delivery_watermark(), *(t.seq for t in self.unrecorded)])
        keys = {t.key for t in self.unrecorded}
        fresh: list[Fresh] = []
        for tailed in batch:
            known = inbound.get_delivery(tailed.key)
            key, reused = tailed.key, False
            if known is not None or tailed.key in keys:
                same_place = known is not None and (
                    known.out_rowid == tailed.rowid
                    or (known.out_rowid is None and known.seq == tailed.seq)
                )
                if same_place:
                    self.unrecorded.append(Track(key, known.seq if known else 0, tailed.rowid))
                    continue
                key, reused = f"{UNUSABLE_ID_PREFIX}{tailed.rowid}", True
            refusal = _refusal(tailed, watermark, reused)
            seq = tailed.seq if tailed.seq is not None else 0
            # Every recorded seq counts, a refused row's too (an even seq above the others):
            # the watermark is what ``delivery_watermark`` will say once these are recorded.
            watermark = max(watermark, seq)
            if refusal is None:
                track = Track(key, seq, tailed.rowid)
            else:
                track = Track(key, seq, tailed.rowid, refusal[0], refusal[1])
            keys.add(key)
            self.unrecorded.append(track)
            keyed = tailed if key == tailed.key else msgspec.structs.replace(tailed, key=key)
            fresh.append(Fresh(keyed, track, refusal))
        return fresh, len(batch) >= limit


def _refusal(tailed: Tailed, watermark: int, reused: bool) -> tuple[DeliveryStatus, str] | None:
    """Why a row read for the first time is refused, or None when it is taken."""
    if tailed.defect is not None:
        return DeliveryStatus.FAILED, f"the row is malformed ({tailed.defect})"
    seq = tailed.seq
    assert seq is not None  # a non-integer seq is a defect
    if reused:
        return DeliveryStatus.DENIED, "its id is already used by an earlier row"
    if seq % 2 == 0:
        return DeliveryStatus.DENIED, f"seq {seq} is even (rows an agent writes have odd seqs)"
    if seq <= watermark:
        return (
            DeliveryStatus.DENIED,
            f"seq {seq} is not above {watermark}, the highest seq already seen (rows must be"
            " written in order, each once)",
        )
    return None
