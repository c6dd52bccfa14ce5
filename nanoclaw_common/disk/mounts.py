"""Which filesystem a folder is on, and whether it enforces project quotas: read from
``/proc/self/mountinfo`` (the mount with the folder's device number and the longest mount
point above it).

Project quotas are enforced on ext4 mounted with ``prjquota`` (the filesystem made with
``-O quota,project``) and on XFS mounted with ``prjquota``/``pquota`` (shown as ``prjquota``;
``pqnoenforce`` only accounts, which is not enough). The options say what was asked for; the
kernel may still lack the support (``project.probe`` tries a ``quotactl``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final

import msgspec

MOUNTINFO: Final = Path("/proc/self/mountinfo")
PROJECT_QUOTA_FILESYSTEMS: Final = frozenset({"ext4", "xfs"})
_OCTAL: Final = re.compile(r"\\([0-7]{3})")


class MountFacts(msgspec.Struct, frozen=True):
    mount_point: str
    fstype: str
    source: str  # the block device (for quotactl on kernels without quotactl_fd)
    options: frozenset[str]  # the mount's and the superblock's options together
    device: str  # "major:minor"

    @property
    def project_quota_enforced(self) -> bool:
        """The mount asked for enforced project quotas on a filesystem that has them."""
        if self.fstype not in PROJECT_QUOTA_FILESYSTEMS:
            return False
        return "prjquota" in self.options or "pquota" in self.options


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda match: chr(int(match.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[MountFacts]:
    """Each line: ``id parent major:minor root mount_point options [optional...] - fstype
    source super_options`` (proc(5)); lines that do not parse are skipped."""
    found: list[MountFacts] = []
    for line in text.splitlines():
        before, sep, after = line.partition(" - ")
        if not sep:
            continue
        left = before.split(" ")
        right = after.split(" ")
        if len(left) < 6 or len(right) < 3:
            continue
        found.append(
            MountFacts(
                mount_point=_unescape(left[4]),
                fstype=right[0],
                source=_unescape(right[1]),
                options=frozenset(left[5].split(",")) | frozenset(right[2].split(",")),
                device=left[2],
            )
        )
    return found


def mount_of(path: Path, mountinfo: str | None = None) -> MountFacts | None:
    """The mount ``path`` is on (None when it does not exist or nothing matches)."""
    try:
        info = os.stat(path)
        real = os.path.realpath(path)
    except OSError:
        return None
    device = f"{os.major(info.st_dev)}:{os.minor(info.st_dev)}"
    text = MOUNTINFO.read_text() if mountinfo is None else mountinfo
    best: MountFacts | None = None
    for mount in parse_mountinfo(text):
        if mount.device != device or not _under(real, mount.mount_point):
            continue
        if best is None or len(mount.mount_point) >= len(best.mount_point):
            best = mount  # the longest, and of equal ones the last mounted, is on top
    return best


def _under(path: str, mount_point: str) -> bool:
    return mount_point in ("/", path) or path.startswith(mount_point + "/")
