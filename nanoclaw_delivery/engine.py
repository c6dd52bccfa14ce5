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
addresses or system actions.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger

from nanoclaw_common import messages as m
from nanoclaw_common.errors import DecodeError, PermanentFailure, RetryLater
from nanoclaw_common.paths import SessionPaths
from nanoclaw_common.states import DeliveryStatus
from nanoclaw_common.store import InboundStore, OutboundReader
from nanoclaw_common.store.rows import Delivery, OutboundRow, Session
from nanoclaw_delivery import agents, approvals, files, operations, tasks
from nanoclaw_delivery.acl import AGENT_CHANNEL, is_agent_row
from nanoclaw_delivery.context import Deps
from nanoclaw_delivery.job import Job
from nanoclaw_delivery.notify import note_agent, notify_owner
from nanoclaw_delivery.outcome import Denied, Sent

log = logger.bind(component="delivery")

Address = tuple[str, str] | None


_SETTLED = frozenset({DeliveryStatus.DELIVERED, DeliveryStatus.FAILED, DeliveryStatus.DENIED})


def backoff_ms(attempt: int, base_s: float, max_s: float) -> int:
    """Exponential: base × 2^(attempt-1), capped at ``max_s``."""
    return int(min(max_s, base_s * (2 ** max(0, attempt - 1))) * 1000)


def address_of(row: OutboundRow, content: m.OutboundContent | None) -> Address:
    """The ordering key: chat rows and agent messages by destination; system actions None."""
    if content is not None and not isinstance(content, m.CHAT_OPERATIONS):
        return None
    return (row.channel_type or "", row.platform_id or "")


class SessionWorker:
    """Delivers one session's rows. Not thread-safe; one asyncio task drives it."""

    def __init__(self, deps: Deps, session: Session, paths: SessionPaths) -> None:
        self.deps = deps
        self.session = session
        self.paths = paths
        self._inbound: InboundStore | None = None
        self._outbound: OutboundReader | None = None
        self._seen_version: int | None = None
        self._rows: dict[str, OutboundRow] = {}
        self._unrecorded: list[tuple[str, int]] = []
        self._swept = False
        self.stopping: Callable[[], bool] = lambda: False

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
        if self._unrecorded:
            self.flush_new()
        if self._inbound is not None:
            self._inbound.close()
            self._inbound = None
        if self._outbound is not None:
            self._outbound.close()
            self._outbound = None
        self._seen_version = None  # data_version is per connection

    def close(self) -> None:
        self.release()

    # -- tracking --------------------------------------------------------------------------

    def read_new(self) -> list[OutboundRow]:
        """Rows the container committed since we last looked, not tracked yet. ``PRAGMA
        data_version`` changes only when another connection commits, so an idle session costs
        one pragma per poke. The rows are recorded as ``pending`` by the first write of the
        drain (usually the first attempt's ``begin_attempt``, in the same transaction)."""
        version = self.outbound.data_version()
        if version == self._seen_version and not self._unrecorded:
            return []
        watermark = max([self.inbound.delivery_watermark(), *(s for _i, s in self._unrecorded)])
        batch = self.outbound.messages_after(watermark, limit=500)
        for row in batch:
            self._rows[row.id] = row
            self._unrecorded.append((row.id, row.seq))
            log.debug("tracked seq={}", row.seq, session=self.session.id, message=row.id)
        if len(batch) < 500:
            self._seen_version = version
        return batch

    def flush_new(self) -> None:
        """Record rows read but not yet recorded (before any other write of the drain)."""
        if self._unrecorded:
            pending, self._unrecorded = self._unrecorded, []
            self.inbound.record_outbounds(pending, now=self.deps.clock())

    def _take_new(self) -> list[tuple[str, int]]:
        pending, self._unrecorded = self._unrecorded, []
        return pending

    def _row(self, message_out_id: str) -> OutboundRow | None:
        row = self._rows.get(message_out_id)
        if row is None:
            row = self.outbound.get_message(message_out_id)
            if row is not None:
                self._rows[message_out_id] = row
        return row

    # -- the drain -------------------------------------------------------------------------

    def sweep_outbox(self) -> int:
        """Remove outbox folders of rows already delivered (left when a crash came between
        "delivered" and the cleanup). Folders of failed or denied rows stay, so an operator's
        retry still has the files."""
        removed = 0
        try:
            entries = list(os.scandir(self.paths.outbox))
        except OSError:
            return 0
        for entry in entries:
            delivery = self.inbound.get_delivery(entry.name)
            if delivery is not None and delivery.status == DeliveryStatus.DELIVERED:
                row = self._row(entry.name)
                if row is not None:
                    self._remove_outbox(row)
                    removed += 1
        return removed

    async def drain(self) -> int | None:
        """Take every due row as far as it goes now. Returns when to look again (epoch ms of
        the earliest future retry), or None when nothing is waiting."""
        db = self.deps.offload.db
        try:
            return await self._drain(db)
        finally:
            await db(self.flush_new)

    async def _drain(self, db: Callable[..., Awaitable[Any]]) -> int | None:
        fresh = await db(self.read_new)
        if not self._swept:
            self._swept = True
            await db(self.sweep_outbox)
        opened: list[Delivery] = await db(self.inbound.open_deliveries)
        stamp = self.deps.clock()
        # Rows read but not recorded yet take part as pending (they are recorded with the
        # first write below).
        opened += [
            Delivery(row.id, row.seq, DeliveryStatus.PENDING, 0, None, None, None, stamp, stamp)
            for row in fresh
        ]
        held: set[Address] = set()
        next_due: int | None = None
        for delivery in opened:
            if self.stopping():
                break
            row = self._row(delivery.message_out_id)
            if row is None:  # vanished from outbound.db (a wiped session): nothing to send
                await self._finish(delivery, DeliveryStatus.FAILED, error="outbound row is gone")
                continue
            content = _peek(row)
            address = address_of(row, content)
            now = self.deps.clock()
            waiting = (
                delivery.status == DeliveryStatus.RETRY and (delivery.next_attempt_at_ms or 0) > now
            )
            if waiting:
                assert delivery.next_attempt_at_ms is not None
                next_due = _earliest(next_due, delivery.next_attempt_at_ms)
                deferred = (row.deliver_after_ms or 0) > now
                if address is not None and not deferred:
                    held.add(address)
                continue
            if address is not None and address in held:
                continue
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
                assert row.deliver_after_ms is not None
                next_due = _earliest(next_due, row.deliver_after_ms)
                continue
            settled = await self.process(delivery, row)
            if settled is not None:
                next_due = _earliest(next_due, settled)
                if address is not None:
                    held.add(address)
        return next_due

    async def process(self, delivery: Delivery, row: OutboundRow) -> int | None:
        """One attempt at one row, with one ``except`` arm per outcome. Returns the next
        attempt time when the row went (back) to ``retry``."""
        deps = self.deps
        ids = {"session": self.session.id, "message": row.id, "seq": row.seq}
        max_attempts = deps.settings.delivery_max_attempts
        if delivery.status == DeliveryStatus.SENDING:
            deps.counters.resent_after_restart += 1
            log.warning("found in sending after a restart: sending again", **ids)
            if delivery.attempts >= max_attempts:
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
        try:
            content = m.decode_outbound_content(row.content)
        except DecodeError as exc:
            # Poison: never retried.
            await self._report(delivery, row, DeliveryStatus.FAILED, str(exc))
            return None
        now = deps.clock()
        attempt = await deps.offload.db(
            lambda: self.inbound.begin_attempt(row.id, now=now, record=self._take_new())
        )
        log.info("sending attempt {}/{}", attempt, max_attempts, **ids)
        job = Job(deps, self.session, self.paths, self.inbound, row, attempt)
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
            return await self._retry(delivery, row, attempt, exc.reason, exc.delay_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Unclassified errors are retryable (an adapter bug or a network error type we
            # do not know); the attempt limit bounds them.
            log.opt(exception=exc).warning("attempt {} raised {!r}", attempt, exc, **ids)
            return await self._retry(delivery, row, attempt, repr(exc), None)
        finally:
            deps.counters.in_flight -= 1
            files.discard(job.staging)
        await self._finish(
            delivery, DeliveryStatus.DELIVERED, platform_message_id=sent.platform_message_id
        )
        if isinstance(content, m.CHAT_OPERATIONS):
            deps.counters.delivered += 1
        else:
            deps.counters.actions += 1
        log.info("delivered platform_message_id={}", sent.platform_message_id, **ids)
        if isinstance(content, m.SendText) and content.files:
            self._remove_outbox(row)
        return None

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
            return tasks.change(job, content)
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

    async def _retry(
        self, delivery: Delivery, row: OutboundRow, attempt: int, reason: str, delay_s: float | None
    ) -> int | None:
        settings = self.deps.settings
        if attempt >= settings.delivery_max_attempts:
            await self._report(
                delivery,
                row,
                DeliveryStatus.FAILED,
                f"gave up after {attempt} attempts: {reason}",
            )
            return None
        if delay_s is not None:
            wait_ms = int(min(max(delay_s, 0.0), settings.delivery_backoff_max_s) * 1000)
        else:
            wait_ms = backoff_ms(
                attempt, settings.delivery_backoff_base_s, settings.delivery_backoff_max_s
            )
        due = self.deps.clock() + wait_ms
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
        row: OutboundRow,
        status: DeliveryStatus,
        reason: str,
        *,
        notify_owner: bool = True,
    ) -> None:
        """Settle a row as failed or denied, and make sure people hear about it. The agent's
        note is written *before* the row is settled: a crash in between re-runs the row, and
        the note's id (derived from the seq) keeps it single; the other order could settle a
        row nobody was told about."""
        ids = {"session": self.session.id, "message": row.id, "seq": row.seq}
        where = _describe_destination(row)
        if status == DeliveryStatus.DENIED:
            self.deps.counters.denied += 1
            log.warning("MESSAGE DROPPED (denied) {}: {}", where, reason, **ids)
            note = f"Your message #{row.seq} {where} was refused and not delivered: {reason}."
        else:
            self.deps.counters.failed += 1
            log.error("MESSAGE DROPPED (failed) {}: {}", where, reason, **ids)
            note = f"Your message #{row.seq} {where} could not be delivered: {reason}."
        await self.deps.offload.db(self.flush_new)
        note_agent(
            self.deps,
            self.session,
            self.inbound,
            f"delivery-{row.seq}-{status}",
            note,
            rate_limited=True,
        )
        await self._finish(delivery, status, error=reason)
        if notify_owner:
            await self.deps.spawn(notify_owner_about(self.deps, self.session, row, status, reason))

    def _remove_outbox(self, row: OutboundRow) -> None:
        # Never a reason to re-send: the row is already delivered.
        try:
            files.remove_outbox(self.paths, row.id)
        except OSError as exc:
            log.warning(
                "could not remove the outbox folder: {!r}",
                exc,
                session=self.session.id,
                message=row.id,
            )


async def notify_owner_about(
    deps: Deps, session: Session, row: OutboundRow, status: str, reason: str
) -> None:
    text = (
        f"NanoClaw: a message from agent group {session.agent_group_id} (session {session.id},"
        f" #{row.seq}) was {status}: {reason}. See `nanoclaw deliveries --failed`."
    )
    await notify_owner(deps, session.agent_group_id, text)


def _peek(row: OutboundRow) -> m.OutboundContent | None:
    try:
        return m.decode_outbound_content(row.content)
    except DecodeError:
        return None


def _earliest(current: int | None, candidate: int) -> int:
    return candidate if current is None else min(current, candidate)


def _describe_destination(row: OutboundRow) -> str:
    if row.kind == "system":
        return "(a system action)"
    if row.channel_type == AGENT_CHANNEL:
        return f"to agent group {row.platform_id}"
    if row.channel_type and row.platform_id:
        return f"to {row.channel_type}:{row.platform_id}"
    return "to this conversation's chat"
