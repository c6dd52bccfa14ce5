"""Committing inbound rows: group commit per session, off the event loop.

Session DBs use ``journal_mode=DELETE`` with ``synchronous=FULL`` (they are read across a
bind mount), so every transaction costs a few fsyncs. One transaction per message would cap
a session at a few hundred messages a second, so each session has a queue: whatever arrived
while the previous commit ran goes into the next transaction together
(``InboundStore.insert_messages``). Different sessions commit in parallel on a thread pool
(apsw releases the GIL while SQLite works).

``write`` returns only after the row's transaction committed; the caller may then
acknowledge the platform. A row whose id a different row holds is stored under an
alternative id (``InboundStore.insert_messages(disambiguate=True)``); the result says so.
The order of ``write`` calls for one session is the order of the
rows' seq numbers.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

import msgspec
from loguru import logger

from nanoclaw_common.messages import ChatContent, IncomingAttachment
from nanoclaw_common.offload import Lane
from nanoclaw_common.paths import Layout
from nanoclaw_common.sessions import ensure_session_files
from nanoclaw_common.store import (
    InboundReader,
    InboundStore,
    InsertResult,
    NewInbound,
    OutboundReader,
)
from nanoclaw_common.store.rows import Session
from nanoclaw_router.attachments import save_attachments

log = logger.bind(component="router")

MAX_BATCH: Final = 500
MAX_OPEN_STORES: Final = 256


@dataclass
class _Item:
    row: NewInbound
    files: list[IncomingAttachment]
    future: asyncio.Future[InsertResult]


@dataclass
class _Queue:
    session: Session
    items: list[_Item] = field(default_factory=list)
    flushing: bool = False
    task: asyncio.Future[None] | None = None  # the drain in progress


class SessionWriter:
    def __init__(self, layout: Layout, *, threads: int = 16) -> None:
        self.layout = layout
        self._lane = Lane("commit", threads)
        self._queues: dict[str, _Queue] = {}
        # Open inbound.db connections by session, least recently used first. Only the one
        # flush in flight for a session uses its store, so a store is never shared by two
        # threads at once.
        self._stores: OrderedDict[str, InboundStore] = OrderedDict()
        self._lock = threading.Lock()
        self.committed_rows = 0
        self.transactions = 0

    def submit(
        self, session: Session, row: NewInbound, files: list[IncomingAttachment]
    ) -> asyncio.Future[InsertResult]:
        """Queue a row for its session's next transaction; the future resolves after the
        commit. Rows submitted for one session are committed, and numbered, in submit
        order."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[InsertResult] = loop.create_future()
        queue = self._queues.get(session.id)
        if queue is None:
            queue = self._queues[session.id] = _Queue(session)
        queue.items.append(_Item(row, files, future))
        if not queue.flushing:
            queue.flushing = True
            queue.task = asyncio.ensure_future(self._drain(queue))
        return future

    async def write(
        self, session: Session, row: NewInbound, files: list[IncomingAttachment]
    ) -> InsertResult:
        # Shielded: the commit finishes even if the caller is cancelled (a SIGTERM); the
        # platform is then simply not acknowledged and re-sends.
        return await asyncio.shield(self.submit(session, row, files))

    async def _drain(self, queue: _Queue) -> None:
        try:
            while queue.items:
                batch, queue.items = queue.items[:MAX_BATCH], queue.items[MAX_BATCH:]
                try:
                    results = await self._lane.run(self._commit, queue.session, batch)
                except BaseException as exc:
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                # Counted here, on the loop: worker threads must not race on the counters.
                self.transactions += 1
                self.committed_rows += sum(1 for r in results if r.created)
                for item, result in zip(batch, results, strict=True):
                    if not item.future.done():
                        item.future.set_result(result)
        finally:
            queue.flushing = False
            if not queue.items:
                self._queues.pop(queue.session.id, None)

    def _store(self, session: Session) -> InboundStore:
        with self._lock:
            store = self._stores.pop(session.id, None)
        if store is None:
            paths = ensure_session_files(self.layout, session)
            store = InboundStore(paths.inbound_db)
        with self._lock:
            self._stores[session.id] = store
        return store

    def _commit(self, session: Session, batch: list[_Item]) -> list[InsertResult]:
        """In a worker thread: save attachments, then one transaction for the batch."""
        paths = self.layout.session(session.agent_group_id, session.id)
        store = self._store(session)
        rows = []
        for item in batch:
            row = item.row
            if item.files and isinstance(row.content, ChatContent):
                saved = save_attachments(paths, row.id, item.files)
                text = row.content.text
                if saved.notes:
                    text = "\n".join([text, *saved.notes]) if text else "\n".join(saved.notes)
                content = msgspec.structs.replace(
                    row.content, text=text, attachments=saved.attachments
                )
                row = msgspec.structs.replace(row, content=content)
            rows.append(row)
        # A different row holding a message's id (a collision) must not cost the message:
        # it goes to an alternative id, and the caller records the collision.
        return store.insert_messages(rows, disambiguate=True)

    async def still_pending(self, session: Session, row_id: str) -> bool:
        """True when the row waits for the agent: ``pending`` in ``messages_in`` and not
        completed or failed by a run in ``outbound.db`` (the sweeper copies acks into
        ``messages_in`` only on its next pass). Reads on fresh connections, on the pool."""
        return await self._lane.run(self._still_pending, session, row_id)

    def _still_pending(self, session: Session, row_id: str) -> bool:
        paths = self.layout.session(session.agent_group_id, session.id)
        inbound = InboundReader(paths.inbound_db)
        try:
            row = inbound.get_message(row_id)
        finally:
            inbound.close()
        if row is None or row.status != "pending":
            return False
        if not paths.outbound_db.exists():
            return True  # no run ever opened it
        outbound = OutboundReader(paths.outbound_db)
        try:
            return row_id not in outbound.settled_ids()
        finally:
            outbound.close()

    def evict_idle(self) -> None:
        """Close the least recently used stores over the cap (called on the loop)."""
        with self._lock:
            idle = [sid for sid in self._stores if sid not in self._queues]
            excess = len(self._stores) - MAX_OPEN_STORES
            closing = [self._stores.pop(sid) for sid in idle[: max(0, excess)]]
        for store in closing:
            store.close()

    def close(self) -> None:
        self._lane.shutdown(wait=True)
        for store in self._stores.values():
            store.close()
        self._stores.clear()
