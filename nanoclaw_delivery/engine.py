"""One session's delivery: track new ``messages_out`` rows and take each to exactly one final
state, in seq order.

The state of every row is on disk, in the session's host-owned ``inbound.db``
(``deliveries``), never in memory:

    (new row seen)      → pending                      record_outbounds
    pending/retry/sending → sending, attempts += 1     begin_attempt, *before* the attempt
    sending → delivered(platform_message_id)           the platform accepted it
    sending → retry(next_attempt_at_ms)                retryable error, attempts left
    sending → failed                                   poison, permanent error, out of attempts
    sending → denied                                   ACL, leak guard, unauthorized action

A row found in ``sending`` when it is picked up again was interrupted by a crash: it is sent
again (at-least-once; docs/delivery.md has the duplicate window). Failed and denied rows are
reported to the agent (a system note), to the owner (a rate-limited notice) and in the log
(``MESSAGE DROPPED``); ``nanoclaw deliveries`` lists them.

Ordering: rows go out in seq order. A row waiting for a retry holds back later rows *to the
same address* (so a chat never sees message 3 before message 2), but not rows to other
addresses or system actions. A row with no routing goes to the session's own chat, so it has
that chat's address: it cannot overtake (or be overtaken by) a row that names the chat.

A drain goes until it is caught up: new rows are read a page at a time
(``READ_PAGE_ROWS``) and open deliveries are paged through (``OPEN_PAGE_ROWS``), so a backlog
of any size (a session that wrote thousands of rows while delivery was down) is worked off
without waiting for another commit to poke the session.

Every reason delivery stores (``last_error``) or writes into a note, a notice or the log is
redacted by the leak guard first: reasons quote the container (a chat id, a file name) and
platforms (an error message), either of which may carry a configured secret.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import msgspec
from loguru import logger

from nanoclaw_common import messages as m
from nanoclaw_common.diskfull import until_written
from nanoclaw_common.errors import DecodeError, PermanentFailure, RetryLater
from nanoclaw_common.hostfs import unblock
from nanoclaw_common.paths import SessionPaths
from nanoclaw_common.states import DeliveryStatus
from nanoclaw_common.store.bounds import Tailed
from nanoclaw_common.store.deliveries import Track
from nanoclaw_common.store.rows import Delivery, MessagingGroup, OutboundRow, Session
from nanoclaw_common.untrusted import shown, shown_text
from nanoclaw_delivery import agents, approvals, crashpoints, files, operations, tasks
from nanoclaw_delivery.acl import ChatAddress, is_agent_row, origin_chat, route_chat
from nanoclaw_delivery.context import Deps
from nanoclaw_delivery.job import Job
from nanoclaw_delivery.outcome import Denied, Sent
from nanoclaw_delivery.reports import send_notices, tell, tell_refused, traceable
from nanoclaw_delivery.tail import Fresh
from nanoclaw_delivery.text import redact
from nanoclaw_delivery.tracking import SessionRows

log = logger.bind(component="delivery")
T = TypeVar("T")

Address = tuple[str, str] | None

OPEN_PAGE_ROWS: Final = 1000  # open deliveries read per query
TERMINAL_CHANNEL: Final = "cli"
# The terminal's user may simply have closed ``nanoclaw chat``: a reply waits for the next
# one for ``Deps.terminal_patience_s`` (a day; not just the attempt budget's minute),
# retried at most this far apart so it shows soon after a terminal attaches.
TERMINAL_RETRY_MAX_S: Final = 30.0

_SETTLED = frozenset({DeliveryStatus.DELIVERED, DeliveryStatus.FAILED, DeliveryStatus.DENIED})


def _discard(future: asyncio.Future[Any] | None) -> None:
    """Drop a read nobody will await: cancelled if still running, its outcome retrieved
    (asyncio would log an exception never retrieved)."""
    if future is None:
        return
    future.cancel()
    future.add_done_callback(lambda done: done.cancelled() or done.exception())


def backoff_ms(attempt: int, base_s: float, max_s: float) -> int:
    """Exponential: base × 2^(attempt-1), capped at ``max_s``."""
    return int(min(max_s, base_s * (2 ** max(0, attempt - 1))) * 1000)


def address_of(row: OutboundRow, origin: MessagingGroup | None = None) -> Address:
    """The ordering key: chat rows and agent messages by destination; system actions None.
    A row with no routing goes to ``origin`` (the session's chat), so it gets that chat's
    key: the same key as a row that names the chat explicitly. By the row's ``kind``: the
    content is read only when the row is processed, and a content of the other kind is
    refused then (``process``)."""
    if row.kind != "chat":
        return None
    if not row.channel_type and not row.platform_id and origin is not None:
        return (origin.channel_type, origin.platform_id)
    return (row.channel_type or "", row.platform_id or "")


class SessionWorker(SessionRows):
    """Delivers one session's rows. Not thread-safe; one asyncio task drives it."""

    def __init__(self, deps: Deps, session: Session, paths: SessionPaths) -> None:
        super().__init__(deps, session, paths)
        self._swept = False
        self.stopping: Callable[[], bool] = lambda: False
        # An attribute so a test can walk many pages with a few rows.
        self.open_page_rows = OPEN_PAGE_ROWS
        self._origin: MessagingGroup | None = None
        self._origin_known = False

    async def origin(self) -> MessagingGroup | None:
        """The session's own chat (looked up once: a session's chat never changes)."""
        if not self._origin_known and self.session.messaging_group_id is not None:
            self._origin = await self.deps.central.read(origin_chat, self.session)
        self._origin_known = True
        return self._origin

    # -- the drain -------------------------------------------------------------------------

    def sweep_outbox(self) -> int:
        """Remove outbox folders of rows already delivered (left when a crash came between
        "delivered" and the cleanup). Folders of failed or denied rows stay, so an operator's
        retry still has the files."""
        removed = 0
        for name in files.outbox_names(self.paths):
            delivery = self.inbound.get_delivery(name)
            if delivery is not None and delivery.status == DeliveryStatus.DELIVERED:
                self._remove_outbox(delivery.message_out_id)
                removed += 1
        return removed

    async def _files(self, what: str, func: Callable[[], T]) -> T:
        """Work on the container's files (``outbound.db``, ``outbox/``), on a worker with a
        deadline: a stall raises ``Stalled``, and the service quarantines the session."""
        unjam = functools.partial(unblock, self.paths.agent_dir)
        return await self.deps.session_io.acall(self.session.id, what, func, release=unjam)

    async def drain(self) -> int | None:
        """Take every due row as far as it goes now, until caught up. Returns when to look
        again (epoch ms of the earliest future retry), or None when nothing is waiting."""
        db = self.deps.offload.db
        next_due: int | None = None
        try:
            while True:
                due, more = await self._drain(db)
                if due is not None:
                    next_due = _earliest(next_due, due)
                # A full page of new rows: more were committed than one read takes. Go on
                # now; nothing else would poke this session (the container may be done).
                if not more or self.stopping():
                    return next_due
        finally:
            if self.tail.unrecorded:  # a hop only when there is something to record
                await db(self.flush_new)

    async def _drain(self, db: Callable[..., Awaitable[Any]]) -> tuple[int | None, bool]:
        """One pass: open deliveries page by page, then the rows read now. Returns (earliest
        future retry, whether a full page of new rows was read)."""
        # One hand-off for the new rows and the first page of open ones: most passes (a
        # poke for a commit, or a due retry) need nothing more before the first send.
        fresh, full, first = await self._files("reading outbound.db", self._read_pass)
        if not self._swept:
            self._swept = True
            await self._files("sweeping the outbox", self.sweep_outbox)
        held: set[Address] = set()
        next_due: int | None = None
        after: tuple[int, str] | None = None
        while not self.stopping():
            page: list[Delivery] = first
            if after is not None:
                page = await db(
                    lambda after=after: self.inbound.open_deliveries(
                        after=after, limit=self.open_page_rows
                    )
                )
            for delivery in page:
                if self.stopping():
                    break
                due = await self._consider(delivery, held)
                if due is not None:
                    next_due = _earliest(next_due, due)
            if len(page) < self.open_page_rows:
                break
            after = (page[-1].seq, page[-1].message_out_id)
        stamp = self.deps.clock()
        # Rows read but not recorded yet take part as pending (they are recorded with the
        # first write below, or at the end of the pass). Their seqs are above every recorded
        # one, so seq order holds; refused ones are settled at once.
        refused: list[Fresh] = []
        for item in fresh:
            if self.stopping():
                break
            if item.refusal is not None:
                refused.append(item)
                continue
            if refused:  # told before the next write records them
                await self._refuse(refused)
                refused = []
            tailed = item.tailed
            delivery = Delivery(
                tailed.key,
                item.track.seq,
                DeliveryStatus.PENDING,
                0,
                None,
                None,
                None,
                stamp,
                stamp,
                out_rowid=tailed.rowid,
            )
            due = await self._consider(delivery, held)
            if due is not None:
                next_due = _earliest(next_due, due)
        if refused:
            await self._refuse(refused)
        self.prefetched.clear()  # rows left open fetch their content when processed
        # The next pass reads after these (the cursor moves with what is recorded).
        if self.tail.unrecorded:
            await db(self.flush_new)
        return next_due, full

    def _read_pass(self) -> tuple[list[Fresh], bool, list[Delivery]]:
        """``read_new``, and the first page of open deliveries (rows read now are not among
        them: they are recorded by the pass's first write)."""
        with self.inbound.db.read():
            fresh, full = self.read_new()
            return fresh, full, self.inbound.open_deliveries(after=None, limit=self.open_page_rows)

    async def _consider(self, delivery: Delivery, held: set[Address]) -> int | None:
        """Take one open row as far as it goes now (or leave it: not due, or held behind an
        earlier row to the same address). Returns its next due time, if it has one."""
        tailed = self._rows.get(delivery.message_out_id) or await self._files(
            "reading outbound.db", functools.partial(self._tailed, delivery)
        )
        if tailed is None or tailed.row is None:
            # Vanished from outbound.db (a wiped or replaced session file), or rewritten into
            # something unreadable: nothing can be sent, and that is reported like any other
            # failure.
            reason = (
                f"the row is malformed ({tailed.defect})"
                if tailed is not None
                else "its outbound row is gone from outbound.db (the session's files were"
                " replaced or wiped)"
            )
            await self._report(delivery, None, DeliveryStatus.FAILED, reason)
            return None
        row = tailed.row
        address = address_of(row, await self.origin())
        now = self.deps.clock()
        waiting = (
            delivery.status == DeliveryStatus.RETRY and (delivery.next_attempt_at_ms or 0) > now
        )
        if waiting:
            assert delivery.next_attempt_at_ms is not None
            deferred = (row.deliver_after_ms or 0) > now
            if address is not None and not deferred:
                held.add(address)
            return delivery.next_attempt_at_ms
        if address is not None and address in held:
            return None
        if (row.deliver_after_ms or 0) > now:
            # Scheduled for later: parked as a retry with no attempt counted; it holds
            # nothing back (a later row is not "behind" a message meant for tomorrow).
            await self._finish(
                delivery, DeliveryStatus.RETRY, next_attempt_at_ms=row.deliver_after_ms
            )
            log.info(
                "deferred until {}",
                row.deliver_after_ms,
                session=self.session.id,
                message=row.id,
                seq=row.seq,
            )
            return row.deliver_after_ms
        settled = await self.process(delivery, tailed, address)
        if settled is not None and address is not None:
            held.add(address)
        return settled

    async def process(
        self, delivery: Delivery, tailed: Tailed, address: Address = None
    ) -> int | None:
        """One attempt at one row, with one ``except`` arm per outcome. Returns the next
        attempt time when the row went (back) to ``retry``. ``address`` is the row's
        ordering key (``address_of``); a row to the terminal is patient (see ``_retry``).
        The content is fetched now, bounded, and must be of the row's kind."""
        deps = self.deps
        assert tailed.row is not None
        row = tailed.row
        ids = crashpoints.facts(self.session.id, row.id, row.seq)
        max_attempts = deps.settings.delivery_max_attempts
        patient = address is not None and address[0] == TERMINAL_CHANNEL
        if delivery.status == DeliveryStatus.SENDING:
            deps.counters.resent_after_restart += 1
            log.warning("found in sending after a restart: sending again", **ids)
            if delivery.attempts >= max_attempts and not patient:
                # The last allowed attempt was cut short; its result is unknown. Stop here
                # rather than exceed the limit (a platform that kills us each time must not
                # loop forever).
                await self._report(
                    delivery,
                    row,
                    DeliveryStatus.FAILED,
                    f"attempt {delivery.attempts} of {max_attempts} was interrupted by a"
                    " restart; it may or may not have arrived",
                )
                return None
        # A chat row's route (the ACL: central.db) is read on its lane while the attempt
        # begins on the session lane: one wait for both instead of one after the other.
        route: asyncio.Future[tuple[ChatAddress, Denied | None]] | None = None
        if row.kind == "chat" and not is_agent_row(row):
            route = asyncio.ensure_future(deps.central.read(route_chat, self.session, row))
        try:
            begun = await deps.offload.db(self._begin, tailed, deps.clock())
        except BaseException:
            _discard(route)
            raise
        if isinstance(begun, DecodeError):
            _discard(route)
            # Poison: never retried.
            await self._report(delivery, row, DeliveryStatus.FAILED, str(begun))
            return None
        content, row, attempt, recorded = begun
        log.info("sending attempt {}/{}", attempt, max_attempts, **ids)
        crashpoints.after_begin(deps, self.session.id, recorded, ids, attempt)
        job = Job(deps, self.session, self.paths, self.inbound, row, attempt, route)
        deps.counters.in_flight += 1
        try:
            sent = await self.execute(job, content)
        except Denied as exc:
            await self._report(
                delivery, row, DeliveryStatus.DENIED, exc.reason, notify_owner=exc.notify_owner
            )
            return None
        except PermanentFailure as exc:
            await self._report(delivery, row, DeliveryStatus.FAILED, exc.reason)
            return None
        except RetryLater as exc:
            return await self._retry(
                delivery, row, attempt, exc.reason, exc.delay_s, patient=patient
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Unclassified errors are retryable (an adapter bug or a network error type we
            # do not know); the attempt limit bounds them.
            # The traceback helps with adapter bugs, but only when it quotes no secret
            # (an error text can hold a request URL with the bot token).
            log.opt(exception=exc if traceable(exc, deps.secrets()) else None).warning(
                "attempt {} raised {}", attempt, shown_text(self._redact(repr(exc))), **ids
            )
            return await self._retry(delivery, row, attempt, repr(exc), None, patient=patient)
        finally:
            deps.counters.in_flight -= 1
            files.discard(job.staging)
            _discard(route)  # not awaited when the row turned out not to be a chat message
        crashpoints.after_done(deps, row, content, ids, attempt)
        # The platform has it: on a full disk the record waits for room (else it is sent again).
        delivered = functools.partial(self._finish, delivery, DeliveryStatus.DELIVERED)
        finish = functools.partial(delivered, platform_message_id=sent.platform_message_id)
        await until_written(finish, f"the delivery of {row.id}", deps.disk, stopping=self.stopping)
        if isinstance(content, m.CHAT_OPERATIONS):
            deps.counters.delivered += 1
        else:
            deps.counters.actions += 1
        # An edit's or reaction's target is the container's text: shown, not raw.
        log.info("delivered platform_message_id={}", shown(sent.platform_message_id), **ids)
        if isinstance(content, m.SendText) and content.files:
            crashpoints.before_outbox_removed(deps, ids)
            self._remove_outbox(row.id)
        return None

    def _begin(
        self, tailed: Tailed, now: int
    ) -> tuple[m.OutboundContent, OutboundRow, int, list[Track]] | DecodeError:
        """The row's content, fetched now (bounded) and of the row's kind, then the attempt
        begun, in one hand-off: (content, the row with it, attempt, rows recorded with it).
        A content that cannot be used is returned as the ``DecodeError``, and nothing is
        begun."""
        assert tailed.row is not None
        text = self.prefetched.pop(tailed.key, None)
        if text is None:
            text = self.outbound.content_at(tailed)
        try:
            if text is None:
                raise DecodeError(
                    "its content changed after it was read: gone, not text, or over"
                    f" {m.MAX_PAYLOAD_BYTES} bytes"
                )
            content = m.decode_outbound_content(text)
            if m.outbound_kind(content) != tailed.row.kind:
                raise DecodeError(f"the row's kind is {tailed.row.kind}, its content is not")
        except DecodeError as exc:
            return exc
        row = msgspec.structs.replace(tailed.row, content=text)
        recorded = self.tail.take()
        attempt = self.inbound.begin_attempt(row.id, now=now, record=recorded)
        return content, row, attempt, recorded

    async def execute(self, job: Job, content: m.OutboundContent) -> Sent:
        """Dispatch by content type. Chat operations go to a channel or, with channel type
        ``agent``, to another agent group; everything else is a system action."""
        if isinstance(content, m.CHAT_OPERATIONS):
            if is_agent_row(job.row):
                return await agents.send_to_agent(job, content)
            return await operations.send_chat(job, content)
        if isinstance(
            content, m.ScheduleTask | m.UpdateTask | m.PauseTask | m.ResumeTask | m.CancelTask
        ):
            return await tasks.change(job, content)
        if isinstance(content, m.CreateAgent):
            return await agents.create_agent(job, content)
        return await approvals.request(job, content)

    # -- outcomes --------------------------------------------------------------------------

    async def _finish(
        self,
        delivery: Delivery,
        status: DeliveryStatus,
        *,
        platform_message_id: str | None = None,
        error: str | None = None,
        next_attempt_at_ms: int | None = None,
    ) -> None:
        def write() -> None:
            self.flush_new()
            self.inbound.finish_delivery(
                delivery.message_out_id,
                status,
                platform_message_id=platform_message_id,
                error=error,
                next_attempt_at_ms=next_attempt_at_ms,
                now=self.deps.clock(),
            )

        await self.deps.offload.db(write)
        if status in _SETTLED:
            # Settled rows are never read again by this worker: keep the cache bounded.
            self._rows.pop(delivery.message_out_id, None)

    def _redact(self, text: str) -> str:
        return redact(text, self.deps.secrets())

    async def _retry(
        self,
        delivery: Delivery,
        row: OutboundRow,
        attempt: int,
        reason: str,
        delay_s: float | None,
        *,
        patient: bool = False,
    ) -> int | None:
        """Back to ``retry``, or ``failed`` when out of attempts. A ``patient`` row (to the
        terminal) is not bounded by attempts but by ``terminal_patience_s`` from when it was
        first seen, retried at most ``TERMINAL_RETRY_MAX_S`` apart."""
        settings = self.deps.settings
        reason = shown_text(self._redact(reason))  # may quote the container (a channel type)
        now = self.deps.clock()
        max_s = settings.delivery_backoff_max_s
        if patient:
            max_s = min(max_s, TERMINAL_RETRY_MAX_S)
            waited_ms = now - delivery.created_at_ms
            if waited_ms >= int(self.deps.terminal_patience_s * 1000):
                await self._report(
                    delivery,
                    row,
                    DeliveryStatus.FAILED,
                    f"gave up after {attempt} attempts in {waited_ms // 1000} s: {reason}",
                )
                return None
        elif attempt >= settings.delivery_max_attempts:
            await self._report(
                delivery,
                row,
                DeliveryStatus.FAILED,
                f"gave up after {attempt} attempts: {reason}",
            )
            return None
        if delay_s is not None:
            wait_ms = int(min(max(delay_s, 0.0), max_s) * 1000)
        else:
            wait_ms = backoff_ms(attempt, settings.delivery_backoff_base_s, max_s)
        due = now + wait_ms
        await self._finish(delivery, DeliveryStatus.RETRY, error=reason, next_attempt_at_ms=due)
        self.deps.counters.retried += 1
        log.warning(
            "attempt {} failed, retry in {} ms: {}",
            attempt,
            wait_ms,
            reason,
            session=self.session.id,
            message=row.id,
            seq=row.seq,
        )
        return due

    async def _report(
        self,
        delivery: Delivery,
        row: OutboundRow | None,
        status: DeliveryStatus,
        reason: str,
        *,
        notify_owner: bool = True,
    ) -> None:
        """Settle a row as failed or denied, and make sure people hear about it. The agent's
        note and the owner's notice are written *before* the row is settled: a crash in
        between re-runs the row, and their ids (derived from the row) keep them single; the
        other order could settle a row nobody was told about. ``row`` is None when the
        outbound row itself is gone or unreadable."""
        await self.deps.offload.db(self.flush_new)
        reason = await tell(
            self.deps,
            self.session,
            self.inbound,
            key=delivery.message_out_id,
            seq=delivery.seq,
            row=row,
            status=status,
            reason=reason,
            note_id=f"delivery-{delivery.seq}-{status}",
            notify_owner=notify_owner,
        )
        ids = crashpoints.facts(self.session.id, delivery.message_out_id, delivery.seq)
        crashpoints.after_report_queued(self.deps, ids, status)
        await self._finish(delivery, status, error=reason)
        if notify_owner:
            # Sent beside the drain (a DM may take seconds); the queue row makes it survive
            # a crash, and the service's notice loop retries it.
            await self.deps.spawn(send_notices(self.deps))

    async def _refuse(self, items: list[Fresh]) -> None:
        """Tell about rows refused as they were read (``reports.tell_refused``); their
        records are written settled by the drain's next write, after this."""
        await tell_refused(self.deps, self.session, self.inbound, self.outbound, items)
        crashpoints.after_refusal_told(self.deps, self.session.id, items)
        await self.deps.spawn(send_notices(self.deps))

    def _remove_outbox(self, message_out_id: str) -> None:
        # Never a reason to re-send: the row is already delivered.
        try:
            files.remove_outbox(self.paths, message_out_id)
        except OSError as exc:
            log.warning(
                "could not remove the outbox folder: {!r}",
                exc,
                session=self.session.id,
                message=message_out_id,
            )


def _earliest(current: int | None, candidate: int) -> int:
    return candidate if current is None else min(current, candidate)
