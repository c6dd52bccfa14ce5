"""The sweeper: one pass over the active sessions, acting on ``liveness.judge``.

Per session, in this order:
1. ack sync: completed/failed acks in outbound.db are copied onto messages_in;
2. recurrence: finished occurrences of recurring rows get their next occurrence;
3. liveness: observe, judge, act — stop dead or runaway runs and settle their claims, stop idle
   containers, collect sessions with due work;
then capacity (wake within ``max_containers``, stopping idle containers for room) and orphan
reaping (this install's containers whose session is gone or closed).

Before all that, disk quotas (``disk.DiskWatch``: measure the running sessions' folders, stop
the containers of a folder over its quota, hold back wakes it blocks; a session stopped there
is examined below as stopped, so its claims are settled and retried), and before that, restart
requests (``restart_requests``, written by delivery after an approval
changed a group's image or MCP config; delivery never talks to Podman): a running session
whose run started before its request is stopped, so the same pass (or the next, once the
stopped run's claims are settled) wakes a fresh run for the due ``on_wake`` note.

The sweeper is also who wakes a stopped session for rows delivery writes (agent-to-agent
messages, system notes): delivery only commits them with ``trigger=1``; a running runner sees
them through inotify, and a stopped session's ``inbound.db`` changed, so the next pass opens it
and finds due work.

A quiet, stopped session costs two ``stat`` calls per pass: it is only opened when one of its
files changed or when its next scheduled row falls due. That keeps a pass over 1,000 sessions
cheap enough to run every second, so due work is woken within about a second.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import msgspec
from loguru import logger

from nanoclaw_common.hostfs import Dir, unblock
from nanoclaw_common.ids import new_id
from nanoclaw_common.paths import Layout, SessionPaths
from nanoclaw_common.sandbox.settle import settle_leftover_claims
from nanoclaw_common.sessions import refresh_projections
from nanoclaw_common.settings import Settings
from nanoclaw_common.stall import Stalled, StallGuard
from nanoclaw_common.states import ContainerStatus, SessionStatus
from nanoclaw_common.store import CentralStore, InboundStore, OutboundReader, rows
from nanoclaw_common.store.quarantine import HOSTILE_FILES, Quarantine, quarantine_session
from nanoclaw_common.store.runs import RunLedger, leftover_claims
from nanoclaw_common.store.sqlite import StoreError
from nanoclaw_common.untrusted import shown_text
from nanoclaw_sweeper.disk import DiskWatch
from nanoclaw_sweeper.liveness import (
    KILLS,
    Observation,
    Policy,
    RestartAction,
    Verdict,
    judge,
    judge_restart,
    plan_capacity,
)
from nanoclaw_sweeper.recurrence import next_occurrence

log = logger.bind(component="sweeper")


class RunningContainer(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def session_id(self) -> str: ...
    @property
    def run_id(self) -> str: ...


class SweeperSandbox(Protocol):
    """What the sweeper needs from ``nanoclaw_common.sandbox.Sandbox``."""

    def running(self) -> Sequence[RunningContainer]: ...
    def wake(self, session: rows.Session) -> bool: ...
    def stop(self, session_id: str, timeout_s: float = ...) -> object: ...
    def orphans(self, live_session_ids: Collection[str]) -> Sequence[RunningContainer]: ...
    def remove(self, name: str) -> bool: ...


class PassReport(msgspec.Struct, kw_only=True):
    sessions: int = 0
    examined: int = 0
    acks_synced: int = 0
    recurrences: int = 0
    killed: list[str] = []
    stopped_idle: list[str] = []
    settled: list[str] = []
    woken: list[str] = []
    restarted: list[str] = []  # stopped for a restart request (a fresh run follows)
    quarantined: list[str] = []  # its files were refused or stalled now: no longer served
    deferred: list[str] = []  # due work waiting for a container slot
    orphans_removed: list[str] = []
    disk_stopped: list[str] = []  # stopped for a disk block (over quota, or the floor)
    disk_blocked: list[str] = []  # "<scope>:<id>" found over quota (or held) in this pass
    disk_lifted: list[str] = []
    disk_held: list[str] = []  # due work waiting for its folder to be under quota again


@dataclass
class ContainerSide:
    """What the sweeper reads from a session's container-written files, all at once, on a
    worker with a deadline (``stall.StallGuard``): the one part of a pass a planted file
    could stall."""

    claims: list[rows.Ack]  # processing claims of the run the host recorded
    acks_synced: int  # completed and failed acks copied onto messages_in
    state: rows.ContainerState | None
    last_activity_ms: int | None
    heartbeat_ms: int | None  # mtime of agent/heartbeat; None when absent or not a file


def read_container_side(
    paths: SessionPaths, run_id: str | None, inbound: InboundStore
) -> ContainerSide:
    """Also syncs the acks into ``inbound``: they stream from ``outbound.db`` one at a time
    (``settled_acks``), however many the container wrote."""
    claims = leftover_claims(paths.outbound_db, run_id)
    synced = 0
    state = activity = None
    if os.path.lexists(paths.outbound_db):
        outbound = OutboundReader(paths.outbound_db)
        try:
            synced = inbound.sync_acks(outbound.settled_acks())
            state = outbound.container_state()
            activity = outbound.last_activity_ms()
        finally:
            outbound.close()
    heartbeat = None
    with contextlib.suppress(FileNotFoundError), Dir.trusted(paths.agent_dir) as agent:
        heartbeat = agent.mtime_ms("heartbeat")
    return ContainerSide(claims, synced, state, activity, heartbeat)


@dataclass
class _Seen:
    """What a session's files looked like at the last pass that examined it."""

    inbound_mtime_ns: int = -1
    outbound_mtime_ns: int = -1
    next_due_ms: int | None = None


@dataclass
class Sweeper:
    settings: Settings
    central: CentralStore
    sandbox: SweeperSandbox
    # Proof of life for the watchdog (nanoclaw_common.alive), called between two sessions:
    # a pass stuck on one stops it, a long pass over many does not.
    beat: Callable[[], object] = lambda: None
    layout: Layout = field(init=False)
    policy: Policy = field(init=False)
    ledger: RunLedger = field(init=False)
    session_io: StallGuard = field(init=False)
    disk: DiskWatch = field(init=False)
    _seen: dict[str, _Seen] = field(default_factory=dict, init=False)
    _read_errors: dict[str, str] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.layout = Layout(self.settings.home_path)
        self.policy = Policy.from_settings(self.settings)
        self.ledger = RunLedger(self.central)
        self.session_io = StallGuard(self.settings.session_io_limit_s, threads=2, name="sweep-io")
        self.disk = DiskWatch(self.settings, self.central, self.layout, self.sandbox.stop)

    # -- one pass ------------------------------------------------------------------------

    def sweep(self, now: int) -> PassReport:
        report = PassReport()
        live = {c.session_id: c for c in self.sandbox.running()}
        self._restart_requested(live, now, report)
        self._disk_quotas(live, now, report)
        # Listed after the restarts, so a session stopped just now is seen as stopped.
        sessions = self.central.list_sessions(status=SessionStatus.ACTIVE)
        quarantined = Quarantine(self.central).ids()
        report.sessions = len(sessions)
        wanted: list[rows.Session] = []
        idle_running: list[tuple[int, str]] = []  # (idle since, session id)
        for session in sessions:
            self.beat()
            paths = self.layout.session(session.agent_group_id, session.id)
            running = session.id in live
            if session.id in quarantined:
                # Not read at all; a hostile agent's container does not keep running.
                if running:
                    log.warning("stopping a quarantined session's container", session=session.id)
                    self.sandbox.stop(session.id)
                continue
            if not running and not self._worth_examining(session, paths, now):
                continue
            report.examined += 1
            try:
                verdict, idle_since = self._examine(session, paths, running, now, report)
            except HOSTILE_FILES as exc:
                quarantine_session(self.central, session.id, exc, program="sweeper", log=log)
                report.quarantined.append(session.id)
                if running:
                    self.sandbox.stop(session.id)
                continue
            except StoreError as exc:
                # One session's database trouble (its lock held past the busy timeout, a file
                # the container damaged) costs that session this pass, not everyone's.
                self._read_failed(session.id, exc)
                continue
            self._read_errors.pop(session.id, None)
            if verdict is Verdict.WAKE:
                wanted.append(session)
            elif running and verdict is Verdict.OK and idle_since is not None:
                idle_running.append((idle_since, session.id))
        self._wake_within_capacity(wanted, len(live), idle_running, report, now)
        self._reap_orphans({s.id for s in sessions}, report)
        return report

    def _read_failed(self, session_id: str, exc: BaseException) -> None:
        """Log a session's read failure when it is new (not once a second while it lasts)."""
        text = shown_text(repr(exc))
        if self._read_errors.get(session_id) != text:
            self._read_errors[session_id] = text
            log.warning("session skipped this pass: {}", text, session=session_id)

    def _restart_requested(
        self, live: dict[str, RunningContainer], now: int, report: PassReport
    ) -> None:
        """Carry out restart requests; ``live`` loses the sessions stopped here. A request
        is deleted only after its stop returned: a Podman error leaves it for the next pass."""
        for request in self.central.list_restart_requests():
            session = self.central.get_session(request.session_id)
            action = RestartAction.DROP
            if session is not None and session.status == SessionStatus.ACTIVE:
                action = judge_restart(
                    request.requested_at_ms,
                    running=session.id in live,
                    container_status=session.container_status,
                    run_started_at_ms=session.run_started_at_ms,
                    policy=self.policy,
                    now=now,
                )
            if action is RestartAction.WAIT:
                continue
            if action is RestartAction.STOP and session is not None:
                log.info(
                    "restarting the run: {}", request.reason, session=session.id, run=session.run_id
                )
                self.sandbox.stop(session.id)  # TERM, bounded wait, KILL; marks it stopped
                del live[session.id]
                # Examine it in this pass whatever its files say: its due note (or any pending
                # row) wakes the fresh run.
                self._seen.pop(session.id, None)
                report.restarted.append(session.id)
            self.central.clear_restart_request(request.session_id, request.requested_at_ms)

    def _disk_quotas(self, live: dict[str, RunningContainer], now: int, report: PassReport) -> None:
        """The disk pass; ``live`` loses the sessions it stopped, which this pass then
        examines as stopped (their claims are settled like a dead run's)."""
        checked = self.disk.check(list(live), now)
        for session_id in checked.stopped:
            live.pop(session_id, None)
            self._seen.pop(session_id, None)
        report.disk_stopped = checked.stopped
        report.disk_blocked = checked.blocked
        report.disk_lifted = checked.lifted

    def _worth_examining(self, session: rows.Session, paths: SessionPaths, now: int) -> bool:
        seen = self._seen.setdefault(session.id, _Seen())
        inbound_mtime = _mtime_ns(paths.inbound_db)
        outbound_mtime = _mtime_ns(paths.outbound_db)
        changed = (inbound_mtime, outbound_mtime) != (
            seen.inbound_mtime_ns,
            seen.outbound_mtime_ns,
        )
        due = seen.next_due_ms is not None and seen.next_due_ms <= now
        believed_running = session.container_status != ContainerStatus.STOPPED
        return changed or due or believed_running

    def _examine(
        self,
        session: rows.Session,
        paths: SessionPaths,
        running: bool,
        now: int,
        report: PassReport,
    ) -> tuple[Verdict, int | None]:
        """Look at one session and act on it; the verdict, and for a healthy running
        container with nothing pending, since when it has been idle."""
        if not paths.inbound_db.exists():
            return Verdict.OK, None
        # The files' state is taken *before* reading them: a row another program commits
        # while this pass reads (delivery's agent-to-agent message, a note) changes the mtime
        # again, so the next pass looks. Taken after, such a row could go unseen for good.
        # Our own writes below (ack sync, settling) cost one extra look next pass, no more.
        inbound_mtime = _mtime_ns(paths.inbound_db)
        outbound_mtime = _mtime_ns(paths.outbound_db)
        inbound = InboundStore(paths.inbound_db)
        try:
            side = self.session_io.call(
                session.id,
                "reading the session's agent/ files",
                lambda: read_container_side(paths, session.run_id, inbound),
                release=lambda: unblock(paths.agent_dir),
            )
        except BaseException as exc:
            if not isinstance(exc, Stalled):  # else the stuck worker still holds it
                inbound.close()
            raise
        try:
            # A settled run's claims stay in outbound.db until the next run drops them (the
            # host never writes that file); they are history, not work in progress.
            claims = [c for c in side.claims if not self.ledger.is_settled(session.id, c.run_id)]
            report.acks_synced += side.acks_synced
            report.recurrences += self._advance_recurrences(session, inbound, now)
            state = side.state
            out_activity = side.last_activity_ms
            # Tool and claim times count only when they belong to the run Podman is running.
            current = state if state and running and state.run_id == session.run_id else None
            obs = Observation(
                running=running,
                run_started_at_ms=session.run_started_at_ms,
                heartbeat_ms=side.heartbeat_ms,
                claims=len(claims),
                due=inbound.count_due(now=now),
                pending=inbound.count_pending(),
                turns=state.turns if state and state.run_id == session.run_id else 0,
                tool_started_at_ms=current.tool_started_at_ms if current else None,
                tool_declared_timeout_ms=current.tool_declared_timeout_ms if current else None,
                oldest_claim_ms=min(
                    (c.status_changed_ms for c in claims if c.run_id == session.run_id),
                    default=None,
                ),
                last_activity_ms=max(
                    [t for t in (inbound.last_written_ms(), out_activity) if t is not None],
                    default=None,
                ),
            )
            verdict = judge(obs, self.policy, now)
            self._act(
                session, verdict, claims, inbound=inbound, now=now, report=report, running=running
            )
            seen = self._seen.setdefault(session.id, _Seen())
            seen.next_due_ms = inbound.next_due_after(now)
            if verdict is Verdict.SETTLE or verdict in KILLS:
                # Settling pushed the claimed rows back; other rows may be due already (a
                # restart's on_wake note), and no file will change to say so: look next pass.
                seen.next_due_ms = now
        finally:
            inbound.close()
        seen.inbound_mtime_ns = inbound_mtime
        seen.outbound_mtime_ns = outbound_mtime
        idle_since = None
        if obs.pending == 0 and obs.claims == 0:
            idle_since = max(obs.last_activity_ms or 0, obs.run_started_at_ms or 0)
        return verdict, idle_since

    def _act(
        self,
        session: rows.Session,
        verdict: Verdict,
        claims: list[rows.Ack],
        *,
        inbound: InboundStore,
        now: int,
        report: PassReport,
        running: bool,
    ) -> None:
        if verdict in KILLS:
            log.warning("stopping run: {}", verdict.value, session=session.id, run=session.run_id)
            self.sandbox.stop(session.id)  # marks the session stopped
            report.killed.append(session.id)
            self._settle(session, claims, inbound, now, report)
            return
        if verdict is Verdict.STOP_IDLE:
            log.info("stopping idle container", session=session.id, run=session.run_id)
            self.sandbox.stop(session.id)
            report.stopped_idle.append(session.id)
            return
        if verdict is Verdict.SETTLE:
            self._settle(session, claims, inbound, now, report)
        up = running and verdict is Verdict.OK
        if up and session.container_status != ContainerStatus.RUNNING:
            # Judged OK while running means this run's heartbeat arrived: it is up.
            self.central.set_container_status(session.id, ContainerStatus.RUNNING, now=now)
        if not running and self._believed_running(session, now):
            # Podman has no live container (it exited by itself, or the host rebooted).
            self.central.set_container_status(session.id, ContainerStatus.STOPPED, now=now)
            # After the write: a full disk refuses it each pass, and that is logged once.
            log.info("container is gone", session=session.id, run=session.run_id)

    def _believed_running(self, session: rows.Session, now: int) -> bool:
        if session.container_status == ContainerStatus.RUNNING:
            return True
        # "starting" within the spawn grace may simply not be visible in Podman yet.
        started = session.run_started_at_ms or 0
        return (
            session.container_status == ContainerStatus.STARTING
            and now - started >= self.policy.spawn_grace_ms
        )

    def _settle(
        self,
        session: rows.Session,
        claims: list[rows.Ack],
        inbound: InboundStore,
        now: int,
        report: PassReport,
    ) -> None:
        settled = settle_leftover_claims(
            session_id=session.id,
            claims=claims,
            inbound=inbound,
            ledger=self.ledger,
            max_tries=self.settings.max_tries,
            now=now,
        )
        if settled.runs:
            report.settled.append(session.id)

    def _advance_recurrences(self, session: rows.Session, inbound: InboundStore, now: int) -> int:
        advanced = 0
        for done in inbound.recurring_done():
            assert done.recurrence is not None
            scheduled = done.process_after_ms or done.timestamp_ms
            try:
                due = next_occurrence(done.recurrence, scheduled, self.settings.tz, now)
            except ValueError as exc:
                # A bad expression stops the series (the agent sees the task gone from
                # list_tasks); it is not retried every second.
                log.warning(
                    "recurrence dropped: {}", shown_text(exc), session=session.id, message=done.id
                )
                inbound.advance_recurrence(done, new_id("task", now), now, now=now)
                continue
            prefix = "task" if done.kind == "task" else "msg"
            if inbound.advance_recurrence(done, new_id(prefix, now), due, now=now):
                advanced += 1
                log.info("next occurrence due {}", due, session=session.id, message=done.id)
        return advanced

    # -- capacity and orphans ------------------------------------------------------------

    def _wake_within_capacity(
        self,
        wanted: list[rows.Session],
        running: int,
        idle_running: list[tuple[int, str]],
        report: PassReport,
        now: int,
    ) -> None:
        held = [s for s in wanted if self.disk.holds(s)]
        for session in held:
            # Looked at again every pass, so it is woken in the pass that lifts its block.
            self._seen.setdefault(session.id, _Seen()).next_due_ms = now
        report.disk_held = [s.id for s in held]
        wanted = [s for s in wanted if s.id not in report.disk_held]
        by_id = {s.id: s for s in wanted}
        idle_ids = [sid for _, sid in sorted(idle_running)]
        to_wake, to_stop = plan_capacity(
            [s.id for s in wanted], running, idle_ids, self.settings.max_containers
        )
        for session_id in to_stop:
            log.info("stopping idle container to make room", session=session_id)
            self.sandbox.stop(session_id)
            report.stopped_idle.append(session_id)
        for session_id in to_wake:
            session = by_id[session_id]
            refresh_projections(self.central, self.layout, session)
            if self.sandbox.wake(session):
                report.woken.append(session_id)
        report.deferred = [s.id for s in wanted if s.id not in to_wake]
        if report.deferred:
            log.info("{} session(s) wait for a container slot", len(report.deferred))

    def _reap_orphans(self, active_ids: set[str], report: PassReport) -> None:
        for orphan in self.sandbox.orphans(active_ids):
            if self.sandbox.remove(orphan.name):
                log.info("removed orphan container {}", orphan.name, session=orphan.session_id)
                report.orphans_removed.append(orphan.name)


def _mtime_ns(path: Path) -> int:
    # The entry itself: a planted link must not make us watch another file.
    try:
        return os.stat(path, follow_symlinks=False).st_mtime_ns
    except FileNotFoundError:
        return 0
