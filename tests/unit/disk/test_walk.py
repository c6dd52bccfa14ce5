"""Measuring a container-writable folder on real files: allocated blocks (sparse files and
``fallocate`` count what they hold), hard links once, links never followed, FIFOs and sockets
never opened, other mounts not entered, and every bound (entries, depth, per-step budget and
deadline) holding, with a walk in steps adding up to the walk in one go."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from nanoclaw_common.disk.walk import FolderWalk, measure, open_subfolder

MIB = 1024 * 1024


def allocated(path: Path) -> int:
    return os.lstat(path).st_blocks * 512


def du_bytes(path: Path) -> int:
    """What coreutils' du says the folder allocates (it counts hard links once too)."""
    out = subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def test_sparse_and_fallocated_files_count_their_blocks(tmp_path: Path) -> None:
    root = tmp_path / "w"
    root.mkdir()
    with (root / "sparse").open("wb") as handle:
        handle.truncate(1024 * MIB)  # 1 GiB long, nothing written
    with (root / "reserved").open("wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, 8 * MIB)  # nothing written, all allocated
    (root / "small").write_bytes(b"x" * 10)
    usage = measure(root)
    assert usage.complete and usage.entries == 3
    assert usage.bytes == du_bytes(root)
    assert usage.bytes >= 8 * MIB  # fallocate counts
    assert usage.bytes < 9 * MIB  # the sparse gigabyte does not
    assert usage.largest[0] == ("reserved", allocated(root / "reserved"))


def test_hard_links_count_once_and_every_name_is_an_entry(tmp_path: Path) -> None:
    root = tmp_path / "w"
    (root / "a").mkdir(parents=True)
    with (root / "a" / "big").open("wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, 4 * MIB)
    for number in range(50):
        os.link(root / "a" / "big", root / f"link{number}")
    usage = measure(root)
    assert usage.entries == 52  # a/, a/big and 50 more names
    assert 4 * MIB <= usage.bytes < 5 * MIB
    assert usage.bytes == du_bytes(root)


def test_links_are_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    with (outside / "deep" / "big").open("wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, 16 * MIB)
    root = tmp_path / "w"
    root.mkdir()
    (root / "to-dir").symlink_to(outside)
    (root / "to-file").symlink_to(outside / "deep" / "big")
    (root / "to-root").symlink_to("/")
    (root / "loop").symlink_to("loop")
    usage = measure(root)
    assert usage.complete and usage.entries == 4
    assert usage.bytes < MIB  # the 16 MiB behind the links are not counted


def test_a_link_in_place_of_a_folder_is_not_opened(tmp_path: Path) -> None:
    """The race: listed as a folder, swapped for a link before it is opened."""
    (tmp_path / "real").mkdir()
    (tmp_path / "swapped").symlink_to(tmp_path / "real")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert open_subfolder(fd, "swapped") is None
        opened = open_subfolder(fd, "real")
        assert opened is not None
        os.close(opened)
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        FolderWalk(tmp_path / "swapped")  # the measured folder itself, too


@pytest.mark.timeout(20)
def test_fifos_and_sockets_are_never_opened(tmp_path: Path) -> None:
    """Opening a FIFO with no writer blocks for ever: the walk would hang here if it did."""
    root = tmp_path / "w"
    root.mkdir()
    os.mkfifo(root / "fifo")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(root / "sock"))
    try:
        usage = measure(root)
    finally:
        listener.close()
    assert usage.complete and usage.entries == 2


def test_too_many_entries_stop_the_walk_and_count_as_over(tmp_path: Path) -> None:
    root = tmp_path / "w"
    root.mkdir()
    for number in range(300):
        (root / f"f{number}").touch()
    usage = measure(root, max_entries=100)
    assert not usage.complete
    assert usage.stopped_because == "more than 100 entries"
    assert usage.entries == 101  # it looked at one past the limit, no further
    assert measure(root, max_entries=300).complete


def test_folders_nested_too_deep_stop_the_walk(tmp_path: Path) -> None:
    root = tmp_path / "w"
    deep = root
    for level in range(12):
        deep = deep / f"d{level}"
    deep.mkdir(parents=True)
    assert measure(root, max_depth=12).complete
    usage = measure(root, max_depth=11)
    assert not usage.complete
    assert usage.stopped_because == "folders nested deeper than 11 levels"


def test_a_walk_in_steps_adds_up_to_the_walk_in_one_go(tmp_path: Path) -> None:
    root = tmp_path / "w"
    for branch in range(5):
        for leaf in range(7):
            folder = root / f"b{branch}" / f"l{leaf}"
            folder.mkdir(parents=True)
            (folder / "data").write_bytes(b"y" * (branch * 5000 + leaf))
    whole = measure(root)
    steps = 0
    with FolderWalk(root) as walk:
        while not walk.done:
            assert walk.step(3, float("inf")) <= 3
            steps += 1
        assert walk.usage() == whole
    assert steps >= whole.entries // 3
    assert whole.entries == 5 + 35 + 35 and whole.bytes == du_bytes(root)


def test_a_step_stops_at_its_deadline(tmp_path: Path) -> None:
    root = tmp_path / "w"
    root.mkdir()
    for number in range(1_000):
        (root / f"f{number}").touch()
    with FolderWalk(root) as walk:
        looked = walk.step(1_000_000, time.monotonic() - 1)  # the deadline has passed
        assert 1 <= looked <= 128  # it checks the clock every 128 entries
        assert not walk.done
        while not walk.done:
            walk.step(1_000_000, float("inf"))
        assert walk.usage().entries == 1_000


def test_a_closed_walk_holds_no_descriptors(tmp_path: Path) -> None:
    root = tmp_path / "w"
    deep = root
    for level in range(20):
        deep = deep / f"d{level}"
    deep.mkdir(parents=True)
    before = len(os.listdir("/proc/self/fd"))
    walk = FolderWalk(root)
    walk.step(15, float("inf"))  # 15 levels down, each holding its descriptors
    assert len(os.listdir("/proc/self/fd")) > before + 10
    walk.close()
    assert len(os.listdir("/proc/self/fd")) == before


def test_other_mounts_are_not_entered(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test mounts a tmpfs and needs root, as CI runs", pytrace=False)
    root = tmp_path / "w"
    mount_point = root / "mnt"
    mount_point.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount_point)], check=True
    )
    try:
        with (mount_point / "big").open("wb") as handle:
            os.posix_fallocate(handle.fileno(), 0, 32 * MIB)
        usage = measure(root)
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
    assert usage.complete and usage.entries == 1  # the mount point itself
    assert usage.bytes < MIB
