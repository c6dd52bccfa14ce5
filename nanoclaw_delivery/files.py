"""Files the agent sends, from ``<session>/agent/outbox/<message_out_id>/``.

The ``agent/`` folder is writable by the container, so everything in it is hostile: a name
can be ``../x``, a file can be a symlink to ``/etc/shadow``, and ``agent/outbox`` itself can be
a symlink. The rules:

- the message id and every file name are single safe path components;
- ``agent``, ``agent/outbox`` and ``agent/outbox/<id>`` are real directories (not symlinks)
  whose realpath is exactly where the host expects them;
- each file is opened with ``O_NOFOLLOW`` and must be a regular file of bounded size;
- the bytes are copied from that open descriptor into a host-private staging folder, and the
  adapter (or the target session's inbox) gets the copy. The container cannot swap a file for
  a symlink between our check and the platform upload.

Any requested file that breaks a rule refuses the whole row (no partial sends).
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from nanoclaw_common.channels.base import OutgoingFile
from nanoclaw_common.messages import MAX_ATTACHMENT_BYTES
from nanoclaw_common.paths import SessionPaths
from nanoclaw_delivery.outcome import Denied

_COPY_CHUNK = 1 << 20


def is_safe_name(name: str) -> bool:
    """A single path component: not empty, not ``.``/``..``, no separator or NUL."""
    return (
        bool(name)
        and name not in (".", "..")
        and "/" not in name
        and "\\" not in name
        and "\x00" not in name
        and os.path.basename(name) == name
    )


def _real_dir(path: Path, expected: Path) -> None:
    """``path`` must be a directory, not a symlink, whose realpath is ``expected``."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise Denied(f"outbox folder {path.name!r} does not exist", notify_owner=False) from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise Denied(f"{path.name!r} in the outbox path is not a plain folder")
    if Path(os.path.realpath(path)) != expected:
        raise Denied(f"outbox folder {path.name!r} resolves outside the session")


def outbox_dir(paths: SessionPaths, message_out_id: str) -> Path:
    """The verified outbox folder of one outbound row (raises ``Denied``)."""
    if not is_safe_name(message_out_id):
        raise Denied(f"unsafe outbound message id {message_out_id!r}")
    root = Path(os.path.realpath(paths.root))
    expected = root
    for part in ("agent", "outbox", message_out_id):
        expected = expected / part
        _real_dir(paths.root / expected.relative_to(root), expected)
    return paths.root / "agent" / "outbox" / message_out_id


def stage_files(
    paths: SessionPaths, message_out_id: str, names: list[str], staging: Path
) -> list[OutgoingFile]:
    """Copy the named outbox files into ``staging/`` (created fresh) and return the copies.
    Raises ``Denied`` naming the first file that breaks a rule."""
    if not names:
        return []
    for name in names:
        if not is_safe_name(name):
            raise Denied(f"unsafe file name {name!r}")
    if len(set(names)) != len(names):
        raise Denied("the same file is listed twice", notify_owner=False)
    source = outbox_dir(paths, message_out_id)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True, mode=0o700)
    staged: list[OutgoingFile] = []
    for name in names:
        target = staging / name
        _copy_regular(source / name, target, name)
        staged.append(OutgoingFile(name=name, path=target))
    return staged


def _copy_regular(source: Path, target: Path, name: str) -> None:
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Denied(f"file {name!r} is not in the outbox", notify_owner=False) from None
    except OSError as exc:
        # ELOOP: the name is a symlink (O_NOFOLLOW); anything else: unreadable.
        raise Denied(f"file {name!r} is a symlink or unreadable ({exc.strerror})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise Denied(f"file {name!r} is not a regular file")
    with os.fdopen(fd, "rb") as handle:
        if info.st_size > MAX_ATTACHMENT_BYTES:
            raise Denied(
                f"file {name!r} is {info.st_size} bytes, over the {MAX_ATTACHMENT_BYTES}"
                "-byte limit",
                notify_owner=False,
            )
        written = 0
        with open(target, "xb") as out:
            while chunk := handle.read(_COPY_CHUNK):
                written += len(chunk)
                if written > MAX_ATTACHMENT_BYTES:  # grew while we copied
                    raise Denied(f"file {name!r} grew past the size limit", notify_owner=False)
                out.write(chunk)


def remove_outbox(paths: SessionPaths, message_out_id: str) -> bool:
    """Remove a delivered row's outbox folder. Only a verified plain folder is removed
    (``rmtree`` unlinks symlinks inside it, never follows them). Failures are the caller's
    to log: they never cause a re-send."""
    try:
        folder = outbox_dir(paths, message_out_id)
    except Denied:
        return False
    shutil.rmtree(folder)
    return True


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
