"""The delivery program's event loop: which sessions to watch, noticing their new rows fast,
one asyncio task per session (a slow platform call in one session never holds up another),
the approval watcher, and a graceful stop.

Watching: sessions whose container is not stopped or was active within
``settings.delivery_recent_s`` (``CentralStore.live_sessions``), refreshed every
``SESSION_REFRESH_S``, plus any session that still has open deliveries (a retry due later).
At start-up every active session is drained once, so rows left by a crash or written while
delivery was down are found whatever their age.

Beside the sessions run the approval watcher and the owner-notice loop (queued notices in
``central.owner_notices`` are sent when due, so a notice queued before a crash goes out
after the restart).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from loguru import logger

from nanoclaw_common.errors import NanoclawError
from nanoclaw_common.lifecycle import GracefulStop
from nanoclaw_common.states import SessionStatus
from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.owner_notices import OwnerNotices
from nanoclaw_common.store.quarantine import HOSTILE_FILES, Quarantine, quarantine_session
from nanoclaw_common.store.rows import Session
from nanoclaw_delivery.approvals import ApprovalWatcher
from nanoclaw_delivery.context import Deps
from nanoclaw_delivery.engine import SessionWorker
from nanoclaw_delivery.notify import send_owner_notices
from nanoclaw_delivery.watch import (
    IN_Q_OVERFLOW,
    Inotify,
    file_signature,
    is_commit,
    open_inotify,
)

log = logger.bind(component="delivery")

SESSION_REFRESH_S: Final = 0.25
STAT_POLL_S: Final = 0.005  # without inotify: stat every watched outbound.db this often…
STAT_IDLE_MAX_S: Final = 0.05  # …backing off to this when nothing changes
SAFETY_STAT_S: Final = 1.0  # with inotify: a slow stat sweep in case an event was lost
APPROVAL_POLL_S: Final = 0.1  # central.db data_version probe; full pass at least every 1 s
IDLE_DROP_S: Final = 5.0  # a session no longer live and with nothing open is dropped after this
RELEASE_IDLE_S: Final = 5.0  # a session quiet this long closes its connections
STOP_GRACE_S: Final = 20.0  # finish in-flight attempts at most this long after SIGTERM
NOTICE_POLL_S: Final = 1.0  # due owner notices (retries, and those left by a restart)
NOTICE_KEEP_MS: Final = 7 * 24 * 3600 * 1000  # settled owner notices are kept a week
NOTICE_PURGE_S: Final = 3600.0


def _active_sessions(central: CentralStore) -> list[Session]:
    """The active sessions that are not quarantined."""
    quarantined = Quarantine(central).ids()
    return [
        s for s in central.list_sessions(status=SessionStatus.ACTIVE) if s.id not in quarantined
    ]


def _live_sessions(central: CentralStore, since_ms: int) -> tuple[set[str], list[Session]]:
    """The quarantined sessions, and the live ones that are not."""
    quarantined = Quarantine(central).ids()
    return quarantined, [s for s in central.live_sessions(since_ms) if s.id not in quarantined]


def _next_notice_ms(central: CentralStore) -> int | None:
    return OwnerNotices(central).next_due_ms()


def _purge_notices(central: CentralStore, before_ms: int) -> None:
    OwnerNotices(central).purge(before_ms=before_ms)


class Tracked:
    """A watched session: its worker, its task and its poke event."""

    def __init__(self, worker: SessionWorker) -> None:
        self.worker = worker
        self.poke = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.watch: int | None = None
        self.signature: tuple[int, int] | None = None
        self.idle_since: float | None = None
        self.next_due: int | None = None
        self.last_drain = 0.0
        self.busy = False  # a drain (maybe a platform call) is running
        self.failures = 0  # drains that raised in a row
        self.quarantined = False  # its files were refused or stalled: no longer served


class DeliveryService:
    def __init__(self, deps: Deps, stop: GracefulStop | None = None) -> None:
        self.deps = deps
        self.stop = stop or GracefulStop()
        self.stopped = asyncio.Event()
        self.sessions: dict[str, Tracked] = {}
        self._by_watch: dict[int, Tracked] = {}
        self.inotify: Inotify | None = None
        self.approvals = ApprovalWatcher(deps)

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, *, use_inotify: bool = True) -> None:
        loop = asyncio.get_running_loop()
        self.inotify = open_inotify() if use_inotify else None
        if self.inotify is not None:
            loop.add_reader(self.inotify.fileno(), self._on_inotify)
        log.info(
            "delivery started: change detection by {}, {} adapter(s): {}",
            "inotify" if self.inotify else f"stat every {STAT_POLL_S * 1000:g} ms",
            len(self.deps.adapters),
            ", ".join(sorted(self.deps.adapters)) or "none",
        )
        await self._startup_scan()
        helpers = [
            asyncio.create_task(self._scan_loop(), name="scan"),
            asyncio.create_task(self._approval_loop(), name="approvals"),
            asyncio.create_task(self._notice_loop(), name="notices"),
        ]
        try:
            await self.stopped.wait()
        finally:
            log.info("stopping: finishing in-flight attempts")
            for helper in helpers:
                helper.cancel()
            for tracked in self.sessions.values():
                tracked.poke.set()  # workers see the stop flag and return after their item
            tasks = [t.task for t in self.sessions.values() if t.task is not None]
            if tasks:
                _done, pending = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
                for task in pending:
                    task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            if self.deps.background:  # owner notices still being sent: a short grace
                await asyncio.wait(list(self.deps.background), timeout=2.0)
            for tracked in list(self.sessions.values()):
                self._untrack(tracked)
            if self.inotify is not None:
                loop.remove_reader(self.inotify.fileno())
                self.inotify.close()
            log.info("delivery stopped: {}", self.deps.counters.summary())

    def request_stop(self) -> None:
        self.stop.request()
        self.stopped.set()

    # -- which sessions ------------------------------------------------------------------------

    async def _startup_scan(self) -> None:
        for session in await self.deps.central.read(_active_sessions):
            self._track(session)

    async def _refresh(self, loop_time: float) -> None:
        now = self.deps.clock()
        since = now - int(self.deps.settings.delivery_recent_s * 1000)
        # A quarantined session is not read at all (whoever quarantined it: this process,
        # the sweeper, the router); released by the operator, it is watched again.
        quarantined, sessions = await self.deps.central.read(_live_sessions, since)
        for session_id in quarantined & self.sessions.keys():
            tracked = self.sessions[session_id]
            if not tracked.busy:
                self._untrack(tracked)
        live = {s.id: s for s in sessions}
        for session in live.values():
            if session.id not in self.sessions:
                self._track(session)
            else:
                self.sessions[session.id].idle_since = None
        for session_id, tracked in list(self.sessions.items()):
            if session_id in live or tracked.next_due is not None:
                continue
            if tracked.idle_since is None:
                tracked.idle_since = loop_time
            elif (
                loop_time - tracked.idle_since > IDLE_DROP_S
                and not tracked.poke.is_set()
                and not tracked.busy  # never cancel an attempt in flight
            ):
                self._untrack(tracked)

    def _track(self, session: Session) -> None:
        paths = self.deps.layout.session(session.agent_group_id, session.id)
        if not paths.outbound_db.exists() or not paths.inbound_db.exists():
            return  # not created yet; the next refresh looks again
        worker = SessionWorker(self.deps, session, paths)  # connections open on first use
        worker.stopping = lambda: self.stop.stopping
        tracked = Tracked(worker)
        if self.inotify is not None:
            try:
                tracked.watch = self.inotify.add(paths.agent_dir)
                self._by_watch[tracked.watch] = tracked
            except OSError as exc:
                log.warning("inotify watch failed ({}); stat only", exc, session=session.id)
        tracked.signature = file_signature(paths.outbound_db)
        tracked.task = asyncio.create_task(self._session_loop(tracked), name=session.id)
        tracked.poke.set()  # catch up with whatever is already there
        self.sessions[session.id] = tracked
        log.debug("watching session", session=session.id)

    def _untrack(self, tracked: Tracked) -> None:
        session_id = tracked.worker.session.id
        self.sessions.pop(session_id, None)
        if tracked.task is not None and not tracked.task.done():
            tracked.task.cancel()
        if tracked.watch is not None and self.inotify is not None:
            self._by_watch.pop(tracked.watch, None)
            self.inotify.remove(tracked.watch)
        try:
            tracked.worker.close()
        except Exception as exc:  # a quarantined session's connection may still be in use
            log.warning("could not close the session's files: {!r}", exc, session=session_id)
        log.debug("no longer watching session", session=session_id)

    # -- change detection ------------------------------------------------------------------

    def _on_inotify(self) -> None:
        assert self.inotify is not None
        for wd, mask, name in self.inotify.read():
            if mask & IN_Q_OVERFLOW:
                for tracked in self.sessions.values():
                    tracked.poke.set()
                continue
            if is_commit(mask, name):
                poked = self._by_watch.get(wd)
                if poked is not None:
                    poked.poke.set()

    def _stat_sweep(self) -> bool:
        """Poke every session whose outbound.db changed (mtime, size); True if any did."""
        changed = False
        for tracked in self.sessions.values():
            signature = file_signature(tracked.worker.paths.outbound_db)
            if signature != tracked.signature:
                tracked.signature = signature
                tracked.poke.set()
                changed = True
        return changed

    async def _scan_loop(self) -> None:
        loop = asyncio.get_running_loop()
        # With inotify the stat sweep is only a safety net. Without it, it is the detector:
        # every STAT_POLL_S while rows flow, backing off (x1.5) to STAT_IDLE_MAX_S when
        # nothing changes, and back to the fast pace at the first change.
        interval = SAFETY_STAT_S if self.inotify is not None else STAT_POLL_S
        last_refresh = last_stat = 0.0
        while not self.stop.stopping:
            now = loop.time()
            try:
                if now - last_refresh >= SESSION_REFRESH_S:
                    await self._refresh(now)
                    last_refresh = now
                if now - last_stat >= interval:
                    changed = self._stat_sweep()
                    last_stat = now
                    if self.inotify is None:
                        interval = STAT_POLL_S if changed else min(STAT_IDLE_MAX_S, interval * 1.5)
            except (NanoclawError, OSError) as exc:
                if not self.deps.disk.refused("the session scan", exc):
                    log.warning("session scan failed: {!r}", exc)
            except Exception as exc:  # a storage error must not end the loop
                if not self.deps.disk.refused("the session scan", exc):
                    log.opt(exception=exc).error("session scan failed: {!r}", exc)
            else:
                self.deps.disk.written("the session scan")
            await asyncio.sleep(min(interval, SESSION_REFRESH_S))

    # -- per-session task ------------------------------------------------------------------

    async def _session_loop(self, tracked: Tracked) -> None:
        worker = tracked.worker
        while not self.stop.stopping:
            timeout = RELEASE_IDLE_S
            if tracked.next_due is not None:
                timeout = min(timeout, max(0.0, (tracked.next_due - self.deps.clock()) / 1000))
            try:
                # asyncio.timeout, not wait_for: no task made per wait (the wake-up is on
                # every row's path).
                async with asyncio.timeout(timeout):
                    await tracked.poke.wait()
            except TimeoutError:
                # Quiet for a while: give the connections back (reopened on the next poke).
                if asyncio.get_running_loop().time() - tracked.last_drain >= RELEASE_IDLE_S:
                    tracked.busy = True
                    try:
                        await self.deps.offload.db(worker.release)
                    finally:
                        tracked.busy = False
                    if tracked.next_due is None:
                        continue
            tracked.poke.clear()
            if self.stop.stopping:
                break
            if tracked.failures and (tracked.next_due or 0) > self.deps.clock():
                # A failed drain waits out its backoff whatever pokes it: a drain refused
                # for a full disk pokes itself (SQLite creates and removes its journal), and
                # would otherwise retry thousands of times a second.
                continue
            tracked.busy = True
            try:
                tracked.next_due = await worker.drain()
                tracked.last_drain = asyncio.get_running_loop().time()
                if tracked.failures:
                    self.deps.disk.written(f"session {worker.session.id}'s deliveries")
                tracked.failures = 0
            except asyncio.CancelledError:
                raise
            except HOSTILE_FILES as exc:
                # Its files were refused or stalled a call: not a transient failure. Recorded
                # and logged once; the next refresh stops watching it.
                tracked.quarantined = True
                try:
                    await self.deps.central.write(
                        quarantine_session, worker.session.id, exc, program="delivery", log=log
                    )
                except Exception as error:  # central.db busy: still never read it again here
                    log.error("could not record the quarantine: {!r} ({!r})", error, exc)
                return
            except Exception as exc:
                # A storage error (disk full, a locked file past the busy timeout, a damaged
                # database): log, back off (1 s doubling to a minute), try again; never let
                # one session's trouble end the program. A full disk is one condition, not a
                # traceback per try.
                tracked.failures += 1
                if not self.deps.disk.refused(f"session {worker.session.id}'s deliveries", exc):
                    log.opt(exception=exc).error(
                        "drain failed ({} in a row): {!r}",
                        tracked.failures,
                        exc,
                        session=worker.session.id,
                    )
                with contextlib.suppress(Exception):  # reopen from scratch next time
                    await self.deps.offload.db(worker.release)
                wait_ms = min(60_000, 1000 * 2 ** min(tracked.failures - 1, 6))
                tracked.next_due = self.deps.clock() + wait_ms
            finally:
                tracked.busy = False

    # -- approvals -------------------------------------------------------------------------

    async def _approval_loop(self) -> None:
        loop = asyncio.get_running_loop()
        seen_version: int | None = None
        last_pass = 0.0
        while not self.stop.stopping:
            try:
                version = self.deps.central.version()
                now = loop.time()
                if version != seen_version or now - last_pass >= 1.0:
                    seen_version = version
                    last_pass = now
                    await self.approvals.tick(self.deps.clock())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self.deps.disk.refused("the approval pass", exc):
                    log.opt(exception=exc).error("approval pass failed: {!r}", exc)
            else:
                self.deps.disk.written("the approval pass")
            await asyncio.sleep(APPROVAL_POLL_S)

    # -- owner notices ---------------------------------------------------------------------

    async def _notice_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last_purge = 0.0
        while not self.stop.stopping:
            try:
                due = await self.deps.central.read(_next_notice_ms)
                if due is not None and due <= self.deps.clock():
                    await send_owner_notices(self.deps)
                if loop.time() - last_purge >= NOTICE_PURGE_S:
                    last_purge = loop.time()
                    await self.deps.central.write(
                        _purge_notices, self.deps.clock() - NOTICE_KEEP_MS
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self.deps.disk.refused("the owner notice pass", exc):
                    log.opt(exception=exc).error("owner notice pass failed: {!r}", exc)
            else:
                self.deps.disk.written("the owner notice pass")
            await asyncio.sleep(NOTICE_POLL_S)
