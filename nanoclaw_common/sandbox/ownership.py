"""Who owns the folders a container writes.

With rootful Podman the container runs as ``AGENT_UID:AGENT_GID`` (a uid no host account
should use), and the host programs run as root. The host creates ``agent/``, ``outbound.db``
and the group folder; before each run ``hand_over`` gives them to the container user, so it
can write them (and SQLite can create ``outbound.db-journal`` next to the DB). Root keeps full
access whatever the owner. ``inbound.db`` and the rest of the session folder stay root's and
are mounted read-only on top of that.

The container controls what is inside those folders (another session of the same group may
be running while we walk its group folder), so the walk never follows a symlink, opens every
directory relative to its parent with ``O_NOFOLLOW``, and leaves hard-linked files alone: a
root-run chown must never be steered onto a file outside the folder.

With rootless Podman (host programs not root) the sandbox uses ``--userns=keep-id`` instead:
the container user *is* the host user, and nothing needs handing over.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

# Must match ARG AGENT_UID in the Containerfile.
AGENT_UID: Final = 20000
AGENT_GID: Final = 20000

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def hand_over(top: Path, uid: int = AGENT_UID, gid: int = AGENT_GID) -> int:
    """Give ``top`` and what the host created under it to ``uid:gid``; returns how many
    entries changed owner.

    The direct children of ``top`` are always looked at (the host may have created
    ``outbound.db``, ``outbox/`` or ``AGENT.md`` since the last run). Below that, directories
    already owned by ``uid`` are not entered: the container made them, their contents are
    its own, and skipping them keeps a big workspace cheap."""
    fd = os.open(top, _DIR_FLAGS)
    try:
        return _chown_fd(fd, uid, gid) + _walk(fd, uid, gid)
    finally:
        os.close(fd)


def _walk(dir_fd: int, uid: int, gid: int) -> int:
    changed = 0
    for entry in os.scandir(dir_fd):
        try:
            info = os.stat(entry.name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed meanwhile
        if info.st_uid == uid and info.st_gid == gid:
            continue
        if stat.S_ISDIR(info.st_mode):
            changed += _enter(dir_fd, entry.name, uid, gid)
        elif stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
            changed += _chown_file(dir_fd, entry.name, uid, gid)
        # symlinks, sockets, fifos and hard-linked files stay as they are
    return changed


def _enter(dir_fd: int, name: str, uid: int, gid: int) -> int:
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        return 0  # swapped for a symlink, or removed: not ours to touch
    try:
        return _chown_fd(fd, uid, gid) + _walk(fd, uid, gid)
    finally:
        os.close(fd)


def _chown_file(dir_fd: int, name: str, uid: int, gid: int) -> int:
    # Check and change the same inode through one descriptor, so the entry cannot be swapped
    # (for a link to another file) between the check and the chown.
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return 0
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            return 0
        return _chown_fd(fd, uid, gid)
    finally:
        os.close(fd)


def _chown_fd(fd: int, uid: int, gid: int) -> int:
    info = os.fstat(fd)
    if info.st_uid == uid and info.st_gid == gid:
        return 0
    os.fchown(fd, uid, gid)
    return 1
