"""Saving a message's attachments under ``<session>/inbox/<row id>/`` before its row is
inserted, so the agent never sees a row whose files are missing.

Safety (the container reads this folder; the names come from strangers):
- file names are reduced to one safe component (no ``/``, ``\\``, ``..``, leading dots,
  control characters), at most 100 characters;
- every step goes through directory file descriptors opened with ``O_NOFOLLOW``: a symlink
  planted at ``inbox``, ``inbox/<id>`` or a file name is refused, never followed;
- files are created with ``O_EXCL`` (never overwrite) and fsynced before the row commits;
- size limits per file (the event struct's) and per message (``MAX_MESSAGE_BYTES``).

A re-sent message (same row id) finds its files already there: a regular file of the same
size is taken as already saved.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Final

from nanoclaw_common.channels.common import MAX_MESSAGE_ATTACHMENT_BYTES
from nanoclaw_common.ids import is_safe_id
from nanoclaw_common.messages import Attachment, IncomingAttachment
from nanoclaw_common.paths import SessionPaths

# The adapters stop downloading at the same cap; this holds for events from anywhere else.
MAX_MESSAGE_BYTES: Final = MAX_MESSAGE_ATTACHMENT_BYTES
MAX_NAME_CHARS: Final = 100
_UNSAFE = re.compile(r"[^\w.+ -]+")  # letters of any script stay; bidi controls, slashes go
_EXTENSIONS: Final = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "audio/ogg": ".ogg",
    "audio/mpeg": ".mp3",
    "audio/mp4": ".m4a",
    "video/mp4": ".mp4",
    "application/pdf": ".pdf",
    "text/plain": ".txt",
    "application/json": ".json",
    "application/zip": ".zip",
}
_KIND_EXTENSIONS: Final = {"image": ".jpg", "sticker": ".webp", "voice": ".ogg", "audio": ".mp3"}


@dataclass
class Saved:
    attachments: list[Attachment] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was left out, told to the agent


def safe_filename(name: str, index: int, mime_type: str | None, kind: str) -> str:
    """One safe path component derived from an untrusted name."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE.sub("_", base).strip(" ._")
    if len(base) > MAX_NAME_CHARS:
        stem, dot, ext = base.rpartition(".")
        ext = ext[:10] if dot else ""
        base = (stem if dot else base)[: MAX_NAME_CHARS - len(ext) - 1] + (f".{ext}" if ext else "")
    if not base or base in (".", ".."):
        mime = (mime_type or "").split(";", 1)[0].strip().lower()
        ext = _EXTENSIONS.get(mime) or _KIND_EXTENSIONS.get(kind, "")
        base = f"attachment-{index + 1}{ext}"
    return base


def inbox_dir_name(row_id: str) -> str:
    """The row id when it is a safe component; a hash of it otherwise."""
    if is_safe_id(row_id):
        return row_id
    return "a-" + hashlib.sha256(row_id.encode()).hexdigest()[:32]


def _open_dir(name: str, dir_fd: int | None, *, create: bool) -> int:
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o755, dir_fd=dir_fd)
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)


def _write_new(dir_fd: int, name: str, data: bytes) -> bool:
    """Create ``name`` with ``data``; False if a different entry already has that name."""
    try:
        fd = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd
        )
    except FileExistsError:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        # The same message re-sent after a crash: the file is already there.
        return stat.S_ISREG(info.st_mode) and info.st_size == len(data)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def save_attachments(paths: SessionPaths, row_id: str, files: list[IncomingAttachment]) -> Saved:
    """Write ``files`` under ``inbox/<row id>/``. Refusals become notes, never exceptions
    (a bad attachment must not cost the message its text)."""
    saved = Saved()
    if not files:
        return saved
    folder = inbox_dir_name(row_id)
    try:
        inbox_fd = _open_dir(str(paths.inbox), None, create=True)
    except OSError as exc:
        saved.notes.append(f"[attachments not saved: inbox unusable ({exc.strerror})]")
        return saved
    try:
        try:
            message_fd = _open_dir(folder, inbox_fd, create=True)
        except OSError as exc:
            reason = "a symlink" if exc.errno == errno.ELOOP else exc.strerror
            saved.notes.append(f"[attachments not saved: inbox folder is {reason}]")
            return saved
        try:
            total = 0
            used: set[str] = set()
            for index, item in enumerate(files):
                total += len(item.data)
                if total > MAX_MESSAGE_BYTES:
                    saved.notes.append(f"[attachment {item.name[:80]} left out: message too large]")
                    continue
                name = safe_filename(item.name, index, item.mime_type, item.kind)
                candidate, n = name, 2
                while True:
                    if candidate not in used and _write_new(message_fd, candidate, item.data):
                        break
                    stem, dot, ext = name.rpartition(".")
                    candidate = f"{stem}-{n}.{ext}" if dot and stem else f"{name}-{n}"
                    n += 1
                    if n > 50:
                        candidate = ""
                        break
                if not candidate:
                    saved.notes.append(f"[attachment {name} left out: name clash]")
                    continue
                used.add(candidate)
                saved.attachments.append(
                    Attachment(
                        name=candidate,
                        kind=item.kind,
                        mime_type=item.mime_type,
                        size=len(item.data),
                        local_path=f"inbox/{folder}/{candidate}",
                    )
                )
            os.fsync(message_fd)
        finally:
            os.close(message_fd)
    finally:
        os.close(inbox_fd)
    return saved
