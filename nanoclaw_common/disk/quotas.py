"""Which quota mechanism applies to a folder, preparing folders at wake time, and the wake gate.

- ``choose``: kernel project quotas (``Mechanism.PROJECT``) where the folder's filesystem
  enforces them and we are root, else the sweeper's walk (``Mechanism.WALK``), with the reason.
  ``disk_quota_mechanism`` can force either (``project`` makes the sweeper refuse to start
  where the kernel cannot).
- ``DiskQuotas.prepare`` (from ``Sandbox.wake``, before the container starts): in project
  mode, give the folder its project id (once: every entry in it, then inherited) and set the
  kernel's hard limit to the quota plus the cleanup grace. Nothing to do in walk mode.
- ``DiskQuotas.refusal`` (from ``Sandbox.wake``): why this session may not start now, or None:
  a block on its folder or its group's folder (``central.disk_blocks``, written by the
  sweeper), or the data folder's filesystem below ``disk_min_free_mb``. A refused wake leaves
  the message pending; it is woken when the block is lifted.

Mounts rarely change, so the choice is kept for ``CHOICE_TTL_S``.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import msgspec
from loguru import logger

from nanoclaw_common.disk import project
from nanoclaw_common.disk.limits import MIB, Limit, Scope, group_limit, human_bytes, session_limit
from nanoclaw_common.disk.mounts import MountFacts, mount_of
from nanoclaw_common.disk.walk import open_folder
from nanoclaw_common.paths import Layout, SessionPaths
from nanoclaw_common.settings import Settings
from nanoclaw_common.store.central import CentralPart
from nanoclaw_common.store.disk import DiskBlock, DiskLedger
from nanoclaw_common.store.rows import AgentGroup, ContainerConfig, Session

CHOICE_TTL_S: Final = 60.0
log = logger.bind(component="disk")


class Mechanism(enum.StrEnum):
    PROJECT = "project"  # the kernel refuses writes past the limit (EDQUOT)
    WALK = "walk"  # the sweeper measures and stops the container


class Choice(msgspec.Struct, frozen=True):
    mechanism: Mechanism
    reason: str
    mount: MountFacts | None = None


def choose(setting: str, folder: Path, *, mountinfo: str | None = None) -> Choice:
    """The mechanism for folders under ``folder`` (``groups/`` or ``sessions/``)."""
    if setting == "walk":
        return Choice(Mechanism.WALK, "disk_quota_mechanism = walk")
    if os.geteuid() != 0:
        return Choice(Mechanism.WALK, "kernel quotas need root (rootless Podman)")
    mount = mount_of(folder, mountinfo)
    if mount is None:
        return Choice(Mechanism.WALK, f"no mount found for {folder}")
    where = f"{mount.fstype} at {mount.mount_point}"
    if not mount.project_quota_enforced:
        return Choice(Mechanism.WALK, f"{where} is not mounted with prjquota", mount)
    try:
        fd = open_folder(folder)
    except OSError as exc:
        return Choice(Mechanism.WALK, f"cannot open {folder}: {exc.strerror}", mount)
    try:
        refused = project.probe(mount, fd)
    finally:
        os.close(fd)
    if refused is not None:
        return Choice(Mechanism.WALK, f"{where}: {refused}", mount)
    return Choice(Mechanism.PROJECT, f"{where} enforces project quotas", mount)


def free_bytes(path: Path) -> int | None:
    """Space an unprivileged writer can still use on ``path``'s filesystem (root has the
    reserved blocks on top, which leaves central.db a little more)."""
    try:
        info = os.statvfs(path)
    except OSError:
        return None
    return info.f_bavail * info.f_frsize


def floor_refusal(free: int | None, floor_bytes: int) -> str | None:
    if not floor_bytes or free is None or free >= floor_bytes:
        return None
    return (
        f"the data folder's filesystem has {human_bytes(free)} free, less than"
        f" disk_min_free_mb ({human_bytes(floor_bytes)})"
    )


def block_refusal(blocks: list[DiskBlock], session: Session) -> DiskBlock | None:
    """The first block that holds this session's wake back (a cleanup block lets its one
    session start one run), or None."""
    return next((b for b in blocks if not b.may_start(session.id, session.run_id)), None)


class DiskQuotas:
    """One per process that wakes containers (the sandbox) or measures them (the sweeper)."""

    def __init__(
        self,
        settings: Settings,
        layout: Layout,
        *,
        clock: Callable[[], float] = time.monotonic,
        free_space: Callable[[Path], int | None] = free_bytes,
    ) -> None:
        self.settings = settings
        self.layout = layout
        self.floor_bytes = settings.disk_min_free_mb * MIB
        self._clock = clock
        self._free_space = free_space
        self._choices: dict[Scope, tuple[float, Choice]] = {}
        self._unreadable: set[Path] = set()

    def free(self) -> int | None:
        """Free space on the data folder's filesystem (None when statvfs failed)."""
        return self._free_space(self.layout.home)

    def choice(self, scope: Scope) -> Choice:
        folder = self.layout.groups_dir if scope is Scope.GROUP else self.layout.sessions_dir
        cached = self._choices.get(scope)
        now = self._clock()
        if cached is not None and now - cached[0] < CHOICE_TTL_S:
            return cached[1]
        folder.mkdir(parents=True, exist_ok=True)
        decided = choose(self.settings.disk_quota_mechanism, folder)
        if cached is not None and cached[1] != decided:
            log.info(
                "{} folders: now {} quotas ({})", scope.value, decided.mechanism, decided.reason
            )
        self._choices[scope] = (now, decided)
        return decided

    # -- the wake gate --------------------------------------------------------------------

    def refusal(self, central: CentralPart, session: Session, *, now: int) -> str | None:
        """Why the session may not start now (recorded against the block), or None."""
        floor = floor_refusal(self.free(), self.floor_bytes)
        ledger = DiskLedger(central)
        blocks = ledger.blocks_covering(session.id, session.agent_group_id)
        holding = block_refusal(blocks, session)
        if floor is None and holding is None:
            return None
        if holding is not None:
            ledger.note_refused([holding], now=now)
            return f"disk quota: {holding.reason}"
        return f"disk: {floor}"

    # -- preparing folders ----------------------------------------------------------------

    def prepare(
        self,
        central: CentralPart,
        *,
        group: AgentGroup,
        config: ContainerConfig | None,
        session: Session,
        paths: SessionPaths,
        group_dir: Path,
        now: int,
    ) -> None:
        """Before a run starts: in project mode, both folders carry their project id and the
        kernel limits. A failure is logged and the walk still covers the folder."""
        targets = (
            (Scope.GROUP, group.id, group_dir, group_limit(self.settings, config)),
            (Scope.SESSION, session.id, paths.agent_dir, session_limit(self.settings, config)),
        )
        for scope, scope_id, folder, limit in targets:
            choice = self.choice(scope)
            if choice.mechanism is not Mechanism.PROJECT or choice.mount is None:
                continue
            try:
                self._prepare_project(
                    central,
                    choice.mount,
                    scope=scope,
                    scope_id=scope_id,
                    folder=folder,
                    limit=limit,
                    now=now,
                )
            except OSError as exc:
                log.warning(
                    "no kernel quota on {}: {}", folder, exc, session=session.id, group=group.id
                )

    def _prepare_project(
        self,
        central: CentralPart,
        mount: MountFacts,
        *,
        scope: Scope,
        scope_id: str,
        folder: Path,
        limit: Limit,
        now: int,
    ) -> None:
        ledger = DiskLedger(central)
        fd = open_folder(folder)
        try:

            def taken(candidate: int) -> bool:
                usage = project.get_usage(mount, fd, candidate)
                return bool(usage.bytes or usage.inodes or usage.limit_bytes or usage.limit_inodes)

            project_id, labelled = ledger.project_id(scope, scope_id, taken_elsewhere=taken)
            # The kernel stops writes at the quota plus the grace: the sweeper sees the folder
            # over its quota first, and the agent still has room to delete and reply.
            project.set_limit(mount, fd, project_id, limit.plus_grace())
        finally:
            os.close(fd)
        if not labelled:
            changed = project.label_folder(folder, project_id)
            ledger.mark_labelled(scope, scope_id, now=now)
            log.info(
                "{} {} has project id {} ({} entries labelled)",
                scope,
                scope_id,
                project_id,
                changed,
            )

    def project_usage(
        self, central: CentralPart, scope: Scope, scope_id: str, folder: Path
    ) -> project.ProjectUsage | None:
        """The kernel's count for a prepared folder (one ``quotactl``), or None in walk mode
        or before the folder was prepared."""
        choice = self.choice(scope)
        if choice.mechanism is not Mechanism.PROJECT or choice.mount is None:
            return None
        project_id = DiskLedger(central).find_project(scope, scope_id)
        if project_id is None:
            return None
        try:
            fd = open_folder(folder)
        except OSError:
            return None
        try:
            counted = project.get_usage(choice.mount, fd, project_id)
        except OSError as exc:
            if folder not in self._unreadable:  # once, not every pass
                self._unreadable.add(folder)
                log.warning("cannot read the project quota of {}: {}", folder, exc)
            return None
        finally:
            os.close(fd)
        self._unreadable.discard(folder)
        return counted
