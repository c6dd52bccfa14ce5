"""The SQLite VFS for session databases: SQLite opens only regular files, and never blocks.

``outbound.db`` and its journal live in ``agent/``, which the container writes. SQLite opens
them by name, and not only when a connection opens: at the start of *every* read
transaction it looks for a hot journal and, when ``outbound.db-journal`` exists, opens it.
A FIFO planted under that name made that ``open`` block forever (a read-only open of a FIFO
waits for a writer), which hung the sweeper's whole pass and a delivery thread.

This VFS inherits the default unix VFS and changes only how files are opened. The opens
that could block are read-only opens (Linux never blocks ``O_RDWR`` on a FIFO), and a
read-only connection makes two kinds:

- the hot-journal probe (``SQLITE_OPEN_MAIN_JOURNAL | SQLITE_OPEN_READONLY``, the open made
  on every read): served by ``_Probe``, a file opened by us with ``O_NOFOLLOW | O_NONBLOCK``
  and checked with ``fstat`` in the same step, so there is no window between check and use;
- the database itself (once per connection): opened by the unix VFS *read-write* (no
  create), while SQLite is told the file is read-only. The pager of a read-only file never
  writes (a hot journal is still ``SQLITE_READONLY_ROLLBACK``, as with
  ``SQLITE_OPEN_READONLY``), and the descriptor is one that cannot block. Where ``O_RDWR``
  is refused (rootless, a file the container made read-only) SQLite falls back to a
  read-only open: only there is a window left, between the check below and that open,
  which the stall backstop (``nanoclaw_common.stall``) covers.

Before any open, the name must be absent or a regular file (``lstat``: a FIFO, a socket or a
link is refused with ``UnsafeSessionFile``), and a ``-wal`` file is refused: session
databases use a rollback journal (a read-only mount cannot hold WAL's ``-shm``), and a
container that switched its file to WAL would make us open ``-shm`` with SQLite's own
unguarded code. Reads, writes and locks go to the unix VFS unchanged, through apsw's thin
``VFSFile`` wrapper (measured: docs/performance.md, "Session VFS"). The main file is only
``lstat``-ed, never opened by us: closing a descriptor of it would drop the process's POSIX
locks on it (other connections' included).
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from dataclasses import dataclass
from typing import Final

import apsw

from nanoclaw_common.errors import Refused

VFS_NAME: Final = "nanoclaw-session"
_PROBE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_SECTOR_SIZE: Final = 4096
# A hot journal the host would roll back (``leftover_claims``' recovery) holds the original
# pages of one runner transaction: kilobytes. One this large is planted; rolling it back as
# root would cost minutes of I/O.
MAX_JOURNAL_BYTES: Final = 256 * 1024 * 1024

_registered: _SessionVFS | None = None
_lock = threading.Lock()


@dataclass
class Layers:
    """The defences of ``xOpen``, each of which a test may switch off to show that the
    layer under it holds on its own (production never changes them)."""

    vfs: bool = True  # False: the host's connections use SQLite's own unix VFS (old code)
    type_check: bool = True  # lstat: absent or a regular file
    probe: bool = True  # the hot-journal probe opened by us, without blocking
    rw_open: bool = True  # the database opened O_RDWR, read-only to SQLite


LAYERS: Final = Layers()


class UnsafeSessionFile(apsw.CantOpenError, Refused):
    """A session database file (or its journal) is not a regular file, or is reached through
    a symlink. SQLite could not open it: an ``apsw.CantOpenError`` like any other."""


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_regular_or_absent(path: str, max_bytes: int | None = None) -> None:
    """Raise ``UnsafeSessionFile`` unless ``path`` is missing or a regular file (no link
    followed) of at most ``max_bytes``."""
    try:
        info = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeSessionFile(f"{os.path.basename(path)} is {_kind(info.st_mode)}")
    if max_bytes is not None and info.st_size > max_bytes:
        raise UnsafeSessionFile(
            f"{os.path.basename(path)} is {info.st_size} bytes (more than {max_bytes})"
        )


class _Probe:
    """The hot-journal probe's file: read-only, opened and checked by us in one step, so
    the file read is the file checked. SQLite reads its first byte and closes it."""

    def __init__(self, path: str) -> None:
        try:
            fd = os.open(path, _PROBE_FLAGS)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafeSessionFile(f"{os.path.basename(path)} is a symlink") from None
            # Gone since SQLite saw it (a commit just ended), or unreadable: what the unix
            # VFS would report, so SQLite handles it as it always does.
            raise apsw.CantOpenError(f"{os.path.basename(path)}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise UnsafeSessionFile(f"{os.path.basename(path)} is {_kind(info.st_mode)}")
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def xRead(self, amount: int, offset: int) -> bytes:  # noqa: N802 (apsw's names)
        return os.pread(self.fd, amount, offset)  # short reads are SQLite's to handle

    def xWrite(self, data: bytes, offset: int) -> None:  # noqa: N802
        raise apsw.ReadOnlyError("the journal probe is read-only")

    def xTruncate(self, newsize: int) -> None:  # noqa: N802
        raise apsw.ReadOnlyError("the journal probe is read-only")

    def xSync(self, flags: int) -> None:  # noqa: N802
        pass

    def xFileSize(self) -> int:  # noqa: N802
        return os.fstat(self.fd).st_size

    def xLock(self, level: int) -> None:  # noqa: N802
        pass  # SQLite locks the database file, never its journal

    def xUnlock(self, level: int) -> None:  # noqa: N802
        pass

    def xCheckReservedLock(self) -> bool:  # noqa: N802
        return False

    def xFileControl(self, op: int, ptr: int) -> bool:  # noqa: N802
        return False

    def xSectorSize(self) -> int:  # noqa: N802
        return _SECTOR_SIZE

    def xDeviceCharacteristics(self) -> int:  # noqa: N802
        return 0

    def xClose(self) -> None:  # noqa: N802
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _SessionVFS(apsw.VFS):
    """Every method runs with the GIL held (apsw calls into Python, and from there into the
    unix VFS), so none may block: a blocked call would freeze every thread of the program,
    the stall backstop's included. Hence our own probe, the ``O_RDWR`` open, and ``xSleep``
    below."""

    def __init__(self) -> None:
        super().__init__(VFS_NAME, base="")

    def xSleep(self, microseconds: int) -> int:  # noqa: N802 (apsw's name)
        # SQLite's busy handler sleeps through the VFS between lock attempts; the unix VFS's
        # sleep, called from here, would hold the GIL for each nap (up to 100 ms).
        time.sleep(microseconds / 1_000_000)
        return microseconds

    def xFullPathname(self, name: str) -> str:  # noqa: N802 (apsw's name)
        # The unix VFS reports a symlink on the way with SQLITE_OK_SYMLINK, which an inherited
        # Python VFS cannot pass on (it surfaces as "not an error"); the same rule as
        # SQLITE_OPEN_NOFOLLOW, with a clear message.
        absolute = os.path.abspath(name)
        if os.path.realpath(absolute) != absolute:
            raise UnsafeSessionFile(f"{absolute} is or passes through a symlink")
        return absolute

    def xOpen(  # noqa: N802 (apsw's name)
        self, name: str | apsw.URIFilename | None, flags: list[int]
    ) -> apsw.VFSFile:
        path = name.filename() if isinstance(name, apsw.URIFilename) else name
        wanted = flags[0]
        if path is not None:
            if wanted & apsw.SQLITE_OPEN_WAL:
                raise UnsafeSessionFile(
                    f"{os.path.basename(path)}: session databases use a rollback journal, not WAL"
                )
            readonly = bool(wanted & apsw.SQLITE_OPEN_READONLY)
            journal = bool(wanted & apsw.SQLITE_OPEN_MAIN_JOURNAL)
            if readonly and journal and LAYERS.probe:
                flags[1] = apsw.SQLITE_OPEN_READONLY
                return _Probe(path)  # type: ignore[return-value]  # apsw takes any file object
            if LAYERS.type_check:
                check_regular_or_absent(path, MAX_JOURNAL_BYTES if journal else None)
            if readonly and wanted & apsw.SQLITE_OPEN_MAIN_DB and LAYERS.rw_open:
                inner = [(wanted & ~apsw.SQLITE_OPEN_READONLY) | apsw.SQLITE_OPEN_READWRITE, 0]
                opened = apsw.VFSFile("", name, inner)
                # Read-only to SQLite whatever the descriptor allows.
                flags[1] = (inner[1] & ~apsw.SQLITE_OPEN_READWRITE) | apsw.SQLITE_OPEN_READONLY
                return opened
        return apsw.VFSFile("", name, flags)


def vfs_name() -> str | None:
    """Register the session VFS once per process (idempotent, thread-safe); its name (None
    only when a test switched the VFS off)."""
    global _registered  # noqa: PLW0603 (one registration per process, by design)
    if not LAYERS.vfs:
        return None
    if _registered is None:
        with _lock:
            if _registered is None:
                _registered = _SessionVFS()
    return VFS_NAME
