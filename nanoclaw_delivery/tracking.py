"""What delivery knows of one session's rows, and how it reads them.

``SessionRows`` holds the session's two connections (opened on first use, closed between
drains), the tail of rows the container committed since delivery last looked
(``tail.Tail``) and the open rows read so far. It reads and records rows; it never sends
one. ``engine.SessionWorker`` builds on it and takes each row to its final state.
"""

from __future__ import annotations

import msgspec
from loguru import logger

from nanoclaw_common.paths import SessionPaths
from nanoclaw_common.store import InboundStore, OutboundReader
from nanoclaw_common.store.bounds import Tailed
from nanoclaw_common.store.rows import Delivery, Session
from nanoclaw_delivery import crashpoints
from nanoclaw_delivery.context import Deps
from nanoclaw_delivery.tail import READ_PAGE_ROWS, Fresh, Tail

log = logger.bind(component="delivery")


class SessionRows:
    """One session's rows as delivery tracks them. Not thread-safe; the session's worker
    (``engine.SessionWorker``, which builds on this class) drives it from one task."""

    def __init__(self, deps: Deps, session: Session, paths: SessionPaths) -> None:
        self.deps = deps
        self.session = session
        self.paths = paths
        self._inbound: InboundStore | None = None
        self._outbound: OutboundReader | None = None
        self._seen_version: int | None = None
        # Open rows seen so far (content left out: it is fetched when a row is processed).
        self._rows: dict[str, Tailed] = {}
        # Small contents read with this pass's new rows (``Tailed.content``), by key: used by
        # the row's attempt, and dropped at the end of the pass (never more than a page).
        self.prefetched: dict[str, str] = {}
        self.tail = Tail(session.id)
        # An attribute so a test can walk many pages with a few rows.
        self.read_page_rows = READ_PAGE_ROWS

    # The session's two connections are opened on first use and closed by ``release()``
    # between drains: each costs about 120 KB (SQLite's page cache and statements), which
    # for hundreds of watched sessions would dominate delivery's memory, while reopening
    # costs well under a millisecond (docs/performance.md).

    @property
    def inbound(self) -> InboundStore:
        if self._inbound is None:
            self._inbound = InboundStore(self.paths.inbound_db)
        return self._inbound

    @property
    def outbound(self) -> OutboundReader:
        if self._outbound is None:
            self._outbound = OutboundReader(self.paths.outbound_db)
        return self._outbound

    def release(self) -> None:
        """Close both connections (the next use reopens them)."""
        if self.tail.unrecorded:
            self.flush_new()
        if self._inbound is not None:
            self._inbound.close()
            self._inbound = None
        if self._outbound is not None:
            self._outbound.close()
            self._outbound = None
        self._seen_version = None  # data_version is per connection
        self.prefetched.clear()

    def close(self) -> None:
        self.release()

    # -- tracking --------------------------------------------------------------------------

    def read_new(self) -> tuple[list[Fresh], bool]:
        """Rows the container committed since we last looked (``tail.Tail``), at most a page;
        and whether the page was full (more may wait: the drain reads again). ``PRAGMA
        data_version`` changes only when another connection commits, so an idle session costs
        one pragma per poke. The rows are recorded by the first write of the drain (usually
        the first attempt's ``begin_attempt``, in the same transaction)."""
        version = self.outbound.data_version()
        if version == self._seen_version and not self.tail.unrecorded:
            return [], False
        # One read transaction per file for the whole tail step (its position, the page, the
        # watermark, the known keys): each query would otherwise take and drop the locks.
        with self.inbound.db.read(), self.outbound.db.read():
            fresh, full = self.tail.read(self.inbound, self.outbound, self.read_page_rows)
        for item in fresh:
            if item.refusal is None:
                tailed = item.tailed
                if tailed.content is not None:
                    self.prefetched[tailed.key] = tailed.content
                    tailed = msgspec.structs.replace(tailed, content=None)
                self._rows[tailed.key] = tailed
            log.debug(
                "tracked seq={}", item.tailed.seq, session=self.session.id, message=item.track.key
            )
        if not full:
            self._seen_version = version
        return fresh, full

    def flush_new(self) -> None:
        """Record rows read but not yet recorded (before any other write of the drain)."""
        if self.tail.unrecorded:
            pending = self.tail.take()
            self.inbound.record_outbounds(pending, now=self.deps.clock())
            crashpoints.after_pending(self.deps, self.session.id, pending)

    def _tailed(self, delivery: Delivery) -> Tailed | None:
        """The row an open delivery is about, found by rowid (or, for one recorded by seq
        alone, by seq), never through the container's index on ids; None when gone."""
        key = delivery.message_out_id
        cached = self._rows.get(key)
        if cached is not None:
            return cached
        if delivery.out_rowid is not None:
            found = self.outbound.tailed_at(delivery.out_rowid)
            candidates = [found] if found is not None else []
        else:
            candidates = self.outbound.tailed_by_seq(delivery.seq)
        for candidate in candidates:
            if candidate.key == key:
                # The cache keeps no content (``prefetched`` is for this pass's new rows).
                found = msgspec.structs.replace(candidate, content=None)
                self._rows[key] = found
                return found
        return None
