"""Who may read the data folder: its owner, and an agent's container only what it must.

The data folder holds every conversation (``central.db``, session databases, saved
attachments), so it is private to the user who runs NanoClaw: folders 0700, files 0600. Older
versions left 0644 files in 0755 folders; ``Layout.ensure`` tightens them at every start.

A container must still read what the host writes for it through its read-only mounts:
``inbound.db`` (and the journal SQLite makes beside it), ``runner.json``, and the saved
attachments under ``inbox/``. How it gets to read them depends on who the container runs as:

- **rootful Podman** (the host programs run as root): the container runs as
  ``AGENT_UID:AGENT_GID`` (20000, an id no host account should use). Those files and their
  folders are ``root:AGENT_GID``, mode 0640 / 0750: the container reads them through the
  group, cannot write them (it is not the owner, and the mount is read-only anyway), and no
  other local user can read them (they are in neither the owner nor the group, and the
  parents ``sessions/`` and the data folder are 0700). A bind mount's source needs no search
  permission on its parents for the container, so those stay 0700.
- **rootless Podman** (``--userns=keep-id``): the container user *is* the host user, who owns
  everything: 0600 / 0700 is enough and nothing is shared with a group.

What the container writes (``agent/``, the group folder) is handed to its user by
``sandbox.ownership.hand_over``; root reads it whatever its mode.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

from nanoclaw_common.sandbox.ownership import AGENT_GID

PRIVATE_DIR: Final = 0o700
PRIVATE_FILE: Final = 0o600
_SHARED_DIR: Final = 0o750
_SHARED_FILE: Final = 0o640


def rootful() -> bool:
    """The host programs run as root, so containers run as ``AGENT_UID`` (sandbox.core)."""
    return os.geteuid() == 0


def agent_readable_mode(*, folder: bool) -> int:
    """The mode for something a container reads but must not write."""
    if rootful():
        return _SHARED_DIR if folder else _SHARED_FILE
    return PRIVATE_DIR if folder else PRIVATE_FILE


def share_with_agent(fd: int, *, folder: bool) -> None:
    """Make an open file or folder readable by the container's user and by no other user
    (see the module docstring). Cheap when nothing changes: one ``fstat``."""
    mode = agent_readable_mode(folder=folder)
    info = os.fstat(fd)
    if rootful() and (info.st_uid, info.st_gid) != (0, AGENT_GID):
        os.fchown(fd, 0, AGENT_GID)
    if stat.S_IMODE(info.st_mode) != mode:
        os.fchmod(fd, mode)


def make_private(path: Path, *, folder: bool) -> bool:
    """Tighten ``path`` (a host-only file or folder: not in a container's folder) to 0600 /
    0700 when it exists and is not already; a link is left alone. True when it changed."""
    try:
        info = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(info.st_mode):
        return False
    mode = PRIVATE_DIR if folder else PRIVATE_FILE
    if stat.S_IMODE(info.st_mode) == mode:
        return False
    os.chmod(path, mode)  # host-only paths: nothing else can swap them for a link
    return True
