"""What the agent and the owner are told about a disk block: the texts, and the ids that make
each written once (derived from the block: its scope, folder and time).

Notes are ``chat`` rows from ``system`` with no reply address, as delivery writes them
(``nanoclaw_delivery/notify.py``); owner notices are ``central.owner_notices`` rows of kind
``disk``, coalesced per group like delivery's (``store.owner_notices``), sent by delivery's
notice pass. Names of files the agent made are container-chosen: they go through
``untrusted.shown``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from nanoclaw_common.disk import OWNER_NOTICE_KIND
from nanoclaw_common.disk.limits import Limit, Scope, human_bytes
from nanoclaw_common.messages import system_note
from nanoclaw_common.paths import CONTAINER
from nanoclaw_common.store import InboundStore, NewInbound
from nanoclaw_common.store.disk import BLOCK_CLEANUP, DiskBlock
from nanoclaw_common.store.rows import AgentGroup
from nanoclaw_common.untrusted import shown
from nanoclaw_sweeper.disk_rules import cleanup_ceiling

FLOOR_NOTICE_GROUP: Final = "(all groups)"  # owner_notices.agent_group_id of a floor notice
NOTICE_KIND: Final = OWNER_NOTICE_KIND


def note_id(block: DiskBlock) -> str:
    return f"disk-{block.scope}-{block.scope_id}-{block.blocked_at_ms}-{block.state}"


def notice_cause(block: DiskBlock) -> str:
    """The cause an owner notice counts: this block in this state (a crash and a re-run
    count it once)."""
    return note_id(block)


def container_folder(scope: str) -> str:
    """Where the agent sees the folder."""
    return str(CONTAINER.workspace) if scope == Scope.GROUP else str(CONTAINER.session.agent_dir)


def _usage(block: DiskBlock) -> str:
    return f"{human_bytes(block.bytes)} in {block.entries} entries"


def _quota(limit_bytes: int, limit_entries: int) -> str:
    parts = []
    if limit_bytes:
        parts.append(human_bytes(limit_bytes))
    if limit_entries:
        parts.append(f"{limit_entries} entries")
    return " / ".join(parts) or "none"


def _largest(largest: list[tuple[str, int]]) -> str:
    if not largest:
        return ""
    listed = ", ".join(f"{shown(name, 80)} ({human_bytes(size)})" for name, size in largest)
    return f" The largest entries at its top: {listed}."


def agent_note(block: DiskBlock, largest: list[tuple[str, int]]) -> str:
    where = container_folder(block.scope)
    head = (
        f"Disk quota: {where} holds {_usage(block)}, over its quota of"
        f" {_quota(block.limit_bytes, block.limit_entries)}, so your container was stopped."
    )
    if block.state == BLOCK_CLEANUP:
        ceiling = cleanup_ceiling(block, Limit(block.limit_bytes, block.limit_entries))
        return (
            f"{head}{_largest(largest)} This run is only for cleaning up: delete files and"
            f" folders in {where} that are no longer needed (for example with `rm -r` or"
            " `du -sh` first to find them) until it is under the quota, and do not write new"
            f" ones; if it grows past {_quota(ceiling.bytes, ceiling.entries)} or this run"
            " ends still over the quota, the container is stopped until the owner frees"
            " space. Messages that arrive meanwhile wait; they are not lost. The owner has"
            " been told."
        )
    return (
        f"{head} It stays stopped ({block.reason}). Messages wait until the folder is under"
        " its quota again (the owner has been told); then you are woken as usual."
    )


def interrupted_note(block: DiskBlock) -> str:
    """To a session stopped because of a block it may not clean up itself."""
    if block.scope == Scope.FLOOR:
        return (
            "Your container was stopped: the host's disk is almost full"
            f" ({human_bytes(block.bytes)} free). Work in progress is retried when there is"
            " room again."
        )
    return (
        f"Your container was stopped: {container_folder(block.scope)} is over its disk quota"
        f" ({_usage(block)}). Work in progress is retried once it is under the quota again."
    )


def owner_notice(
    block: DiskBlock, group: AgentGroup | None, host_folder: Path | None, stopped: list[str]
) -> str:
    if block.scope == Scope.FLOOR:
        return (
            f"NanoClaw: the disk of the data folder has only {human_bytes(block.bytes)} free,"
            f" less than disk_min_free_mb ({human_bytes(block.limit_bytes)}). Every agent"
            " container was stopped and none is started until there is room again; messages"
            " wait, none are lost. Free space on that disk (`nanoclaw disk` shows what each"
            " group and session uses)."
        )
    name = f"{shown(group.name)} ({group.id})" if group else shown(block.agent_group_id)
    what = "its folder" if block.scope == Scope.GROUP else f"session {block.scope_id}'s agent/"
    quota_name = "group_disk_quota_mb" if block.scope == Scope.GROUP else "session_disk_quota_mb"
    stops = f" Stopped: {', '.join(stopped)}." if stopped else ""
    if block.state == BLOCK_CLEANUP:
        plan = (
            " The agent is woken once to delete files. If that does not bring it under the"
            " quota, new messages wait until you free space"
        )
    else:
        plan = (
            f" Its cleanup did not bring it under the quota ({block.reason}). New messages"
            " wait until you free space"
        )
    return (
        f"NanoClaw: agent group {name}: {what} ({host_folder}) holds {_usage(block)}, over its"
        f" disk quota of {_quota(block.limit_bytes, block.limit_entries)}.{stops}{plan}: delete"
        f" files there, raise the quota ({quota_name}, or the group's container config), or"
        " run `nanoclaw disk cleanup` to let the agent try again. It resumes by itself once"
        " under the quota; no message is lost."
    )


def write_note(
    inbound: InboundStore, note: str, block: DiskBlock, *, trigger: bool, now: int, suffix: str = ""
) -> bool:
    """Insert the note (once per id); True when it was new."""
    result = inbound.insert_message(
        NewInbound(
            id=note_id(block) + suffix,
            content=system_note(note),
            timestamp_ms=now,
            trigger=trigger,
        ),
        now=now,
    )
    return result.created
