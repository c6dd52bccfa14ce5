"""``nanoclaw_common.hostfs``: every rule, with ``openat2`` and with the component walk (the
``resolver`` fixture runs each test both ways)."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nanoclaw_common import hostfs
from nanoclaw_common.hostfs import OPENAT2, Dir, TooLarge, UnsafePath, safe_name
from tests.waiting import wait_until


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "openat2" and not OPENAT2.usable:
        pytest.skip("this kernel (or its seccomp profile) has no openat2")
    OPENAT2.forced_off = request.param == "walk"
    try:
        yield str(request.param)
    finally:
        OPENAT2.forced_off = False


@pytest.fixture
def root(tmp_path: Path, resolver: str) -> Iterator[Path]:
    top = tmp_path / "root"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "b" / "f.txt").write_bytes(b"inside")
    (tmp_path / "secret").write_bytes(b"host secret")
    yield top


def read(top: Path, *names: str, max_bytes: int = 1000) -> bytes:
    with Dir.trusted(top) as folder:
        return folder.read_bytes(*names, max_bytes=max_bytes)


def test_openat2_is_probed_on_this_kernel() -> None:
    # The machines we develop on run Linux 6.x: the fast path must be the one in use.
    assert OPENAT2.usable


def test_reads_a_regular_file_below_the_root(root: Path) -> None:
    assert read(root, "a", "b", "f.txt") == b"inside"


UNSAFE_NAMES = ["", ".", "..", "a/b", "/etc", "x\x00y", "a\\b", "é" * 200, "\ud800"]


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_a_name_is_one_safe_component(root: Path, name: str) -> None:
    with pytest.raises(UnsafePath):
        safe_name(name)
    with pytest.raises(UnsafePath):
        read(root, "a", name)


def test_dot_dot_never_climbs_out(root: Path) -> None:
    with pytest.raises(UnsafePath):
        read(root, "a", "..", "..", "secret")


def test_a_symlinked_file_is_refused(root: Path, tmp_path: Path) -> None:
    (root / "a" / "b" / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(UnsafePath, match="symlink"):
        read(root, "a", "b", "link")


def test_a_symlinked_folder_anywhere_on_the_way_is_refused(root: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere" / "b").mkdir(parents=True)
    (tmp_path / "elsewhere" / "b" / "f.txt").write_bytes(b"outside")
    (root / "x").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePath, match="symlink"):
        read(root, "x", "b", "f.txt")
    with Dir.trusted(root) as folder, pytest.raises(UnsafePath):
        folder.walk("x")


def test_a_relative_symlink_to_a_parent_is_refused(root: Path) -> None:
    (root / "a" / "up").symlink_to("..")
    with pytest.raises(UnsafePath):
        read(root, "a", "up", "a", "b", "f.txt")


def test_fifo_socket_and_folder_are_not_regular_files(root: Path) -> None:
    os.mkfifo(root / "a" / "fifo")
    started = time.monotonic()
    with pytest.raises(UnsafePath, match="not a regular file"):
        read(root, "a", "fifo")
    assert time.monotonic() - started < 1  # opened without blocking
    with pytest.raises(UnsafePath, match="not a regular file"):
        read(root, "a", "b")


def test_hard_links_are_refused(root: Path) -> None:
    os.link(root / "a" / "b" / "f.txt", root / "a" / "twin")
    with pytest.raises(UnsafePath, match="hard links"):
        read(root, "a", "twin")
    # A host-owned file a backup linked (cp -al) is still the host's own.
    with Dir.trusted(root) as folder:
        fd, size = folder.open_regular("a", "twin", single_link=False)
        os.close(fd)
    assert size == 6


def test_sizes_are_checked_before_reading(root: Path) -> None:
    with open(root / "a" / "big", "wb") as handle:
        handle.truncate(10_001)
    with pytest.raises(TooLarge):
        read(root, "a", "big", max_bytes=10_000)
    assert read(root, "a", "b", "f.txt", max_bytes=6) == b"inside"
    with pytest.raises(TooLarge):
        read(root, "a", "b", "f.txt", max_bytes=5)


def test_a_file_that_grows_while_read_is_refused(root: Path) -> None:
    path = root / "a" / "growing"
    path.write_bytes(b"x" * 10)
    with Dir.trusted(root) as folder:
        fd, size = folder.open_regular("a", "growing", max_bytes=100)
        try:
            assert size == 10
            with open(path, "ab") as handle:  # grows after the size check
                handle.write(b"y" * 200)
            with pytest.raises(TooLarge, match="grew"):
                b"".join(hostfs._bounded_chunks(fd, 100, "growing"))
        finally:
            os.close(fd)


def test_the_trusted_root_itself_must_not_be_a_link(tmp_path: Path, root: Path) -> None:
    (tmp_path / "link").symlink_to(root)
    with pytest.raises(UnsafePath):
        Dir.trusted(tmp_path / "link")


def test_a_swapped_folder_changes_nothing_once_opened(root: Path, tmp_path: Path) -> None:
    """What was checked is what is used: the descriptor, not the name."""
    with Dir.trusted(root) as top, top.walk("a", "b") as folder:
        os.rename(root / "a" / "b", root / "a" / "old")
        (root / "a" / "b").symlink_to(tmp_path)  # the name now points at the host
        assert folder.read_bytes("f.txt", max_bytes=100) == b"inside"
        with pytest.raises(FileNotFoundError):
            folder.read_bytes("secret", max_bytes=100)


def test_create_file_never_writes_through_anything(root: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    (root / "link").symlink_to(victim)
    (root / "dangling").symlink_to(tmp_path / "would-be-created")
    with Dir.trusted(root) as folder:
        for name in ("link", "dangling"):
            with pytest.raises(FileExistsError):
                folder.create_file(name, b"agent text")
        folder.create_file("new.txt", b"data", mode=0o640)
    assert victim.read_bytes() == b"untouched"
    assert not (tmp_path / "would-be-created").exists()
    info = os.stat(root / "new.txt")
    assert stat.S_IMODE(info.st_mode) == 0o640 and (root / "new.txt").read_bytes() == b"data"


def test_copy_to_copies_the_checked_descriptor(root: Path, tmp_path: Path) -> None:
    (tmp_path / "stage").mkdir()
    with Dir.trusted(root) as source, Dir.trusted(tmp_path / "stage") as target:
        assert source.copy_to(("a", "b", "f.txt"), target, "copy", max_bytes=100) == 6
        with pytest.raises(FileExistsError):
            source.copy_to(("a", "b", "f.txt"), target, "copy", max_bytes=100)
        with pytest.raises(TooLarge):
            source.copy_to(("a", "b", "f.txt"), target, "small", max_bytes=3)
    assert (tmp_path / "stage" / "copy").read_bytes() == b"inside"
    assert stat.S_IMODE(os.stat(tmp_path / "stage" / "copy").st_mode) == 0o600
    assert not (tmp_path / "stage" / "small").exists()  # a refused copy leaves nothing


def test_make_dirs_creates_and_refuses_links(root: Path, tmp_path: Path) -> None:
    with Dir.trusted(root) as top:
        top.make_dirs("n1", "n2", mode=0o750).close()
        (root / "n1" / "evil").symlink_to(tmp_path)
        with pytest.raises(UnsafePath):
            top.make_dirs("n1", "evil", "n3")
    assert stat.S_IMODE(os.stat(root / "n1" / "n2").st_mode) == 0o750
    assert not (tmp_path / "n3").exists()


def test_remove_unlinks_links_and_never_follows_them(root: Path, tmp_path: Path) -> None:
    keep = tmp_path / "keep"
    (keep / "inner").mkdir(parents=True)
    (keep / "inner" / "precious").write_bytes(b"keep me")
    (root / "a" / "b" / "into-host").symlink_to(keep)
    (root / "top-link").symlink_to(keep)
    with Dir.trusted(root) as folder:
        assert folder.remove("top-link")
        assert folder.remove("a")
        assert not folder.remove("a")
    assert not (root / "a").exists()
    assert (keep / "inner" / "precious").read_bytes() == b"keep me"


def test_names_are_bounded(root: Path) -> None:
    for n in range(30):
        (root / f"e{n}").touch()
    with Dir.trusted(root) as folder:
        assert len(folder.names(limit=10)) == 10


def test_mtime_of_a_regular_file_only(root: Path, tmp_path: Path) -> None:
    (root / "beat").touch()
    os.mkfifo(root / "fifo")
    (root / "link").symlink_to(tmp_path / "secret")
    with Dir.trusted(root) as folder:
        assert folder.mtime_ms("beat") is not None
        assert folder.mtime_ms("fifo") is None
        assert folder.mtime_ms("link") is None
        assert folder.mtime_ms("missing") is None


def test_release_fifo_readers_frees_a_blocked_open(tmp_path: Path) -> None:
    """The stall backstop: a thread stuck opening a FIFO for reading (what SQLite did on a
    planted journal) returns once the FIFO's writer side is opened and closed."""
    fifo = tmp_path / "outbound.db-journal"
    os.mkfifo(fifo)
    done = threading.Event()

    def blocked_reader() -> None:
        with open(fifo, "rb") as handle:  # blocks until a writer opens it
            handle.read()
        done.set()

    thread = threading.Thread(target=blocked_reader, daemon=True)
    thread.start()
    assert not done.wait(0.2)  # really stuck

    def released() -> bool:
        hostfs.unblock(tmp_path)  # again on each check, until the reader got through
        return done.wait(0.05)

    wait_until(released, timeout_s=10, what="the blocked reader released", poll_s=0)
    assert hostfs.unblock(tmp_path) == 0  # nobody waits any more: nothing opened
