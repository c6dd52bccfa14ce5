"""Notice a commit to ``inbound.db`` within milliseconds, without polling every few ms.

Upstream polled once a second. We watch the folder that holds the database with inotify
(through ctypes: no extra dependency). With ``journal_mode=DELETE`` every commit creates,
writes and deletes ``inbound.db-journal`` and writes ``inbound.db``; the journal's deletion is
the commit point, so the last event of every commit comes *after* the data is visible and a
reader woken by it never misses the row. While the journal has content a write is under way:
``wait`` keeps waiting for that last event instead of returning into the writer's lock. Events
for other names in the folder (``runner.json``, ``inbox/``) are drained and ignored.

inotify works across bind mounts (watches are on inodes), so it sees the host's writes from
inside the container. Where it is unavailable (not Linux, or the watch fails) we fall back to
comparing the files' stat signatures every ``fallback_poll_s``. Even with inotify, a timeout
compares the signatures, a safety net against a missed event.

A signal must end a wait at once: ``wake_fd`` is the write end of a pipe that ``main()`` hands
to ``signal.set_wakeup_fd`` (the C-level handler writes a byte to it); ``poke()`` does the same
from Python.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import select
import struct
import time
from pathlib import Path

from loguru import logger

log = logger.bind(component="watch")

_IN_MODIFY = 0x00000002
_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_FROM = 0x00000040
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_IN_DELETE = 0x00000200
_IN_Q_OVERFLOW = 0x00004000
_IN_IGNORED = 0x00008000
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_MASK = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE
_EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)

Signature = tuple[tuple[int, int, int] | None, ...]


def _stat_signature(paths: tuple[Path, ...]) -> Signature:
    found: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            found.append(None)
        else:
            found.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(found)


class _Inotify:
    def __init__(self, directory: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        wd = libc.inotify_add_watch(fd, os.fsencode(directory), _MASK)
        if wd < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch {directory} failed")
        self.fd = fd

    def drain(self, names: frozenset[bytes]) -> tuple[bool, bool]:
        """Read every queued event: (a watched name changed, the watch is gone)."""
        relevant = gone = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return relevant, gone
            offset = 0
            while offset < len(data):
                _wd, mask, _cookie, length = _EVENT_HEADER.unpack_from(data, offset)
                offset += _EVENT_HEADER.size
                name = data[offset : offset + length].rstrip(b"\0")
                offset += length
                if mask & _IN_Q_OVERFLOW or name in names:
                    relevant = True
                if mask & _IN_IGNORED:
                    gone = relevant = True

    def close(self) -> None:
        os.close(self.fd)


class ChangeWatcher:
    """``wait(timeout_s)`` returns True when ``db_path`` may have changed (or a wake was
    requested), False when the timeout passed with no sign of change."""

    def __init__(
        self, db_path: Path, *, fallback_poll_s: float = 0.02, use_inotify: bool = True
    ) -> None:
        self.db_path = db_path
        self.fallback_poll_s = fallback_poll_s
        journal = db_path.with_name(db_path.name + "-journal")
        self._paths = (db_path, journal)
        self._names = frozenset({os.fsencode(db_path.name), os.fsencode(journal.name)})
        self._read_fd, self.wake_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._signature = _stat_signature(self._paths)
        self._inotify: _Inotify | None = None
        try:
            if use_inotify:
                self._inotify = _Inotify(db_path.parent)
        except (OSError, AttributeError) as exc:
            # AttributeError: a libc without inotify (not Linux).
            log.warning("inotify unavailable ({}); polling {} by stat", exc, db_path)
            self._inotify = None

    @property
    def uses_inotify(self) -> bool:
        return self._inotify is not None

    def poke(self) -> None:
        """Make the current or next ``wait`` return at once (any thread)."""
        # A full pipe means a wake is already pending.
        with contextlib.suppress(BlockingIOError):
            os.write(self.wake_fd, b"\0")

    def _drain_wake(self) -> bool:
        woke = False
        while True:
            try:
                if not os.read(self._read_fd, 4096):
                    return woke
                woke = True
            except BlockingIOError:
                return woke

    def _signature_changed(self) -> bool:
        current = _stat_signature(self._paths)
        changed = current != self._signature
        self._signature = current
        return changed

    def _writing(self) -> bool:
        """A write transaction is past its first step: the rollback journal has content.
        Reading now would meet the writer's lock and sleep in SQLite's busy handler (1, 2,
        5, 10 ms...); the journal's deletion, the commit point, comes next."""
        try:
            return os.stat(self._paths[1]).st_size > 0
        except OSError:
            return False

    def wait(self, timeout_s: float) -> bool:
        timeout_s = max(0.0, timeout_s)
        if self._inotify is None:
            return self._poll_wait(timeout_s)
        deadline = time.monotonic() + timeout_s
        while True:
            left = max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([self._inotify.fd, self._read_fd], [], [], left)
            if self._read_fd in readable and self._drain_wake():
                return True
            if self._inotify.fd in readable:
                relevant, gone = self._inotify.drain(self._names)
                self._signature = _stat_signature(self._paths)
                if gone:
                    log.warning("inotify watch on {} ended; polling by stat", self.db_path.parent)
                    self._inotify.close()
                    self._inotify = None
                    return True
                if relevant and not self._writing():
                    return True
                if time.monotonic() < deadline:
                    continue  # mid-commit (or nothing of ours): its last event follows
            if not readable or time.monotonic() >= deadline:
                return self._signature_changed()

    def _poll_wait(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            if self._signature_changed():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            readable, _, _ = select.select([self._read_fd], [], [], min(left, self.fallback_poll_s))
            if readable and self._drain_wake():
                return True

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        for fd in (self._read_fd, self.wake_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
