"""Host-side access to paths a container can write: only through directory descriptors.

Everything under a session's ``agent/`` and in a group folder is the container's to shape: a
name can be a symlink to ``/etc/shadow``, a folder can be swapped for a link between two of
our system calls (``renameat2(RENAME_EXCHANGE)`` in a loop wins such races in seconds), a file
can be a FIFO that blocks whoever opens it, or 50 GB. The host programs run as root, so every
one of their accesses to those places goes through this module, by these rules:

- **A trusted root.** A walk starts from a folder the host owns and the container cannot
  change (the session folder, ``agent/`` itself, which is a mount point under a read-only
  mount inside the container, ``groups/`` or a group folder), opened with ``Dir.trusted``.
- **Names are single components.** A name the container chose is one safe component
  (``safe_name``) or it is refused; a path is a sequence of such names walked from the root,
  never a string resolved by the kernel from ``/``, and never resolved twice: what was
  checked is the descriptor that is used.
- **No links are followed.** ``openat2`` with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
  RESOLVE_NO_MAGICLINKS`` where the kernel has it; elsewhere (or where seccomp refuses it)
  each component is opened with ``O_DIRECTORY | O_NOFOLLOW`` relative to the previous one.
- **Only regular files, bounded.** Files are opened ``O_NOFOLLOW | O_NONBLOCK | O_NOCTTY``
  (a FIFO or a device cannot block or act on the open), then ``fstat`` must say ``S_ISREG``
  with one link, and every read is bounded: the size is checked before reading and the read
  stops one byte past the limit, so a file that grows meanwhile is refused too.
- **Root creates only new files.** ``O_CREAT | O_EXCL | O_NOFOLLOW`` relative to a directory
  descriptor (``Dir.create_file``): a name that exists, as anything, is never written
  through. Removal is ``shutil.rmtree(name, dir_fd=...)`` or ``unlink``, neither of which
  follows a link.
- ``O_CLOEXEC`` everywhere: no descriptor leaks into a child process (podman, a build).

SQLite's own opens of the session databases are the one exception: SQLite opens by name.
They happen in ``agent/`` (a trusted folder), SQLite adds ``O_NOFOLLOW`` itself, and
``store.session_vfs`` checks the file type first (docs/internals.md, "Files and mounts").

Refusals raise ``UnsafePath`` (a ``Refused``), whose text quotes container-chosen names only
through ``untrusted.shown``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from nanoclaw_common.errors import Refused
from nanoclaw_common.untrusted import shown

DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
NEW_FILE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_NAME_BYTES: Final = 255  # NAME_MAX on Linux
MAX_ENTRIES: Final = 10_000  # entries read from one container folder
_CHUNK: Final = 1 << 20
_FIFO_WRITER_FLAGS: Final = os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC

# openat2(2): struct open_how and the RESOLVE_* flags (linux/openat2.h).
RESOLVE_NO_MAGICLINKS: Final = 0x02
RESOLVE_NO_SYMLINKS: Final = 0x04
RESOLVE_BENEATH: Final = 0x08
_RESOLVE: Final = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
_SYS_OPENAT2: Final = {"x86_64": 437, "aarch64": 437, "arm64": 437}


class UnsafePath(Refused):
    """A container-writable path broke a rule: a link, a non-regular file, a bad name, too
    large. The message is safe to log (container-chosen names are escaped and capped)."""


class TooLarge(UnsafePath):
    """A file is over the caller's size limit (or grew past it while being read)."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _Openat2:
    """The ``openat2`` system call through ctypes (Python 3.11 has no wrapper). ``usable``
    is decided once, by a probe: ENOSYS (an old kernel) or EPERM (a seccomp profile that
    refuses unknown calls) means the component walk is used instead."""

    def __init__(self) -> None:
        self.number = _SYS_OPENAT2.get(os.uname().machine)
        self._syscall: Any = None  # libc's syscall(), once probed
        self._usable: bool | None = None
        self.forced_off = False  # tests: exercise the fallback walk

    @property
    def usable(self) -> bool:
        if self.forced_off:
            return False
        if self._usable is None:
            self._usable = self._probe()
        return self._usable

    def _probe(self) -> bool:
        if self.number is None:
            return False
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            function = libc.syscall
        except (OSError, AttributeError):
            return False
        function.restype = ctypes.c_long
        function.argtypes = [
            ctypes.c_long,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.POINTER(_OpenHow),
            ctypes.c_size_t,
        ]
        self._syscall = function
        root = os.open("/", DIR_FLAGS)
        try:
            os.close(self.call(root, ".", DIR_FLAGS, 0))
        except OSError:
            self._syscall = None
            return False
        finally:
            os.close(root)
        return True

    def call(self, dir_fd: int, path: str, flags: int, mode: int) -> int:
        assert self._syscall is not None
        how = _OpenHow(flags, mode, _RESOLVE)
        encoded = os.fsencode(path)
        while True:
            fd = int(self._syscall(self.number, dir_fd, encoded, ctypes.byref(how), 24))
            if fd >= 0:
                return fd
            err = ctypes.get_errno()
            if err != errno.EINTR:
                raise OSError(err, os.strerror(err), path)


OPENAT2: Final = _Openat2()


def safe_name(name: str, what: str = "name") -> str:
    """``name`` when it is one safe path component: not empty, not ``.`` or ``..``, no
    ``/``, ``\\`` or NUL, at most 255 bytes. Raises ``UnsafePath`` otherwise."""
    try:
        size = len(os.fsencode(name)) if isinstance(name, str) else MAX_NAME_BYTES + 1
    except UnicodeError:  # a lone surrogate: no file name can hold it
        size = MAX_NAME_BYTES + 1
    if (
        not name
        or name in (".", "..")
        or any(c in name for c in "/\\\x00")
        or size > MAX_NAME_BYTES
    ):
        raise UnsafePath(f"unsafe {what} {shown(name)!r}")
    return name


def is_safe_name(name: str) -> bool:
    try:
        safe_name(name)
    except UnsafePath:
        return False
    return True


def _refusal(exc: OSError, names: tuple[str, ...]) -> UnsafePath:
    where = "/".join(shown(n) for n in names)
    if exc.errno in (errno.ELOOP, errno.EXDEV):
        return UnsafePath(f"{where} is or passes through a symlink")
    if exc.errno == errno.ENOTDIR:
        return UnsafePath(f"{where} passes through a symlink or something that is not a folder")
    return UnsafePath(f"{where} cannot be opened ({exc.strerror})")


def _open_beneath(dir_fd: int, names: tuple[str, ...], flags: int, mode: int = 0) -> int:
    """Open ``names`` (safe components) below ``dir_fd`` without following any link.
    ``FileNotFoundError`` passes through (the caller decides what absence means); other
    failures become ``UnsafePath``."""
    for name in names:
        safe_name(name)
    try:
        if OPENAT2.usable:
            return OPENAT2.call(dir_fd, "/".join(names), flags, mode)
        current = dir_fd
        try:
            for name in names[:-1]:
                following = os.open(name, DIR_FLAGS, dir_fd=current)
                if current != dir_fd:
                    os.close(current)
                current = following
            return os.open(names[-1], flags, mode, dir_fd=current)
        finally:
            if current != dir_fd:
                os.close(current)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _refusal(exc, names) from None


class Dir:
    """An open directory descriptor; a context manager that closes it. Every method takes
    names relative to this folder (each one safe component) and follows no link."""

    def __init__(self, fd: int, label: str) -> None:
        self.fd = fd
        self.label = label  # for messages: where this folder is

    @classmethod
    def trusted(cls, path: Path | str) -> Dir:
        """Open a folder the host owns (its parents are host-owned too); the last component
        must not be a symlink. Raises ``FileNotFoundError`` or ``UnsafePath``."""
        try:
            return cls(os.open(path, DIR_FLAGS), str(path))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise UnsafePath(f"{path} is not a plain folder ({exc.strerror})") from None

    def __enter__(self) -> Dir:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # -- folders -----------------------------------------------------------------------------

    def walk(self, *names: str) -> Dir:
        """The folder ``names`` below this one (raises ``FileNotFoundError`` when a part is
        missing, ``UnsafePath`` when one is a link or not a folder)."""
        if not names:
            return Dir(os.dup(self.fd), self.label)
        return Dir(_open_beneath(self.fd, names, DIR_FLAGS), f"{self.label}/{'/'.join(names)}")

    def make_dirs(self, *names: str, mode: int = 0o700) -> Dir:
        """Walk ``names``, creating the missing folders with ``mode``; an existing part must
        be a real folder (never a link). Returns the last one."""
        current = Dir(os.dup(self.fd), self.label)
        try:
            for name in names:
                following = current.make_dir(name, mode=mode)
                current.close()
                current = following
        except BaseException:
            current.close()
            raise
        return current

    def make_dir(self, name: str, *, mode: int = 0o700) -> Dir:
        """Open folder ``name``, creating it with ``mode`` when it is missing."""
        safe_name(name)
        try:
            os.mkdir(name, mode, dir_fd=self.fd)
        except FileExistsError:
            pass
        except OSError as exc:
            raise _refusal(exc, (name,)) from None
        return self.walk(name)

    def make_new_dir(self, name: str, *, mode: int = 0o700) -> Dir:
        """Create folder ``name``, which must not exist yet (``FileExistsError``)."""
        safe_name(name)
        os.mkdir(name, mode, dir_fd=self.fd)
        return self.walk(name)

    def names(self, limit: int = MAX_ENTRIES) -> list[str]:
        """The entries of this folder (at most ``limit``; the container may make millions)."""
        found: list[str] = []
        with os.scandir(self.fd) as entries:
            for entry in entries:
                found.append(entry.name)
                if len(found) >= limit:
                    break
        return found

    def lstat(self, name: str) -> os.stat_result | None:
        """The entry itself (a link is not followed); None when absent."""
        safe_name(name)
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def mtime_ms(self, name: str) -> int | None:
        """mtime of a regular file ``name``; None when absent or anything else (a FIFO or a
        link planted as the heartbeat counts as no heartbeat)."""
        info = self.lstat(name)
        if info is None or not stat.S_ISREG(info.st_mode):
            return None
        return info.st_mtime_ns // 1_000_000

    def remove(self, name: str) -> bool:
        """Remove entry ``name`` whatever it is (a folder with all it holds); never follows a
        link. False when it was not there."""
        info = self.lstat(name)
        if info is None:
            return False
        if stat.S_ISDIR(info.st_mode):
            # The fd-based rmtree: it opens every folder with O_NOFOLLOW relative to its
            # parent and checks it is the one it listed, so a swap cannot redirect it.
            shutil.rmtree(name, dir_fd=self.fd)
        else:
            try:
                os.unlink(name, dir_fd=self.fd)
            except FileNotFoundError:
                return False
        return True

    # -- files -------------------------------------------------------------------------------

    def open_regular(
        self, *names: str, max_bytes: int | None = None, single_link: bool = True
    ) -> tuple[int, int]:
        """A read-only descriptor of the regular file ``names`` and its size. Refused: a link
        anywhere, a FIFO, socket or device (opened without blocking, then seen by ``fstat``),
        a file with other hard links (unless ``single_link`` is False: a host-owned file a
        backup may have linked), a size over ``max_bytes``."""
        fd = _open_beneath(self.fd, names, FILE_FLAGS)
        try:
            info = os.fstat(fd)
            where = "/".join(shown(n) for n in names)
            if not stat.S_ISREG(info.st_mode):
                raise UnsafePath(f"{where} is not a regular file")
            if single_link and info.st_nlink != 1:
                raise UnsafePath(f"{where} has other hard links")
            if max_bytes is not None and info.st_size > max_bytes:
                raise TooLarge(f"{where} is {info.st_size} bytes, over the {max_bytes}-byte limit")
        except BaseException:
            os.close(fd)
            raise
        return fd, info.st_size

    def read_bytes(self, *names: str, max_bytes: int) -> bytes:
        """The whole regular file ``names``, at most ``max_bytes`` (see ``open_regular``)."""
        fd, _size = self.open_regular(*names, max_bytes=max_bytes)
        try:
            return b"".join(_bounded_chunks(fd, max_bytes, "/".join(names)))
        finally:
            os.close(fd)

    def copy_to(
        self,
        names: tuple[str, ...],
        target: Dir,
        new_name: str,
        *,
        max_bytes: int,
        mode: int = 0o600,
    ) -> int:
        """Copy the regular file ``names`` into a new file ``new_name`` of ``target`` (created
        with ``O_EXCL``; fsynced). Returns the bytes copied. The copy is taken from the one
        descriptor that was checked, so a swap after the check changes nothing."""
        fd, _size = self.open_regular(*names, max_bytes=max_bytes)
        try:
            out = target.create_fd(new_name, mode=mode)
            try:
                written = 0
                for chunk in _bounded_chunks(fd, max_bytes, "/".join(names)):
                    _write_all(out, chunk)
                    written += len(chunk)
                os.fsync(out)
            except BaseException:
                os.close(out)
                out = -1
                target.remove(new_name)
                raise
            finally:
                if out >= 0:
                    os.close(out)
        finally:
            os.close(fd)
        return written

    def create_fd(self, name: str, *, mode: int = 0o600) -> int:
        """A new file ``name`` (``O_CREAT | O_EXCL | O_NOFOLLOW``), open for writing, with
        exactly ``mode`` whatever the umask. ``FileExistsError`` when anything has that name,
        a dangling link included."""
        safe_name(name)
        fd = os.open(name, NEW_FILE_FLAGS, mode, dir_fd=self.fd)
        try:
            os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def create_file(
        self, name: str, data: bytes, *, mode: int = 0o600, owner: tuple[int, int] | None = None
    ) -> None:
        """Create ``name`` with ``data`` (see ``create_fd``), owned by ``owner`` when given,
        fsynced. ``FileExistsError`` when the name is taken: nothing is written through it."""
        fd = self.create_fd(name, mode=mode)
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            _write_all(fd, data)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(name, dir_fd=self.fd)
            raise
        os.close(fd)

    def sync(self) -> None:
        os.fsync(self.fd)

    # -- the stall backstop ------------------------------------------------------------------

    def release_fifo_readers(self, limit: int = MAX_ENTRIES) -> int:
        """Open, for writing and without blocking, every FIFO directly in this folder, then
        close it: a thread of ours stuck in a blocking ``open`` of one (SQLite, in the race
        that ``store.session_vfs`` cannot close) returns, and then reads end-of-file. Returns
        how many FIFOs were opened. Used only after a stall was detected."""
        released = 0
        for name in self.names(limit):
            info = self.lstat(name)
            if info is None or not stat.S_ISFIFO(info.st_mode):
                continue
            try:
                fd = os.open(name, _FIFO_WRITER_FLAGS, dir_fd=self.fd)
            except OSError:
                continue  # ENXIO: nobody is waiting on it
            os.close(fd)
            released += 1
        return released


def _bounded_chunks(fd: int, max_bytes: int, label: str) -> Iterator[bytes]:
    """Read ``fd`` to its end in chunks, refusing past ``max_bytes`` (a file that grew
    after its size was checked)."""
    total = 0
    while True:
        chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - total))
        if not chunk:
            return
        total += len(chunk)
        if total > max_bytes:
            raise TooLarge(f"{shown(label)} grew past the {max_bytes}-byte limit")
        yield chunk


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def unblock(folder: Path) -> int:
    """``Dir.release_fifo_readers`` on a trusted folder (a session's ``agent/``): the
    ``release`` of a stalled call (``stall.StallGuard``). Never raises."""
    try:
        with Dir.trusted(folder) as directory:
            return directory.release_fifo_readers()
    except (OSError, UnsafePath):
        return 0
