"""Disk-quota bookkeeping in ``central.db`` (migration 0100): the last measurement of each
folder, the blocks that hold wakes back, and the kernel project ids given to folders.

Written by the sweeper (measurements, blocks) and by ``Sandbox.wake`` (project ids, refused
wakes); read by the CLI (``nanoclaw status``, ``nanoclaw disk``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from nanoclaw_common.store import rows
from nanoclaw_common.store.central.base import CentralPart
from nanoclaw_common.store.sqlite import columns

BLOCK_CLEANUP: Final = "cleanup"  # one session may run, to delete files
BLOCK_HELD: Final = "blocked"  # no session of the scope may run
FLOOR_ID: Final = "data"  # scope_id of the floor's block
PROJECT_ID_BASE: Final = 3_000_000  # first project id we hand out; below is the admin's
_PROJECT_ID_MAX: Final = 0xFFFF_FFFE  # (2**32 - 1 is "no id")
_PROJECT_ID_TRIES: Final = 1_000


class DiskUsageRow(rows.Row, frozen=True):
    scope: str
    scope_id: str
    bytes: int
    entries: int
    complete: int
    method: str
    measured_at_ms: int


class DiskBlock(rows.Row, frozen=True):
    scope: str  # group | session | floor
    scope_id: str
    agent_group_id: str | None
    state: str  # cleanup | blocked
    cleanup_session_id: str | None
    bytes: int
    entries: int
    limit_bytes: int
    limit_entries: int
    reason: str
    blocked_at_ms: int
    cleanup_after_run: str | None = None  # the cleanup session's run when blocked: not it
    notified_at_ms: int | None = None
    refused_wakes: int = 0
    last_refused_at_ms: int | None = None

    def covers(self, session_id: str, agent_group_id: str) -> bool:
        """Whether this block holds back a wake of that session."""
        if self.scope == "floor":
            return True
        if self.scope == "session":
            return self.scope_id == session_id
        return self.scope_id == agent_group_id

    def may_start(self, session_id: str, latest_run_id: str | None) -> bool:
        """Whether a covering block lets this session start a run: only its cleanup
        session, and only once (its latest run is still the one it had when blocked)."""
        return (
            self.state == BLOCK_CLEANUP
            and self.cleanup_session_id == session_id
            and latest_run_id == self.cleanup_after_run
        )

    def lets_run(self, session_id: str, run_id: str | None) -> bool:
        """Whether a covering block lets this session's running ``run_id`` go on: only the
        cleanup run, started after the block."""
        return (
            self.state == BLOCK_CLEANUP
            and self.cleanup_session_id == session_id
            and self.cleanup_ran(run_id)
        )

    def cleanup_ran(self, run_id: str | None) -> bool:
        """Whether ``run_id`` (the cleanup session's latest) is its cleanup run."""
        return run_id is not None and run_id != self.cleanup_after_run


class DiskLedger(CentralPart):
    """Verb-named methods over the disk tables of ``central.db``."""

    # -- measurements ---------------------------------------------------------------------

    def record_usage(self, measured: Iterable[DiskUsageRow]) -> None:
        """Store the latest measurement of each folder, all in one transaction."""
        batch = list(measured)
        if not batch:
            return
        with self.db.write():
            for row in batch:
                self.db.execute(
                    f"INSERT OR REPLACE INTO disk_usage ({columns(DiskUsageRow)})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        row.scope,
                        row.scope_id,
                        row.bytes,
                        row.entries,
                        row.complete,
                        row.method,
                        row.measured_at_ms,
                    ),
                )

    def list_usage(self) -> list[DiskUsageRow]:
        """The last measurement of every measured folder, by scope."""
        return [
            DiskUsageRow(*values)
            for values in self.db.all(
                f"SELECT {columns(DiskUsageRow)} FROM disk_usage ORDER BY scope, scope_id"
            )
        ]

    def forget_usage(self, scope: str, scope_id: str) -> None:
        """Delete a folder's measurement (its scope is gone)."""
        with self.db.write():
            self.db.execute(
                "DELETE FROM disk_usage WHERE scope = ? AND scope_id = ?", (scope, scope_id)
            )

    # -- blocks ---------------------------------------------------------------------------

    def add_block(self, block: DiskBlock) -> bool:
        """Record a block; False when the scope is blocked already (that block stays)."""
        with self.db.write():
            self.db.execute(
                f"INSERT OR IGNORE INTO disk_blocks ({columns(DiskBlock)})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                tuple(getattr(block, name) for name in DiskBlock.__struct_fields__),
            )
            return self.db.changes() == 1

    def hold(self, scope: str, scope_id: str, reason: str) -> bool:
        """A cleanup block becomes a full one (its cleanup run is over, or grew); the owner is
        to be told again. False when there was no cleanup block."""
        with self.db.write():
            self.db.execute(
                "UPDATE disk_blocks SET state = ?, reason = ?, notified_at_ms = NULL"
                " WHERE scope = ? AND scope_id = ? AND state = ?",
                (BLOCK_HELD, reason, scope, scope_id, BLOCK_CLEANUP),
            )
            return self.db.changes() == 1

    def grant_cleanup(
        self, scope: str, scope_id: str, session_id: str, run_id: str | None, *, now: int
    ) -> bool:
        """Let ``session_id`` run once more to delete files (the owner asked,
        ``nanoclaw disk cleanup``): a run after ``run_id`` (its latest), judged from
        ``now``."""
        with self.db.write():
            self.db.execute(
                "UPDATE disk_blocks SET state = ?, cleanup_session_id = ?, cleanup_after_run = ?,"
                " blocked_at_ms = ?, notified_at_ms = NULL WHERE scope = ? AND scope_id = ?",
                (BLOCK_CLEANUP, session_id, run_id, now, scope, scope_id),
            )
            return self.db.changes() == 1

    def mark_notified(self, scope: str, scope_id: str, blocked_at_ms: int, *, now: int) -> None:
        """The block's note and notice are queued (guarded by ``blocked_at_ms``: a block
        granted a new cleanup run meanwhile is told about again)."""
        with self.db.write():
            self.db.execute(
                "UPDATE disk_blocks SET notified_at_ms = ? WHERE scope = ? AND scope_id = ?"
                " AND blocked_at_ms = ?",
                (now, scope, scope_id, blocked_at_ms),
            )

    def lift(self, scope: str, scope_id: str) -> bool:
        """Delete the scope's block; True when there was one."""
        with self.db.write():
            self.db.execute(
                "DELETE FROM disk_blocks WHERE scope = ? AND scope_id = ?", (scope, scope_id)
            )
            return self.db.changes() == 1

    def list_blocks(self) -> list[DiskBlock]:
        """Every block, oldest first."""
        return [
            DiskBlock(*values)
            for values in self.db.all(
                f"SELECT {columns(DiskBlock)} FROM disk_blocks ORDER BY blocked_at_ms, scope_id"
            )
        ]

    def blocks_covering(self, session_id: str, agent_group_id: str) -> list[DiskBlock]:
        """The blocks that hold back a wake of this session (usually none: one indexed
        look-up, on every wake)."""
        return [
            DiskBlock(*values)
            for values in self.db.all(
                f"SELECT {columns(DiskBlock)} FROM disk_blocks WHERE scope = 'floor'"
                " OR (scope = 'session' AND scope_id = ?) OR (scope = 'group' AND scope_id = ?)",
                (session_id, agent_group_id),
            )
        ]

    def note_refused(self, blocks: Iterable[DiskBlock], *, now: int) -> None:
        """Count a wake these blocks refused (shown by ``nanoclaw disk``)."""
        keys = [(block.scope, block.scope_id) for block in blocks]
        with self.db.write():
            for scope, scope_id in keys:
                self.db.execute(
                    "UPDATE disk_blocks SET refused_wakes = refused_wakes + 1,"
                    " last_refused_at_ms = ? WHERE scope = ? AND scope_id = ?",
                    (now, scope, scope_id),
                )

    # -- kernel project ids ---------------------------------------------------------------

    def project_id(
        self, scope: str, scope_id: str, *, taken_elsewhere: Callable[[int], bool]
    ) -> tuple[int, bool]:
        """The folder's project id, handing out the next free one the first time (skipping
        ids ``taken_elsewhere`` says hold files or limits already: another install, or the
        admin's own projects). Returns (id, labelled already)."""
        with self.db.write():
            found = self.db.one(
                "SELECT project_id, labelled_at_ms FROM disk_projects"
                " WHERE scope = ? AND scope_id = ?",
                (scope, scope_id),
            )
            if found is not None:
                return int(found[0]), found[1] is not None
            top = self.db.scalar("SELECT max(project_id) FROM disk_projects")
            candidate = max(PROJECT_ID_BASE, int(top) + 1 if top is not None else 0)
            for _ in range(_PROJECT_ID_TRIES):
                if not taken_elsewhere(candidate):
                    break
                candidate += 1
            else:
                raise OSError(f"no free project id found from {candidate - _PROJECT_ID_TRIES}")
            if candidate > _PROJECT_ID_MAX:
                raise OSError("no project ids left")
            self.db.execute(
                "INSERT INTO disk_projects (scope, scope_id, project_id) VALUES (?, ?, ?)",
                (scope, scope_id, candidate),
            )
            return candidate, False

    def find_project(self, scope: str, scope_id: str) -> int | None:
        """The folder's kernel project id (None: not handed out yet)."""
        value = self.db.scalar(
            "SELECT project_id FROM disk_projects WHERE scope = ? AND scope_id = ?",
            (scope, scope_id),
        )
        return None if value is None else int(value)

    def mark_labelled(self, scope: str, scope_id: str, *, now: int) -> None:
        """Record that the folder was labelled with its project id at ``now``."""
        with self.db.write():
            self.db.execute(
                "UPDATE disk_projects SET labelled_at_ms = ? WHERE scope = ? AND scope_id = ?",
                (now, scope, scope_id),
            )

    def list_projects(self) -> list[tuple[str, str, int]]:
        """(scope, scope id, project id) of every folder handed one, by project id."""
        return [
            (str(scope), str(scope_id), int(project_id))
            for scope, scope_id, project_id in self.db.all(
                "SELECT scope, scope_id, project_id FROM disk_projects ORDER BY project_id"
            )
        ]
