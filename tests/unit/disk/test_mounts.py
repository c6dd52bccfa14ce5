"""Telling which filesystem a folder is on and whether it enforces project quotas, from
mountinfo text (proc(5)) and from this machine's real mounts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from nanoclaw_common.disk.mounts import mount_of, parse_mountinfo
from nanoclaw_common.disk.quotas import Mechanism, choose

MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
30 22 7:0 / /srv/nano rw,relatime shared:9 - ext4 /dev/loop0 rw,prjquota
31 22 7:1 / /srv/xfs\\040data rw,noatime - xfs /dev/loop1 rw,attr2,inode64,prjquota
32 22 7:2 / /srv/xfs-acct rw - xfs /dev/loop2 rw,pqnoenforce
33 22 0:40 / /srv/btrfs rw - btrfs /dev/loop3 rw,space_cache=v2
garbage line without a separator
"""


def test_parse_mountinfo_reads_every_field_and_unescapes_names() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert [m.mount_point for m in mounts] == [
        "/",
        "/srv/nano",
        "/srv/xfs data",
        "/srv/xfs-acct",
        "/srv/btrfs",
    ]
    loop = mounts[1]
    assert (loop.fstype, loop.source, loop.device) == ("ext4", "/dev/loop0", "7:0")
    assert {"rw", "relatime", "prjquota"} <= loop.options


def test_only_enforced_project_quotas_on_ext4_or_xfs_count() -> None:
    enforced = {m.mount_point: m.project_quota_enforced for m in parse_mountinfo(MOUNTINFO)}
    assert enforced == {
        "/": False,
        "/srv/nano": True,
        "/srv/xfs data": True,
        "/srv/xfs-acct": False,  # accounting only
        "/srv/btrfs": False,
    }


def test_mount_of_a_real_folder(tmp_path: Path) -> None:
    found = mount_of(tmp_path)
    assert found is not None
    device = os.stat(tmp_path).st_dev
    assert found.device == f"{os.major(device)}:{os.minor(device)}"
    assert str(tmp_path.resolve()).startswith(found.mount_point)
    assert mount_of(tmp_path / "missing") is None


def test_the_innermost_mount_wins(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test mounts a tmpfs and needs root, as CI runs", pytrace=False)
    inner = tmp_path / "inner"
    inner.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(inner)], check=True)
    try:
        found = mount_of(inner)
        assert found is not None and found.fstype == "tmpfs"
        assert found.mount_point == str(inner.resolve())
        choice = choose("auto", inner)
    finally:
        subprocess.run(["umount", str(inner)], check=True)
    assert choice.mechanism is Mechanism.WALK
    assert choice.reason.endswith("is not mounted with prjquota")


def test_the_setting_forces_the_walk(tmp_path: Path) -> None:
    choice = choose("walk", tmp_path)
    assert choice.mechanism is Mechanism.WALK
    assert choice.reason == "disk_quota_mechanism = walk"
