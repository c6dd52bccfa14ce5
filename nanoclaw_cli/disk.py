"""``nanoclaw disk``: disk quotas (nanoclaw_common/disk/, docs/internals.md "Disk quotas").

- ``disk status``: which mechanism applies (kernel project quotas or the sweeper's walk) and
  why, free space against the floor, the blocks, and the last measurement of each folder;
- ``disk quota GROUP [--group-mb N] [--session-mb N]``: a group's own quotas (``default``
  goes back to the setting, 0 is no limit);
- ``disk cleanup REF [--session S]``: let the agent run once more to delete files in a
  blocked folder (REF: a group id or folder, or a session id). The sweeper writes the note that
  wakes it, and lifts the block once the folder is under its quota.
"""

from __future__ import annotations

import click
import msgspec

from nanoclaw_cli import refs
from nanoclaw_cli.context import CliContext, json_option, pass_context
from nanoclaw_cli.output import console, print_json, print_mapping, print_table
from nanoclaw_common.clock import now_ms
from nanoclaw_common.disk.limits import Scope, group_limit, human_bytes, session_limit
from nanoclaw_common.disk.quotas import DiskQuotas
from nanoclaw_common.settings import Settings
from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.disk import DiskBlock, DiskLedger


class MechanismReport(msgspec.Struct, frozen=True):
    scope: str
    mechanism: str
    reason: str


class FolderUsage(msgspec.Struct, frozen=True):
    scope: str
    id: str
    bytes: int
    entries: int
    complete: bool  # False: the walk stopped at the entry quota (or too deep)
    quota_bytes: int  # 0: none
    quota_entries: int
    method: str
    measured_at_ms: int


class DiskReport(msgspec.Struct, frozen=True):
    mechanisms: list[MechanismReport]
    free_bytes: int | None
    floor_bytes: int
    blocks: list[DiskBlock]
    usage: list[FolderUsage]


def mechanisms(settings: Settings, quotas: DiskQuotas) -> list[MechanismReport]:
    """What applies to group folders and to session folders, and why (also for ``doctor``
    and ``status``)."""
    found = []
    for scope in (Scope.GROUP, Scope.SESSION):
        choice = quotas.choice(scope)
        found.append(MechanismReport(scope.value, choice.mechanism.value, choice.reason))
    return found


def disk_report(ctx: CliContext) -> DiskReport:
    store = ctx.store()
    quotas = DiskQuotas(ctx.settings, ctx.layout)
    ledger = DiskLedger(store)
    usage = []
    for row in ledger.list_usage():
        limit_bytes, limit_entries = _limit_of(ctx.settings, store, row.scope, row.scope_id)
        usage.append(
            FolderUsage(
                scope=row.scope,
                id=row.scope_id,
                bytes=row.bytes,
                entries=row.entries,
                complete=bool(row.complete),
                quota_bytes=limit_bytes,
                quota_entries=limit_entries,
                method=row.method,
                measured_at_ms=row.measured_at_ms,
            )
        )
    usage.sort(key=lambda folder: -folder.bytes)
    return DiskReport(
        mechanisms=mechanisms(ctx.settings, quotas),
        free_bytes=quotas.free(),
        floor_bytes=quotas.floor_bytes,
        blocks=ledger.list_blocks(),
        usage=usage,
    )


def _limit_of(
    settings: Settings, store: CentralStore, scope: str, scope_id: str
) -> tuple[int, int]:
    if scope == Scope.GROUP:
        limit = group_limit(settings, store.get_container_config(scope_id))
    else:
        session = store.get_session(scope_id)
        config = store.get_container_config(session.agent_group_id) if session else None
        limit = session_limit(settings, config)
    return limit.bytes, limit.entries


@click.group(invoke_without_command=True)
@click.pass_context
def disk(click_ctx: click.Context) -> None:
    """Disk quotas: status (the default), a group's quotas, a cleanup run."""
    if click_ctx.invoked_subcommand is None:
        click_ctx.invoke(disk_status)


@disk.command("status")
@json_option
@pass_context
def disk_status(ctx: CliContext) -> None:
    """Mechanism, free space, blocks and what each folder uses."""
    report = disk_report(ctx)
    if ctx.as_json:
        print_json(report)
        return
    print_table(report.mechanisms, ["scope", "mechanism", "reason"], title="Disk quotas")
    free = "unknown" if report.free_bytes is None else human_bytes(report.free_bytes)
    console.print(
        f"free on the data folder's disk: {free} (floor {human_bytes(report.floor_bytes)})",
        markup=False,
        highlight=False,
    )
    print_table(
        [
            {
                "folder": f"{b.scope}:{b.scope_id}",
                "state": b.state,
                "since_ms": b.blocked_at_ms,
                "cleanup session": b.cleanup_session_id,
                "refused wakes": b.refused_wakes,
                "reason": b.reason,
            }
            for b in report.blocks
        ],
        title="Blocked",
    )
    print_table(
        [
            {
                "folder": f"{u.scope}:{u.id}",
                "used": human_bytes(u.bytes),
                "quota": _describe(u.quota_bytes),
                "entries": u.entries if u.complete else f"more than {u.entries - 1}",
                "entry quota": u.quota_entries or "none",
                "method": u.method,
            }
            for u in report.usage
        ],
        title="Measured",
    )


def _quota_mb(value: str, name: str) -> int | None:
    """``default``: back to the setting (NULL); else MB (0: no limit)."""
    if value == "default":
        return None
    try:
        megabytes = int(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: a number of MB, 0, or 'default'", param_hint=name
        ) from None
    if megabytes < 0:
        raise click.BadParameter("must not be negative", param_hint=name)
    return megabytes


@disk.command("quota")
@click.argument("ref")
@click.option("--group-mb", help="The group folder's quota in MB (0: none; 'default').")
@click.option("--session-mb", help="Each session's agent/ quota in MB (0: none; 'default').")
@json_option
@pass_context
def disk_quota(ctx: CliContext, ref: str, group_mb: str | None, session_mb: str | None) -> None:
    """Show or set a group's own disk quotas (over the settings)."""
    store = ctx.store()
    group = refs.agent_group(store, ref)
    changes: dict[str, int | None] = {}
    if group_mb is not None:
        changes["group_disk_quota_mb"] = _quota_mb(group_mb, "--group-mb")
    if session_mb is not None:
        changes["session_disk_quota_mb"] = _quota_mb(session_mb, "--session-mb")
    config = store.update_container_config(group.id, **changes) if changes else None
    config = config or store.get_container_config(group.id)
    shown = {
        "group": group.id,
        "group folder quota": _describe(group_limit(ctx.settings, config).bytes),
        "session folder quota": _describe(session_limit(ctx.settings, config).bytes),
    }
    if ctx.as_json:
        print_json(shown)
    else:
        print_mapping(shown, title=f"Disk quotas of {group.name}")


def _describe(limit_bytes: int) -> str:
    return human_bytes(limit_bytes) if limit_bytes else "none"


@disk.command("cleanup")
@click.argument("ref")
@click.option("--session", "session_ref", help="The session to wake (default: the newest).")
@pass_context
def disk_cleanup(ctx: CliContext, ref: str, session_ref: str | None) -> None:
    """Let the agent run once more to delete files in a blocked folder."""
    store = ctx.store()
    ledger = DiskLedger(store)
    session = store.get_session(ref)
    if session is not None:
        scope, scope_id, group_id = Scope.SESSION, session.id, session.agent_group_id
    else:
        group = refs.agent_group(store, ref)
        scope, scope_id, group_id = Scope.GROUP, group.id, group.id
    block = next(
        (b for b in ledger.list_blocks() if (b.scope, b.scope_id) == (scope, scope_id)), None
    )
    if block is None:
        raise click.ClickException(f"{scope} {scope_id} is not blocked")
    target = store.get_session(session_ref) if session_ref else session
    if target is None:
        target = store.newest_active_session(group_id)
    if target is None or target.agent_group_id != group_id:
        raise click.ClickException(f"no session of {group_id} to wake (give --session)")
    ledger.grant_cleanup(scope, scope_id, target.id, target.run_id, now=now_ms())
    console.print(
        f"{scope} {scope_id}: {target.id} may run once to delete files; the sweeper wakes it"
        " and lifts the block once the folder is under its quota",
        markup=False,
        highlight=False,
    )
