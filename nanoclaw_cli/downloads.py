"""Files the terminal chat receives from the assistant, saved on the operator's disk.

The name comes from the agent (a file it sends), so it is reduced to one safe path
component; the file is created new (``O_EXCL``), never through a symlink (``O_NOFOLLOW``)
and readable by the operator alone (0600), in a folder created 0700. The default folder
(``<home>/downloads``) is made 0700 if it is not; a folder the operator named keeps its mode.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Final

MAX_NAME_CHARS: Final = 100
MAX_TRIES: Final = 1_000
_UNSAFE: Final = re.compile(r"[^\w.+ -]+")  # letters of any script stay; controls, slashes go


def safe_download_name(name: str) -> str:
    """One harmless path component from a name the other side chose."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE.sub("_", base).strip(" ._")
    if len(base) > MAX_NAME_CHARS:
        stem, dot, ext = base.rpartition(".")
        ext = ext[:10] if dot else ""
        base = (stem if dot else base)[: MAX_NAME_CHARS - len(ext) - 1] + (f".{ext}" if ext else "")
    return base or "file"


def _open_folder(folder: Path, *, private: bool) -> int:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    info = os.fstat(fd)
    if private and info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) & 0o077:
        os.fchmod(fd, 0o700)
    return fd


def save_download(folder: Path, name: str, data: bytes, *, private: bool = True) -> Path:
    """Write ``data`` as a new file in ``folder``: ``<name>``, or ``<n>-<name>`` when that
    exists. Returns its path."""
    safe = safe_download_name(name)
    folder_fd = _open_folder(folder, private=private)
    try:
        for n in range(1, MAX_TRIES + 1):
            candidate = safe if n == 1 else f"{n}-{safe}"
            try:
                fd = os.open(
                    candidate,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                    dir_fd=folder_fd,
                )
            except FileExistsError:
                continue
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            except BaseException:
                os.close(fd)
                os.unlink(candidate, dir_fd=folder_fd)
                raise
            os.close(fd)
            return folder / candidate
        raise FileExistsError(f"{MAX_TRIES} files named like {safe} already in {folder}")
    finally:
        os.close(folder_fd)
