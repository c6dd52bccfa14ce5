"""Quota limits per folder, from the settings and the group's ``container_configs`` row.

Two scopes: ``group`` is the agent group's folder (``groups/<folder>``, ``/workspace`` in every
container of the group), ``session`` a session's ``agent/`` folder. A limit has two parts,
bytes (allocated blocks, so ``fallocate`` and sparse files count what they take) and entries
(every name in the folder: a million empty files fill a disk's inode table as surely as one big
file fills its blocks). 0 means no limit for that part.
"""

from __future__ import annotations

import enum
from typing import Final

import msgspec

from nanoclaw_common.settings import Settings
from nanoclaw_common.store.rows import ContainerConfig

MIB: Final = 1024 * 1024
# How far past its quota a folder may go while its agent cleans up, and where the kernel's hard
# limit sits in project-quota mode: 5 % of the quota, at least 16 MiB / 500 entries. A run
# that deletes needs room to write its reply, its transcript and SQLite's journal.
GRACE_FRACTION: Final = 0.05
GRACE_MIN_BYTES: Final = 16 * MIB
GRACE_MIN_ENTRIES: Final = 500


class Scope(enum.StrEnum):
    GROUP = "group"  # groups/<folder>: /workspace, shared by the group's sessions
    SESSION = "session"  # sessions/<group>/<session>/agent
    FLOOR = "floor"  # the data folder's filesystem (its free space), for blocks only


class Limit(msgspec.Struct, frozen=True):
    bytes: int  # 0: no limit
    entries: int  # 0: no limit

    @property
    def unlimited(self) -> bool:
        return not self.bytes and not self.entries

    def over(self, used_bytes: int, used_entries: int) -> bool:
        return bool(
            (self.bytes and used_bytes > self.bytes)
            or (self.entries and used_entries > self.entries)
        )

    def plus_grace(self) -> Limit:
        """The limit with the cleanup grace on top (each part that has a limit)."""
        return Limit(
            self.bytes + max(GRACE_MIN_BYTES, int(self.bytes * GRACE_FRACTION))
            if self.bytes
            else 0,
            self.entries + max(GRACE_MIN_ENTRIES, int(self.entries * GRACE_FRACTION))
            if self.entries
            else 0,
        )


def group_limit(settings: Settings, config: ContainerConfig | None) -> Limit:
    override = config.group_disk_quota_mb if config else None
    megabytes = settings.group_disk_quota_mb if override is None else override
    return Limit(max(0, megabytes) * MIB, settings.group_disk_quota_entries)


def session_limit(settings: Settings, config: ContainerConfig | None) -> Limit:
    override = config.session_disk_quota_mb if config else None
    megabytes = settings.session_disk_quota_mb if override is None else override
    return Limit(max(0, megabytes) * MIB, settings.session_disk_quota_entries)


def human_bytes(count: int) -> str:
    """``1.5 GiB``, ``312 MiB``, ``900 B``: for notes, notices and the CLI."""
    if count < 1024:
        return f"{count} B"
    value = float(count)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")
