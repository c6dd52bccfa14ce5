"""Group folders on disk (``groups/<folder>/``): claiming one for a new group, writing its
first ``AGENT.md``, and archiving it when the group is removed.

A group folder is the container's workspace (``/workspace``, read-write): every entry in it
may have been planted. Two attacks this module exists for:

- a folder kept on disk after its group was removed still held what the old agent left,
  including an ``AGENT.md`` symlink; ``create_agent`` gave the folder to a new group and, as
  root, wrote the new agent's instructions *through* the link (to ``/etc/cron.d/x``: a root
  cron job with agent-chosen content). Now a new group **never** gets a folder that exists on
  disk (``claim_new_folder`` creates it with ``mkdir``, which fails on anything already
  there), and ``groups remove`` moves the folder out of ``groups/`` (``archive``);
- ``nanoclaw init`` (re-run by ``scripts/run.sh`` at every start) wrote ``AGENT.md`` by path.
  Now the first ``AGENT.md`` is created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` relative to
  the folder's descriptor (``write_first_memory``): a name that exists, a link included, is
  left as it is and reported, never written through.

``groups/`` itself is the host's (the container sees only its own folder, as a mount point),
so a folder opened from it is the real one.
"""

from __future__ import annotations

import os
import stat
import time
from enum import StrEnum
from pathlib import Path
from typing import Final

from nanoclaw_common import privacy
from nanoclaw_common.errors import Refused
from nanoclaw_common.hostfs import Dir
from nanoclaw_common.paths import Layout
from nanoclaw_common.store.central import Entities, normalize_name

MEMORY_FILE: Final = "AGENT.md"
MAX_CANDIDATES: Final = 1000


class Memory(StrEnum):
    WRITTEN = "written"  # AGENT.md was created now
    KEPT = "kept"  # a regular AGENT.md was already there
    REFUSED = "refused"  # something else has the name (a link, a FIFO, a folder): left alone


def claim_new_folder(layout: Layout, central: Entities, name: str) -> str:
    """A folder for a new group: ``normalize_name(name)``, then ``-2``, ``-3``…, skipping
    names any group uses and names that exist on disk, created now (empty, mode 0700) so
    nothing else can take it. Create the group's row with the returned name."""
    base = normalize_name(name)
    if base == "global":
        base = "global-agent"
    taken = {group.folder for group in central.list_agent_groups()}
    layout.groups_dir.mkdir(parents=True, exist_ok=True, mode=privacy.PRIVATE_DIR)
    with Dir.trusted(layout.groups_dir) as groups:
        for n in range(1, MAX_CANDIDATES + 1):
            candidate = base if n == 1 else f"{base}-{n}"
            if candidate in taken:
                continue
            try:
                groups.make_new_dir(candidate, mode=privacy.PRIVATE_DIR).close()
            except FileExistsError:
                continue  # on disk already (an old group's, or anything): never reused
            return candidate
    raise Refused(f"no free folder for {name!r} under {layout.groups_dir}")


def claim_exact_folder(layout: Layout, folder: str) -> None:
    """Create ``groups/<folder>`` for a new group that asked for that exact name; refuse
    when anything exists there."""
    layout.group_dir(folder)  # one safe component, or Refused
    layout.groups_dir.mkdir(parents=True, exist_ok=True, mode=privacy.PRIVATE_DIR)
    with Dir.trusted(layout.groups_dir) as groups:
        try:
            groups.make_new_dir(folder, mode=privacy.PRIVATE_DIR).close()
        except FileExistsError:
            raise Refused(
                f"{layout.groups_dir / folder} exists on disk; a new group never reuses a"
                " folder (move it away, or choose another name)"
            ) from None


def write_first_memory(layout: Layout, folder: str, text: str) -> Memory:
    """Create the group folder when missing and its ``AGENT.md`` with ``text`` when that
    name is free. Never opens an existing entry: see the module docstring."""
    layout.group_dir(folder)
    layout.groups_dir.mkdir(parents=True, exist_ok=True, mode=privacy.PRIVATE_DIR)
    with (
        Dir.trusted(layout.groups_dir) as groups,
        groups.make_dir(folder, mode=privacy.PRIVATE_DIR) as workspace,
    ):
        try:
            workspace.create_file(MEMORY_FILE, text.encode(), mode=privacy.PRIVATE_FILE)
        except FileExistsError:
            info = workspace.lstat(MEMORY_FILE)
            regular = info is not None and stat.S_ISREG(info.st_mode)
            return Memory.KEPT if regular else Memory.REFUSED
    return Memory.WRITTEN


def archive(layout: Layout, folder: str, *, now_s: float | None = None) -> Path | None:
    """Move ``groups/<folder>`` to ``archive/groups/<folder>-<UTC time>/`` (a rename: the
    contents are never opened) and return where it went; None when there was no folder."""
    layout.group_dir(folder)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now_s is None else now_s))
    target_dir = layout.archive_dir / "groups"
    target_dir.mkdir(parents=True, exist_ok=True, mode=privacy.PRIVATE_DIR)
    privacy.make_private(layout.archive_dir, folder=True)
    with Dir.trusted(layout.groups_dir) as groups, Dir.trusted(target_dir) as archived:
        if groups.lstat(folder) is None:
            return None
        name = f"{folder}-{stamp}"
        for n in range(2, MAX_CANDIDATES + 2):
            if archived.lstat(name) is None:
                break
            name = f"{folder}-{stamp}-{n}"
        os.rename(folder, name, src_dir_fd=groups.fd, dst_dir_fd=archived.fd)
    return target_dir / name
