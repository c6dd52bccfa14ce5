"""The sweeper's disk-quota pass (``DiskWatch.check``), run once per sweep before the sessions
are examined; the decisions are ``disk_rules``, the texts ``disk_notes``.

Per pass:
1. the floor: free space on the data folder's filesystem (one ``statvfs``); below
   ``disk_min_free_mb`` every container is stopped and every wake refused until it recovers;
2. the watched folders: the group folder and ``agent/`` of every running session, and every
   blocked folder (to lift the block once it is under quota again);
3. measure: the kernel's count where project quotas apply (one ``quotactl`` per folder, every
   pass), and a walk (``nanoclaw_common.disk.walk``) of each folder at most every
   ``disk_check_interval_s``, sooner when free space fell sharply. Walks share a budget of
   ``disk_walk_entries_per_pass`` entries and ``WALK_TIME_BUDGET_S`` per pass; one that does
   not finish continues in the next pass, so a big folder costs many cheap passes, never
   one long one (the interval counts from the end of a folder's walk);
4. judge each folder (``disk_rules.judge_folder``) and record blocks (``central.disk_blocks``);
5. enforce: a running container that a block does not let run is stopped (TERM, bounded wait,
   KILL: ``Sandbox.stop``); the sweeper then settles its claims like any dead run's;
6. tell: each new block gets its note to the agent (in the session's ``inbound.db``; for a
   cleanup block a trigger, which wakes the one run allowed to delete) and its owner notice,
   once (``notified_at_ms``).

``holds(session)`` tells the sweeper not to wake a session its blocks hold back (the sandbox
refuses such a wake anyway; asking first keeps the log quiet).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec
from loguru import logger

from nanoclaw_common.disk.limits import Limit, Scope, group_limit, human_bytes, session_limit
from nanoclaw_common.disk.quotas import DiskQuotas
from nanoclaw_common.disk.walk import FolderWalk
from nanoclaw_common.diskfull import FullDiskLog
from nanoclaw_common.paths import Layout
from nanoclaw_common.settings import Settings
from nanoclaw_common.states import SessionStatus
from nanoclaw_common.store import CentralStore, InboundStore, rows
from nanoclaw_common.store.disk import (
    BLOCK_CLEANUP,
    BLOCK_HELD,
    FLOOR_ID,
    DiskBlock,
    DiskLedger,
    DiskUsageRow,
)
from nanoclaw_common.store.owner_notices import OwnerNotices
from nanoclaw_sweeper import disk_notes
from nanoclaw_sweeper.disk_rules import (
    FloorVerdict,
    FolderState,
    Measured,
    Verdict,
    judge_floor,
    judge_folder,
    measurement_due,
    sharp_drop,
)

# Per pass, for all walks together: about 5,000 entries on a busy small VPS, so walking costs
# the sweeper at most ~5 % of a core however big the folders are (docs/performance.md).
WALK_TIME_BUDGET_S: Final = 0.05

log = logger.bind(component="disk")

Key = tuple[str, str]  # (scope, scope id)


class DiskPass(msgspec.Struct, kw_only=True):
    stopped: list[str] = []  # sessions stopped for a block this pass
    blocked: list[str] = []  # "<scope>:<id>" blocked this pass (or held after cleanup)
    lifted: list[str] = []
    walked: int = 0  # entries looked at


@dataclass
class _Folder:
    """A watched folder in this pass."""

    scope: Scope
    scope_id: str
    group: rows.AgentGroup | None
    path: Path
    limit: Limit
    running: list[rows.Session]  # its sessions with a live container

    @property
    def key(self) -> Key:
        return (self.scope.value, self.scope_id)


@dataclass
class _Walking:
    walk: FolderWalk
    started_at_ms: int


@dataclass
class DiskWatch:
    settings: Settings
    central: CentralStore
    layout: Layout
    stop: Callable[[str], object]  # Sandbox.stop
    quotas: DiskQuotas | None = None
    clock: Callable[[], float] = time.monotonic  # for the walk's time budget only
    ledger: DiskLedger = field(init=False)
    _walking: dict[Key, _Walking] = field(default_factory=dict, init=False)
    _walked: dict[Key, Measured] = field(default_factory=dict, init=False)
    _walk_ended: dict[Key, int] = field(default_factory=dict, init=False)
    _largest: dict[Key, list[tuple[str, int]]] = field(default_factory=dict, init=False)
    _kernel: dict[Key, Measured] = field(default_factory=dict, init=False)
    _recorded_at: dict[Key, int] = field(default_factory=dict, init=False)
    _previous_free: int | None = field(default=None, init=False)
    _last_free: int | None = field(default=None, init=False)
    _blocks: list[DiskBlock] = field(default_factory=list, init=False)
    _stopped_for: dict[Key, list[str]] = field(default_factory=dict, init=False)
    # The floor's block while the full disk refuses to record it: enforced from memory,
    # written (and then told) as soon as there is room, lifted only after that.
    _floor_unrecorded: DiskBlock | None = field(default=None, init=False)
    _floor_over: bool = field(default=False, init=False)  # free again, the block not lifted yet
    disk: FullDiskLog = field(default_factory=lambda: FullDiskLog(log=log), init=False)

    def __post_init__(self) -> None:
        self.ledger = DiskLedger(self.central)
        if self.quotas is None:
            self.quotas = DiskQuotas(self.settings, self.layout)

    # -- the pass -------------------------------------------------------------------------

    def check(self, live: Collection[str], now: int) -> DiskPass:
        """One pass over the disk (see the module docstring). ``live``: the session ids
        Podman runs a container for. Returns what changed; the sessions in ``stopped`` are
        no longer running."""
        report = DiskPass()
        running = self._running_sessions(live)
        self._floor(now, report)
        # On a full disk the records below may be refused: the floor is still enforced
        # (from memory if need be) and the notices are written on a later pass.
        with self._waits_for_room("the disk quotas' records"):
            blocks = {(b.scope, b.scope_id): b for b in self.ledger.list_blocks()}
            folders = self._watched(running, blocks)
            urgent = sharp_drop(self._previous_free, self._last_free)
            self._previous_free = self._last_free
            self._measure(folders, urgent=urgent, now=now, report=report)
            for folder in folders:
                self._judge(folder, blocks.get(folder.key), now, report)
        self._blocks = self.ledger.list_blocks()
        if self._floor_unrecorded is not None:
            self._blocks.append(self._floor_unrecorded)
        self._enforce(running, now, report)
        with self._waits_for_room("the disk notices"):
            self._notify(now)
        self._stopped_for.clear()
        return report

    @contextlib.contextmanager
    def _waits_for_room(self, what: str) -> Iterator[None]:
        """Writes that a full disk may refuse without harm: done again on a later pass
        (logged as one condition, ``FullDiskLog``). Any other error is raised."""
        try:
            yield
        except Exception as exc:
            if not self.disk.refused(what, exc):
                raise
        else:
            self.disk.written(what)

    def holds(self, session: rows.Session) -> bool:
        """Whether the blocks of the last ``check`` hold this session's wake back."""
        return any(
            block.covers(session.id, session.agent_group_id)
            and not block.may_start(session.id, session.run_id)
            for block in self._blocks
        )

    def close(self) -> None:
        for walking in self._walking.values():
            walking.walk.close()
        self._walking.clear()

    # -- floor ----------------------------------------------------------------------------

    def _floor(self, now: int, report: DiskPass) -> None:
        assert self.quotas is not None
        free = self.quotas.free()
        self._last_free = free
        floor_bytes = self.quotas.floor_bytes
        recorded = next((b for b in self.ledger.list_blocks() if b.scope == Scope.FLOOR), None)
        verdict = judge_floor(
            free, floor_bytes, blocked=recorded is not None or self._floor_unrecorded is not None
        )
        self._floor_over = verdict is FloorVerdict.RECOVERED
        if recorded is None and self._floor_unrecorded is not None:
            # Tripped on a full disk: recorded first (so the owner is told this pass),
            # lifted on a later one.
            if self._record_floor(self._floor_unrecorded):
                report.blocked.append(f"{Scope.FLOOR}:{FLOOR_ID}")
            return
        if verdict is FloorVerdict.LOW and free is not None:
            log.error(
                "only {} free on the data folder's disk (floor {}): stopping every container",
                human_bytes(free),
                human_bytes(floor_bytes),
            )
            self._floor_unrecorded = DiskBlock(
                scope=Scope.FLOOR,
                scope_id=FLOOR_ID,
                agent_group_id=None,
                state=BLOCK_HELD,
                cleanup_session_id=None,
                bytes=free,
                entries=0,
                limit_bytes=floor_bytes,
                limit_entries=0,
                reason=f"only {human_bytes(free)} free on the data folder's disk",
                blocked_at_ms=now,
            )
            self._record_floor(self._floor_unrecorded)
            report.blocked.append(f"{Scope.FLOOR}:{FLOOR_ID}")
        elif verdict is FloorVerdict.RECOVERED:
            assert recorded is not None
            if recorded.notified_at_ms is None:
                return  # the owner is told first (the notice may have met the full disk)
            self.ledger.lift(Scope.FLOOR, FLOOR_ID)
            log.info("free space on the data folder's disk is back: {}", human_bytes(free or 0))
            report.lifted.append(f"{Scope.FLOOR}:{FLOOR_ID}")

    def _record_floor(self, block: DiskBlock) -> bool:
        """Write the floor's block; False when the full disk refused it (kept in memory)."""
        with self._waits_for_room("the disk floor's block"):
            self.ledger.add_block(block)
            self._floor_unrecorded = None
        return self._floor_unrecorded is None

    # -- which folders ----------------------------------------------------------------------

    def _running_sessions(self, live: Collection[str]) -> list[rows.Session]:
        found = []
        for session_id in live:
            session = self.central.get_session(session_id)
            if session is not None and session.status == SessionStatus.ACTIVE:
                found.append(session)  # a closed session's container is an orphan: reaped
        return found

    def _watched(self, running: list[rows.Session], blocks: dict[Key, DiskBlock]) -> list[_Folder]:
        folders: dict[Key, _Folder] = {}
        groups: dict[str, rows.AgentGroup | None] = {}

        def group_of(group_id: str) -> rows.AgentGroup | None:
            if group_id not in groups:
                groups[group_id] = self.central.get_agent_group(group_id)
            return groups[group_id]

        def add(
            scope: Scope, scope_id: str, group: rows.AgentGroup, session: rows.Session | None
        ) -> None:
            key = (scope.value, scope_id)
            folder = folders.get(key)
            if folder is None:
                config = self.central.get_container_config(group.id)
                if scope is Scope.GROUP:
                    path = self.layout.group_dir(group.folder)
                    limit = group_limit(self.settings, config)
                else:
                    path = self.layout.session(group.id, scope_id).agent_dir
                    limit = session_limit(self.settings, config)
                folder = folders[key] = _Folder(scope, scope_id, group, path, limit, [])
            if session is not None:
                folder.running.append(session)

        for session in running:
            group = group_of(session.agent_group_id)
            if group is None:
                continue
            add(Scope.GROUP, group.id, group, session)
            add(Scope.SESSION, session.id, group, session)
        for (scope, scope_id), block in blocks.items():
            if scope == Scope.FLOOR or (scope, scope_id) in folders:
                continue
            group = group_of(block.agent_group_id or "")
            blocked_session = self.central.get_session(scope_id) if scope == Scope.SESSION else None
            gone = group is None or (
                scope == Scope.SESSION
                and (blocked_session is None or blocked_session.status != SessionStatus.ACTIVE)
            )
            if gone:
                self.ledger.lift(scope, scope_id)  # nothing left to protect
                continue
            assert group is not None
            add(Scope(scope), scope_id, group, None)
        return list(folders.values())

    # -- measuring ------------------------------------------------------------------------

    def _measure(self, folders: list[_Folder], *, urgent: bool, now: int, report: DiskPass) -> None:
        assert self.quotas is not None
        watched = {folder.key for folder in folders}
        for key in [k for k in self._walking if k not in watched]:
            self._walking.pop(key).walk.close()  # its container stopped: measured when needed
        for memo in (
            self._walked,
            self._walk_ended,
            self._kernel,
            self._largest,
            self._recorded_at,
        ):
            for key in [k for k in memo if k not in watched]:
                del memo[key]  # walked afresh if its session runs again
        for folder in folders:
            counted = self.quotas.project_usage(
                self.central, folder.scope, folder.scope_id, folder.path
            )
            if counted is not None:
                self._kernel[folder.key] = Measured(counted.bytes, counted.inodes, True, now)
        budget = self.settings.disk_walk_entries_per_pass
        deadline = self.clock() + WALK_TIME_BUDGET_S
        for folder in self._walk_order(folders, urgent=urgent, now=now):
            if budget <= 0 or self.clock() > deadline:
                break
            walking = self._walking.get(folder.key)
            if walking is None:
                try:
                    walk = FolderWalk(
                        folder.path, max_entries=folder.limit.entries, clock=self.clock
                    )
                except FileNotFoundError:
                    # Not made yet (the first wake makes it): it holds nothing.
                    self._walked[folder.key] = Measured(0, 0, True, now)
                    self._walk_ended[folder.key] = now
                    continue
                except OSError as exc:
                    log.warning("cannot measure {}: {}", folder.path, exc)
                    self._walk_ended[folder.key] = now  # tried again after the interval
                    continue
                walking = self._walking[folder.key] = _Walking(walk, now)
            try:
                spent = walking.walk.step(budget, deadline)
            except OSError as exc:
                # Out of descriptors, an I/O error: this walk is dropped (tried again after
                # the interval); the pass and the other folders go on.
                log.warning("walk of {} failed: {}", folder.path, exc)
                self._walking.pop(folder.key).walk.close()
                self._walk_ended[folder.key] = now
                continue
            budget -= spent
            report.walked += spent
            if walking.walk.done:
                del self._walking[folder.key]
                usage = walking.walk.usage()
                walking.walk.close()
                self._walked[folder.key] = Measured(
                    usage.bytes,
                    usage.entries,
                    usage.complete,
                    walking.started_at_ms,
                    usage.stopped_because,
                )
                self._largest[folder.key] = usage.largest
                self._walk_ended[folder.key] = now
        self._record(folders, now)

    def _walk_order(self, folders: list[_Folder], *, urgent: bool, now: int) -> list[_Folder]:
        """The walk in progress first, then the folders due, least recently measured first.
        The interval counts from the end of a folder's last walk: a folder that takes many
        passes to walk is not walked back to back."""
        interval_ms = int(self.settings.disk_check_interval_s * 1000)
        in_progress = [f for f in folders if f.key in self._walking]
        due = [
            f
            for f in folders
            if f.key not in self._walking
            and measurement_due(
                self._walk_ended.get(f.key), interval_ms=interval_ms, now=now, urgent=urgent
            )
        ]
        due.sort(key=lambda f: self._walk_ended.get(f.key, -1))
        return in_progress + due

    def _measured(self, key: Key) -> Measured | None:
        walked = self._walked.get(key)
        kernel = self._kernel.get(key)
        if walked is None:
            return kernel
        return walked.combined(kernel)

    def _record(self, folders: list[_Folder], now: int) -> None:
        """Store measurements for the CLI, each folder at most once per interval."""
        interval_ms = int(self.settings.disk_check_interval_s * 1000)
        batch = []
        for folder in folders:
            measured = self._measured(folder.key)
            last = self._recorded_at.get(folder.key)
            if measured is None or (last is not None and now - last < interval_ms):
                continue
            self._recorded_at[folder.key] = now
            method = "project" if folder.key in self._kernel else "walk"
            batch.append(
                DiskUsageRow(
                    folder.scope.value,
                    folder.scope_id,
                    measured.bytes,
                    measured.entries,
                    int(measured.complete),
                    method,
                    measured.at_ms,
                )
            )
        self.ledger.record_usage(batch)

    # -- judging and acting ---------------------------------------------------------------

    def _judge(self, folder: _Folder, block: DiskBlock | None, now: int, report: DiskPass) -> None:
        measured = self._measured(folder.key)
        cleanup_running = cleanup_ran = False
        if block is not None and block.state == BLOCK_CLEANUP and block.cleanup_session_id:
            cleanup = self.central.get_session(block.cleanup_session_id)
            cleanup_ran = cleanup is not None and block.cleanup_ran(cleanup.run_id)
            cleanup_running = cleanup_ran and any(
                s.id == block.cleanup_session_id for s in folder.running
            )
        verdict = judge_folder(
            FolderState(
                limit=folder.limit,
                measured=measured,
                block=block,
                cleanup_running=cleanup_running,
                cleanup_ran=cleanup_ran,
            )
        )
        label = f"{folder.scope}:{folder.scope_id}"
        if verdict is Verdict.OVER and measured is not None:
            reason = _over_reason(folder, measured)
            cleanup = folder.running[0] if folder.running else None
            added = self.ledger.add_block(
                DiskBlock(
                    scope=folder.scope.value,
                    scope_id=folder.scope_id,
                    agent_group_id=folder.group.id if folder.group else None,
                    state=BLOCK_CLEANUP if cleanup else BLOCK_HELD,
                    cleanup_session_id=cleanup.id if cleanup else None,
                    cleanup_after_run=cleanup.run_id if cleanup else None,
                    bytes=measured.bytes,
                    entries=measured.entries,
                    limit_bytes=folder.limit.bytes,
                    limit_entries=folder.limit.entries,
                    reason=reason,
                    blocked_at_ms=now,
                )
            )
            if added:
                log.warning("{} {} over its disk quota: {}", folder.scope, folder.path, reason)
                report.blocked.append(label)
        elif verdict is Verdict.HOLD and block is not None and measured is not None:
            grew = not cleanup_ran or cleanup_running
            why = (
                f"grew to {human_bytes(measured.bytes)} in its cleanup run"
                if grew
                else f"still {human_bytes(measured.bytes)} ({measured.entries} entries) after"
                " its cleanup run"
            )
            if self.ledger.hold(folder.scope, folder.scope_id, why):
                log.warning("{} {} stays blocked: {}", folder.scope, folder.path, why)
                report.blocked.append(label)
        elif verdict is Verdict.LIFT and self.ledger.lift(folder.scope, folder.scope_id):
            log.info("{} {} is under its disk quota again", folder.scope, folder.path)
            report.lifted.append(label)

    def _enforce(self, running: list[rows.Session], now: int, report: DiskPass) -> None:
        """Stop every running container that a block does not let run: the folder's runs
        when it was found over, the cleanup run when it was held, anything that slipped past
        the gate while the block was being written."""
        for session in running:
            blocking = [
                block
                for block in self._blocks
                if block.covers(session.id, session.agent_group_id)
                and not block.lets_run(session.id, session.run_id)
                # Free again, the floor only waits to be told before it is lifted.
                and not (block.scope == Scope.FLOOR and self._floor_over)
            ]
            if not blocking:
                continue
            block = blocking[0]
            log.warning(
                "stopping the container: {}", block.reason, session=session.id, run=session.run_id
            )
            with self._waits_for_room("recording stopped containers"):
                self.stop(session.id)  # TERM, KILL, removed; then its status (may be refused)
            report.stopped.append(session.id)
            self._stopped_for.setdefault((block.scope, block.scope_id), []).append(session.id)
            if block.cleanup_session_id != session.id:
                # Context for the agent's next run: not worth holding the pass for.
                with self._waits_for_room("the notes to stopped sessions"):
                    self._write_note(
                        session,
                        block,
                        disk_notes.interrupted_note(block),
                        trigger=False,
                        now=now,
                        suffix=f"-{session.id}",
                    )

    def _notify(self, now: int) -> None:
        """Each block's owner notice and, for a cleanup block, the note that wakes its run;
        once per block state (``notified_at_ms``)."""
        for block in self._blocks:
            if block.notified_at_ms is not None or block is self._floor_unrecorded:
                continue
            key = (block.scope, block.scope_id)
            stopped = self._stopped_for.pop(key, [])
            if block.cleanup_session_id and block.scope != Scope.FLOOR:
                session = self.central.get_session(block.cleanup_session_id)
                if session is not None:
                    note = disk_notes.agent_note(block, self._largest.get(key, []))
                    self._write_note(
                        session, block, note, trigger=block.state == BLOCK_CLEANUP, now=now
                    )
            group = (
                self.central.get_agent_group(block.agent_group_id) if block.agent_group_id else None
            )
            folder = self._host_folder(block, group)
            # Coalesced like delivery's (one pending disk notice per group, counting), the
            # cause being this block state: a re-run after a crash counts nothing twice.
            OwnerNotices(self.central).queue(
                block.agent_group_id or disk_notes.FLOOR_NOTICE_GROUP,
                disk_notes.NOTICE_KIND,
                disk_notes.notice_cause(block),
                disk_notes.owner_notice(block, group, folder, stopped),
                now=now,
            )
            self.ledger.mark_notified(block.scope, block.scope_id, block.blocked_at_ms, now=now)

    def _host_folder(self, block: DiskBlock, group: rows.AgentGroup | None) -> Path | None:
        if group is None:
            return None
        if block.scope == Scope.GROUP:
            return self.layout.group_dir(group.folder)
        return self.layout.session(group.id, block.scope_id).agent_dir

    def _write_note(
        self,
        session: rows.Session,
        block: DiskBlock,
        note: str,
        *,
        trigger: bool,
        now: int,
        suffix: str = "",
    ) -> None:
        paths = self.layout.session(session.agent_group_id, session.id)
        if not paths.inbound_db.exists():
            return
        inbound = InboundStore(paths.inbound_db)
        try:
            if disk_notes.write_note(inbound, note, block, trigger=trigger, now=now, suffix=suffix):
                log.info(
                    "disk note to the agent (trigger={}): {}",
                    int(trigger),
                    note,
                    session=session.id,
                )
        finally:
            inbound.close()


def _over_reason(folder: _Folder, measured: Measured) -> str:
    """Why the folder is over, in our words (never a name the container chose)."""
    what = "the group folder" if folder.scope is Scope.GROUP else "the session's agent/ folder"
    if measured.stopped_because:
        why = measured.stopped_because
    elif folder.limit.bytes and measured.bytes > folder.limit.bytes:
        why = f"{human_bytes(measured.bytes)} of {human_bytes(folder.limit.bytes)} allowed"
    else:
        why = f"{measured.entries} entries of {folder.limit.entries} allowed"
    return f"{what} is over its disk quota: {why}"
