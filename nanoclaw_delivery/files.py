"""Files the agent sends, from ``<session>/agent/outbox/<message_out_id>/``.

The ``agent/`` folder is writable by the container, so everything in it is hostile: a name
can be ``../x``, a file can be a symlink to ``/etc/shadow`` or a FIFO, and ``outbox`` or
``outbox/<id>`` can be swapped for a symlink at any moment (``renameat2`` with
``RENAME_EXCHANGE`` in a loop). So every access goes through ``nanoclaw_common.hostfs``:

- the message id and every file name are single safe components;
- ``outbox/<id>`` is walked with directory descriptors from ``agent/`` (a folder the
  container cannot replace: it is a mount point under its read-only ``/session``), never
  following a link (``openat2`` with ``RESOLVE_NO_SYMLINKS``, or ``O_NOFOLLOW`` per part);
- each file must be a regular file with one link and a bounded size, opened without
  blocking; its bytes are copied from that same descriptor into a host-private staging
  folder, and the adapter (or the target session's inbox) gets the copy;
- removal is ``rmtree`` relative to the ``outbox`` descriptor, which never follows a link.

Any requested file that breaks a rule refuses the whole row (no partial sends).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from nanoclaw_common.channels.base import OutgoingFile
from nanoclaw_common.hostfs import Dir, TooLarge, UnsafePath, is_safe_name
from nanoclaw_common.messages import MAX_ATTACHMENT_BYTES
from nanoclaw_common.paths import SessionPaths
from nanoclaw_common.untrusted import shown
from nanoclaw_delivery.outcome import Denied

__all__ = ["discard", "is_safe_name", "outbox_names", "remove_outbox", "stage_files"]

OUTBOX = "outbox"


def _outbox(paths: SessionPaths, *names: str) -> Dir:
    """``agent/outbox/<names>`` as a descriptor. Raises ``FileNotFoundError`` or
    ``UnsafePath``."""
    with Dir.trusted(paths.agent_dir) as agent:
        return agent.walk(OUTBOX, *names)


def stage_files(
    paths: SessionPaths, message_out_id: str, names: list[str], staging: Path
) -> list[OutgoingFile]:
    """Copy the named outbox files into ``staging/`` (created fresh, mode 0700) and return
    the copies. Raises ``Denied`` naming the first file that breaks a rule."""
    if not names:
        return []
    if not is_safe_name(message_out_id):
        raise Denied(f"unsafe outbound message id {shown(message_out_id)!r}")
    for name in names:
        if not is_safe_name(name):
            raise Denied(f"unsafe file name {shown(name)!r}")
    if len(set(names)) != len(names):
        raise Denied("the same file is listed twice", notify_owner=False)
    try:
        source = _outbox(paths, message_out_id)
    except FileNotFoundError:
        raise Denied(
            f"outbox folder {shown(message_out_id)!r} does not exist", notify_owner=False
        ) from None
    except UnsafePath as exc:
        raise Denied(f"the outbox folder is not a plain folder: {exc}") from None
    with source:
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True, mode=0o700)
        staged: list[OutgoingFile] = []
        with Dir.trusted(staging) as target:
            for name in names:
                _copy_regular(source, target, name)
                staged.append(OutgoingFile(name=name, path=staging / name))
    return staged


def _copy_regular(source: Dir, target: Dir, name: str) -> None:
    try:
        source.copy_to((name,), target, name, max_bytes=MAX_ATTACHMENT_BYTES)
    except FileNotFoundError:
        raise Denied(f"file {shown(name)!r} is not in the outbox", notify_owner=False) from None
    except UnsafePath as exc:
        # Too large is the agent's mistake, not an attack: no owner notice for it.
        raise Denied(f"file refused: {exc}", notify_owner=not isinstance(exc, TooLarge)) from None


def outbox_names(paths: SessionPaths) -> list[str]:
    """The folders (or whatever the container put) in ``agent/outbox``: empty when it is
    missing or not a real folder."""
    try:
        with _outbox(paths) as outbox:
            return outbox.names()
    except (FileNotFoundError, UnsafePath):
        return []


def remove_outbox(paths: SessionPaths, message_out_id: str) -> bool:
    """Remove a delivered row's outbox folder (whatever is there under that name: a link is
    unlinked, never followed). False when there was none. Failures are the caller's to log:
    they never cause a re-send."""
    if not is_safe_name(message_out_id):
        return False
    try:
        outbox = _outbox(paths)
    except (FileNotFoundError, UnsafePath):
        return False
    with outbox:
        return outbox.remove(message_out_id)


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
