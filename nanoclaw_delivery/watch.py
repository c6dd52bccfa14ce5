"""Cheap change detection for ``outbound.db`` files.

Delivery must see a committed row within tens of milliseconds; polling every session's
database each few milliseconds would cost a query per session per tick. Instead:

- **inotify** (Linux, through libc with ctypes; no extra dependency) on each watched session's
  ``agent/`` folder. In ``journal_mode=DELETE`` (the runner's) a commit ends when
  ``outbound.db-journal`` is deleted: that event pokes the session (``is_commit``), and so
  does anything that creates, replaces or removes ``outbound.db`` itself. Closes do not: the
  host's own readers (delivery's, the sweeper's) hold the file ``O_RDWR`` (``session_vfs``),
  so each of their closes is an ``IN_CLOSE_WRITE`` that would poke the session for nothing
  (and delivery's idle release would poke itself). The writes before the end do not:
  a read started then only waits for the writer's lock (SQLite's busy handler sleeps 1 ms,
  then 2 ms, …), and each write would wake the loop (``IN_MODIFY`` is not even asked for).
  The same kernel inode is behind the container's bind mount, so writes from inside the
  container are seen too. A container that switches its file to another journal mode only
  delays its own rows, to the stat sweep below.
- **stat** of ``outbound.db`` (mtime, size) as the fallback where inotify is missing, and as
  a slow safety net beside it (a queue overflow, an unusual filesystem).

A poke only says "look": the session task then checks ``PRAGMA data_version`` and reads new
rows, so a spurious poke costs one cheap pragma.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from pathlib import Path

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

WATCH_MASK = IN_MOVED_TO | IN_CREATE | IN_DELETE
_EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len
DB_NAME = "outbound.db"
JOURNAL_NAME = "outbound.db-journal"


def is_commit(mask: int, name: str) -> bool:
    """Whether an event in ``agent/`` may mean new committed rows: the journal deleted (a
    commit's end), or ``outbound.db`` itself created, replaced or removed. Not the
    journal's creation (a write transaction starting), a close (our own readers'), nor any
    other file (the heartbeat)."""
    if name == JOURNAL_NAME:
        return bool(mask & IN_DELETE)
    return name == DB_NAME and bool(mask & (IN_CREATE | IN_MOVED_TO | IN_DELETE))


class InotifyUnavailable(OSError):
    pass


class Inotify:
    """A non-blocking inotify descriptor. ``read()`` returns (watch descriptor, mask, name)
    triples; register ``fileno()`` with the event loop's ``add_reader``."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("c")
        if name is None:
            raise InotifyUnavailable("libc not found")
        libc = ctypes.CDLL(name, use_errno=True)
        if not hasattr(libc, "inotify_init1"):
            raise InotifyUnavailable("no inotify in this libc")
        self._libc = libc
        self._libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise InotifyUnavailable(err, os.strerror(err))
        self.fd: int = fd

    def fileno(self) -> int:
        return self.fd

    def add(self, directory: Path) -> int:
        # A folder, never through a link (agent/ is the host's, but cheap to insist on).
        mask = WATCH_MASK | IN_ONLYDIR | IN_DONT_FOLLOW
        wd = int(self._libc.inotify_add_watch(self.fd, os.fsencode(directory), mask))
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(directory))
        return wd

    def remove(self, wd: int) -> None:
        # EINVAL: the watch is already gone (the folder was deleted); nothing to do.
        self._libc.inotify_rm_watch(self.fd, wd)

    def read(self) -> list[tuple[int, int, str]]:
        events: list[tuple[int, int, str]] = []
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return events
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            offset = 0
            while offset + _EVENT_HEADER.size <= len(data):
                wd, mask, _cookie, length = _EVENT_HEADER.unpack_from(data, offset)
                offset += _EVENT_HEADER.size
                raw = data[offset : offset + length]
                offset += length
                events.append((wd, mask, raw.split(b"\0", 1)[0].decode(errors="replace")))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_inotify() -> Inotify | None:
    try:
        return Inotify()
    except (InotifyUnavailable, OSError):
        return None


def file_signature(path: Path) -> tuple[int, int] | None:
    """(mtime ns, size) of a file, or None when it does not exist. A link is not followed:
    a planted one must not make us watch some other file."""
    try:
        info = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size)
