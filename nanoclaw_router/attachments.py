"""Saving a message's attachments under ``<session>/inbox/<row id>/`` before its row is
inserted, so the agent never sees a row whose files are missing.

Safety (the container reads this folder; the names come from strangers):
- file names are reduced to one safe component (no ``/``, ``\\``, ``..``, leading dots,
  control characters), at most 100 characters;
- every step goes through directory descriptors (``nanoclaw_common.hostfs``): a symlink
  planted at ``inbox``, ``inbox/<id>`` or a file name is refused, never followed;
- files are created with ``O_EXCL`` (never overwrite) and fsynced before the row commits,
  readable by the session's container and nobody else (``privacy``);
- size limits per file (the event struct's) and per message (``MAX_MESSAGE_BYTES``).

A re-sent message (same row id) finds its files already there: a regular file of the same
size is taken as already saved.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Final

from nanoclaw_common import privacy
from nanoclaw_common.channels.common import MAX_MESSAGE_ATTACHMENT_BYTES
from nanoclaw_common.hostfs import Dir, UnsafePath
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


def _write_new(folder: Dir, name: str, data: bytes) -> bool:
    """Create ``name`` with ``data``; False if a different entry already has that name."""
    try:
        folder.create_file(name, data, mode=privacy.agent_readable_mode(folder=False))
    except FileExistsError:
        info = folder.lstat(name)
        # The same message re-sent after a crash: the file is already there.
        return info is not None and stat.S_ISREG(info.st_mode) and info.st_size == len(data)
    fd, _size = folder.open_regular(name)
    try:
        privacy.share_with_agent(fd, folder=False)
    finally:
        os.close(fd)
    return True


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnsafePath):
        return "a symlink or not a folder"
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def save_attachments(paths: SessionPaths, row_id: str, files: list[IncomingAttachment]) -> Saved:
    """Write ``files`` under ``inbox/<row id>/``. Refusals become notes, never exceptions
    (a bad attachment must not cost the message its text)."""
    saved = Saved()
    if not files:
        return saved
    folder = inbox_dir_name(row_id)
    shared = privacy.agent_readable_mode(folder=True)
    try:
        root = Dir.trusted(paths.root)
        inbox = root.make_dir("inbox", mode=shared)
    except (OSError, UnsafePath) as exc:
        saved.notes.append(f"[attachments not saved: inbox unusable ({_reason(exc)})]")
        return saved
    try:
        try:
            message_dir = inbox.make_dir(folder, mode=shared)
            privacy.share_with_agent(message_dir.fd, folder=True)
        except (OSError, UnsafePath) as exc:
            saved.notes.append(f"[attachments not saved: inbox folder is {_reason(exc)}]")
            return saved
        with message_dir:
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
                    if candidate not in used and _write_new(message_dir, candidate, item.data):
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
            message_dir.sync()
    finally:
        inbox.close()
        root.close()
    return saved
