"""Linux project quotas: the kernel's own limit on a folder (ext4 with the ``project`` and
``quota`` features mounted ``prjquota``; XFS mounted ``prjquota``). No tools needed: two
ioctls and ``quotactl``, through ``fcntl`` and ``ctypes``.

- A folder gets a project id and the ``FS_XFLAG_PROJINHERIT`` flag (``FS_IOC_FSSETXATTR``):
  everything created in it from then on carries the id, and the kernel refuses to link or
  rename an entry into it from another project (``EXDEV``), so nothing moves out of its count.
- Entries that were there before get the id one by one (``label_tree``: directories and
  regular files, opened without following links; a symlink cannot be opened to be labelled,
  and costs at most one block).
- The project's hard limits (``Q_SETQUOTA``, ``PRJQUOTA``; ext4 and XFS both take the generic
  command) make the container's writes fail with ``EDQUOT`` at once; ``Q_GETQUOTA`` reads the
  usage in one call, which is how the sweeper measures such a folder.

``quotactl_fd`` (Linux 5.14) takes a descriptor of any file on the filesystem; older kernels
get ``quotactl`` with the filesystem's block device.

Limits of the mechanism (docs/security.md): the owner of a file may change its project id
from the initial user namespace (``chattr -p``), which the agent user is with rootful Podman.
The seccomp profile should refuse ``FS_IOC_FSSETXATTR``; until then the sweeper's walk stays
on as the backstop, and finds what left the project.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import struct
from pathlib import Path
from typing import Final

import msgspec

from nanoclaw_common.disk.limits import Limit
from nanoclaw_common.disk.mounts import MountFacts
from nanoclaw_common.disk.walk import open_folder, open_subfolder

# linux/fs.h: struct fsxattr { __u32 fsx_xflags, fsx_extsize, fsx_nextents, fsx_projid,
# fsx_cowextsize; unsigned char fsx_pad[8]; } (28 bytes) and _IOR/_IOW('X', 31/32, it).
FS_IOC_FSGETXATTR: Final = 0x801C581F
FS_IOC_FSSETXATTR: Final = 0x401C5820
FS_XFLAG_PROJINHERIT: Final = 0x00000200
_FSXATTR: Final = struct.Struct("=5I8x")

# linux/quota.h
_SUBCMDSHIFT: Final = 8
Q_GETQUOTA: Final = 0x800007
Q_SETQUOTA: Final = 0x800008
PRJQUOTA: Final = 2
QIF_BLIMITS: Final = 1
QIF_ILIMITS: Final = 4
QIF_DQBLKSIZE: Final = 1024  # dqb_bhardlimit is in these units; dqb_curspace in bytes
SYS_QUOTACTL_FD: Final = 443  # the same number on x86_64 and the generic table (arm64...)

_FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class _Dqblk(ctypes.Structure):
    _fields_ = [
        ("dqb_bhardlimit", ctypes.c_uint64),
        ("dqb_bsoftlimit", ctypes.c_uint64),
        ("dqb_curspace", ctypes.c_uint64),
        ("dqb_ihardlimit", ctypes.c_uint64),
        ("dqb_isoftlimit", ctypes.c_uint64),
        ("dqb_curinodes", ctypes.c_uint64),
        ("dqb_btime", ctypes.c_uint64),
        ("dqb_itime", ctypes.c_uint64),
        ("dqb_valid", ctypes.c_uint32),
    ]


class ProjectUsage(msgspec.Struct, frozen=True):
    bytes: int
    inodes: int
    limit_bytes: int  # the kernel's hard limits (0: none)
    limit_inodes: int


class ProjectQuotaError(OSError):
    """A project-quota call failed (the kernel lacks support, or the filesystem refused)."""


_libc = ctypes.CDLL(None, use_errno=True)


def _qcmd(command: int) -> int:
    value = (command << _SUBCMDSHIFT) | PRJQUOTA
    return ctypes.c_int(value).value  # the kernel takes it as a (negative) int


def _quotactl(
    mount: MountFacts, folder_fd: int, command: int, project_id: int, block: _Dqblk
) -> None:
    cmd = _qcmd(command)
    result = _libc.syscall(
        ctypes.c_long(SYS_QUOTACTL_FD),
        ctypes.c_uint(folder_fd),
        ctypes.c_uint(cmd & 0xFFFFFFFF),
        ctypes.c_uint(project_id),
        ctypes.byref(block),
    )
    if result == 0:
        return
    code = ctypes.get_errno()
    if code == errno.ENOSYS:
        # Before Linux 5.14: the same call by block device.
        result = _libc.quotactl(
            ctypes.c_int(cmd),
            os.fsencode(mount.source),
            ctypes.c_int(project_id),
            ctypes.byref(block),
        )
        if result == 0:
            return
        code = ctypes.get_errno()
    raise ProjectQuotaError(code, f"quotactl on {mount.mount_point}: {os.strerror(code)}")


def get_usage(mount: MountFacts, folder_fd: int, project_id: int) -> ProjectUsage:
    """The project's usage and hard limits, in one call. A project the filesystem has no
    record of yet (XFS: ``ENOENT``) holds nothing."""
    block = _Dqblk()
    try:
        _quotactl(mount, folder_fd, Q_GETQUOTA, project_id, block)
    except ProjectQuotaError as exc:
        if exc.errno == errno.ENOENT:
            return ProjectUsage(0, 0, 0, 0)
        raise
    return ProjectUsage(
        bytes=int(block.dqb_curspace),
        inodes=int(block.dqb_curinodes),
        limit_bytes=int(block.dqb_bhardlimit) * QIF_DQBLKSIZE,
        limit_inodes=int(block.dqb_ihardlimit),
    )


def set_limit(mount: MountFacts, folder_fd: int, project_id: int, limit: Limit) -> None:
    """Hard limits for the project (0: none); no soft limits, so no grace timers."""
    block = _Dqblk()
    block.dqb_bhardlimit = -(-limit.bytes // QIF_DQBLKSIZE)  # round up to whole KiB
    block.dqb_ihardlimit = limit.entries
    block.dqb_valid = QIF_BLIMITS | QIF_ILIMITS
    _quotactl(mount, folder_fd, Q_SETQUOTA, project_id, block)


def probe(mount: MountFacts, folder_fd: int) -> str | None:
    """None when the kernel answers project-quota calls on this filesystem; else why not."""
    try:
        get_usage(mount, folder_fd, 0)
    except ProjectQuotaError as exc:
        return f"the kernel refused project quotas here: {os.strerror(exc.errno or 0)}"
    try:
        get_project(folder_fd)
    except OSError as exc:
        return f"the filesystem has no project ids: {os.strerror(exc.errno or 0)}"
    return None


def get_project(fd: int) -> tuple[int, int]:
    """(project id, xflags) of the open file or directory ``fd``."""
    raw = fcntl.ioctl(fd, FS_IOC_FSGETXATTR, bytes(_FSXATTR.size))
    xflags, _extsize, _nextents, project_id, _cow = _FSXATTR.unpack(raw)
    return project_id, xflags


def set_project(fd: int, project_id: int, *, inherit: bool) -> bool:
    """Give ``fd`` the project id (and, for a directory, the inherit flag); False when it had
    them already."""
    raw = fcntl.ioctl(fd, FS_IOC_FSGETXATTR, bytes(_FSXATTR.size))
    xflags, extsize, nextents, current, cow = _FSXATTR.unpack(raw)
    wanted = xflags | FS_XFLAG_PROJINHERIT if inherit else xflags
    if current == project_id and wanted == xflags:
        return False
    fcntl.ioctl(fd, FS_IOC_FSSETXATTR, _FSXATTR.pack(wanted, extsize, nextents, project_id, cow))
    return True


def label_folder(folder: Path, project_id: int) -> int:
    """Give ``folder`` and every directory and regular file under it the project id (the
    folders inherit it from now on); returns how many entries changed. Opens directories with
    ``O_NOFOLLOW`` relative to their parent and files with ``O_NOFOLLOW|O_NONBLOCK``, checking
    the type through the descriptor; links, FIFOs, sockets and other mounts are left alone."""
    fd = open_folder(folder)
    try:
        device = os.fstat(fd).st_dev
        return int(set_project(fd, project_id, inherit=True)) + _label_below(
            fd, device, project_id, 1
        )
    finally:
        os.close(fd)


_MAX_LABEL_DEPTH: Final = 200


def _label_below(dir_fd: int, device: int, project_id: int, depth: int) -> int:
    changed = 0
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if info.st_dev != device:
                continue
            if stat.S_ISDIR(info.st_mode):
                if depth >= _MAX_LABEL_DEPTH:
                    continue  # the walk counts it as over quota; nothing to gain here
                child = open_subfolder(dir_fd, entry.name)
                if child is None:
                    continue
                try:
                    if os.fstat(child).st_dev == device:
                        changed += int(set_project(child, project_id, inherit=True))
                        changed += _label_below(child, device, project_id, depth + 1)
                finally:
                    os.close(child)
            elif stat.S_ISREG(info.st_mode):
                changed += _label_file(dir_fd, entry.name, project_id)
    return changed


def _label_file(dir_fd: int, name: str, project_id: int) -> int:
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return 0  # swapped for a link, or removed
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return 0
        return int(set_project(fd, project_id, inherit=False))
    except OSError:
        return 0
    finally:
        os.close(fd)
