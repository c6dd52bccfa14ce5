"""Measuring a container-writable folder: a bounded, resumable walk through directory
descriptors.

The folder is the container's to shape, so the walk
- never follows a link and never opens anything but directories (``O_DIRECTORY|O_NOFOLLOW``,
  each relative to its parent's descriptor): a FIFO, a socket or a symlink is ``lstat``-ed,
  never opened, so nothing the agent plants can block, redirect or escape the walk;
- counts allocated blocks (``st_blocks``), not sizes, so a sparse file costs what it holds and
  ``fallocate`` costs what it reserved;
- counts a hard-linked file's blocks once (by inode) and every name as an entry;
- stays on the folder's filesystem (a mount point is one entry);
- is bounded: at most ``max_entries`` (past that the folder is over quota and the walk stops,
  so a million empty files cost the walk no more than the limit), at most ``MAX_DEPTH``
  levels (deeper is reported as over quota: two descriptors per level are held open), and
  each ``step`` stops after a number of entries or at a deadline; the next step continues
  where it stopped (descriptors stay open in between; ``close`` releases them).

A walk of a folder that changes while it runs is approximate (an entry renamed behind the walk
may be missed once, or counted twice); the next walk sees it. Where the kernel enforces project
quotas (``project.py``) the kernel's count is exact and this walk is the backstop.

``open_folder`` and ``open_subfolder`` are the only two places that open anything: they are
the seam for the shared descriptor-based file access module (``hostfs``) when it lands.
"""

from __future__ import annotations

import heapq
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

MAX_DEPTH: Final = 100
TOP_SHOWN: Final = 5  # the largest top-level entries, for the note that asks the agent to delete
_TOP_TRACKED: Final = 2_000  # top-level names tracked by size; the rest count as "(others)"
_CLOCK_EVERY: Final = 128  # entries between deadline checks

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def open_folder(path: Path) -> int:
    """A descriptor of the folder ``path`` itself, refusing a symlink in its last component.
    Its parents are host-made (``groups/``, ``sessions/<group>/<session>/``), never the
    container's."""
    return os.open(path, _DIR_FLAGS)


def open_subfolder(dir_fd: int, name: str) -> int | None:
    """A descriptor of the directory ``name`` inside ``dir_fd``, or None when it is not a
    directory any more (swapped for a link or a file, or removed, since it was listed)."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None


class Usage(msgspec.Struct, frozen=True):
    """What a walk found. ``complete`` is False when it stopped early (``stopped_because``):
    the numbers are then a lower bound, and the folder counts as over quota."""

    bytes: int
    entries: int
    complete: bool
    stopped_because: str | None = None
    largest: list[tuple[str, int]] = []  # (top-level name, bytes), largest first


@dataclass(slots=True)
class _Level:
    fd: int
    entries: Iterator[os.DirEntry[str]]  # os.scandir's iterator...
    close_entries: Callable[[], None]  # ...and its close (it holds a descriptor of its own)
    top: str | None  # the top-level name this directory is under (None: the root)


class FolderWalk:
    """One measurement of one folder, taken in steps (see the module docstring).

    ``step(max_entries, deadline)`` returns how many entries it looked at; ``done`` says the
    walk is over and ``usage()`` is its result. Raises ``OSError`` only when the folder itself
    cannot be opened."""

    def __init__(
        self,
        root: Path,
        *,
        max_entries: int = 0,
        max_depth: int = MAX_DEPTH,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self.clock = clock
        self.max_entries = max_entries
        self.max_depth = max_depth
        self.bytes = 0
        self.entries = 0
        self._linked: set[int] = set()  # inodes of files with more than one name, counted once
        self._top: dict[str, int] = {}
        self._stopped_because: str | None = None
        self._stack: list[_Level] = []
        fd = open_folder(root)
        try:
            info = os.fstat(fd)
            self._dev = info.st_dev
            self.bytes += info.st_blocks * 512
            self._push(fd, None)
        except BaseException:
            os.close(fd)
            raise

    @property
    def done(self) -> bool:
        return not self._stack

    def step(self, max_entries: int, deadline: float) -> int:
        """Look at up to ``max_entries`` more entries, or until ``clock()`` passes
        ``deadline``; at least one entry when any is left, so a walk always progresses."""
        looked = 0
        while self._stack and looked < max_entries:
            if looked % _CLOCK_EVERY == _CLOCK_EVERY - 1 and self.clock() > deadline:
                break
            level = self._stack[-1]
            try:
                entry = next(level.entries, None)
            except OSError:
                entry = None  # the directory went away under us: what was read is counted
            if entry is None:
                self._pop()
                continue
            looked += 1
            self._visit(level, entry)
        return looked

    def usage(self) -> Usage:
        largest = heapq.nlargest(TOP_SHOWN, self._top.items(), key=lambda item: item[1])
        return Usage(
            bytes=self.bytes,
            entries=self.entries,
            complete=self._stopped_because is None and not self._stack,
            stopped_because=self._stopped_because,
            largest=largest,
        )

    def close(self) -> None:
        while self._stack:
            self._pop()

    def __enter__(self) -> FolderWalk:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------

    def _visit(self, level: _Level, entry: os.DirEntry[str]) -> None:
        self.entries += 1
        if self.max_entries and self.entries > self.max_entries:
            self._stop(f"more than {self.max_entries} entries")
            return
        try:
            info = entry.stat(follow_symlinks=False)  # fstatat(dir fd, name, NOFOLLOW)
        except OSError:
            return  # removed since it was listed: the name was counted, it holds nothing
        top = level.top if level.top is not None else entry.name
        if info.st_dev != self._dev:
            return  # a mount point: not this filesystem's space
        is_dir = stat.S_ISDIR(info.st_mode)
        if not is_dir and info.st_nlink > 1:
            if info.st_ino in self._linked:
                return  # another name of a file counted already
            self._linked.add(info.st_ino)
        blocks = info.st_blocks * 512
        self.bytes += blocks
        self._count_top(top, blocks)
        if not is_dir:
            return
        if len(self._stack) > self.max_depth:  # the root plus max_depth folders below it
            self._stop(f"folders nested deeper than {self.max_depth} levels")
            return
        fd = open_subfolder(level.fd, entry.name)
        if fd is None:
            return
        try:
            if os.fstat(fd).st_dev != self._dev:
                os.close(fd)  # became a mount point since it was listed
                return
            self._push(fd, top)
        except BaseException:
            os.close(fd)
            raise

    def _count_top(self, top: str, blocks: int) -> None:
        if top in self._top or len(self._top) < _TOP_TRACKED:
            self._top[top] = self._top.get(top, 0) + blocks
        else:
            self._top["(others)"] = self._top.get("(others)", 0) + blocks

    def _push(self, fd: int, top: str | None) -> None:
        entries = os.scandir(fd)
        self._stack.append(_Level(fd, entries, entries.close, top))

    def _pop(self) -> None:
        level = self._stack.pop()
        level.close_entries()
        os.close(level.fd)

    def _stop(self, because: str) -> None:
        self._stopped_because = because
        self.close()


def measure(root: Path, *, max_entries: int = 0, max_depth: int = MAX_DEPTH) -> Usage:
    """Walk ``root`` to the end in one go (the CLI; tests)."""
    with FolderWalk(root, max_entries=max_entries, max_depth=max_depth) as walk:
        while not walk.done:
            walk.step(1_000_000, float("inf"))
        return walk.usage()
