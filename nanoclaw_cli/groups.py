"""``nanoclaw groups``: agent groups (an agent's workspace, memory and container config).

- ``groups list``
- ``groups add NAME [--folder F]``: the folder under ``groups/`` defaults to the normalized
  name, made unique.
- ``groups remove ID_OR_FOLDER``: deletes the group with its wirings, sessions and
  destinations, and moves its folder out of ``groups/`` to
  ``archive/groups/<folder>-<UTC time>/`` (printed), so no later group ever gets it, or
  what its agent left in it.
- ``groups config ID_OR_FOLDER [...]``: its token budget and what the proxy lets its agents
  do (``group_config``).
"""

from __future__ import annotations

import click

from nanoclaw_cli import refs
from nanoclaw_cli.context import CliContext, json_option, pass_context
from nanoclaw_cli.group_config import config
from nanoclaw_cli.output import console, emit, print_json, to_builtins
from nanoclaw_common import group_folders
from nanoclaw_common.errors import NanoclawError
from nanoclaw_common.store.central import normalize_name


@click.group()
def groups() -> None:
    """Agent groups: list, add, remove, config."""


groups.add_command(config)


@groups.command("list")
@json_option
@pass_context
def list_groups(ctx: CliContext) -> None:
    """List agent groups."""
    store = ctx.store()
    rows = []
    for group in store.list_agent_groups():
        record = to_builtins(group)
        record["wirings"] = sum(1 for w in store.list_wirings() if w.agent_group_id == group.id)
        record["sessions"] = len(store.list_sessions(agent_group_id=group.id, status="active"))
        rows.append(record)
    emit(rows, ctx.as_json, ["id", "name", "folder", "wirings", "sessions"], title="Agent groups")


@groups.command("add")
@click.argument("name")
@click.option("--folder", help="Folder under groups/ (default: from the name).")
@json_option
@pass_context
def add_group(ctx: CliContext, name: str, folder: str | None) -> None:
    """Create an agent group."""
    store = ctx.store()
    if folder is not None and folder != normalize_name(folder):
        raise click.ClickException(
            f"folder {folder!r} is not a plain name; try {normalize_name(folder)!r}"
        )
    try:
        # The folder is created now, and must not exist on disk: never an old group's.
        if folder is None:
            folder = group_folders.claim_new_folder(ctx.layout, store, name)
        else:
            if store.find_agent_group(folder) is not None:
                raise click.ClickException(f"folder {folder!r} is in use by another group")
            group_folders.claim_exact_folder(ctx.layout, folder)
        group = store.create_agent_group(name, folder)
    except NanoclawError as exc:
        raise click.ClickException(str(exc)) from None
    if ctx.as_json:
        print_json(group)
    else:
        console.print(f"created agent group {group.id} (folder {group.folder})")


@groups.command("remove")
@click.argument("ref")
@json_option
@pass_context
def remove_group(ctx: CliContext, ref: str) -> None:
    """Delete an agent group (its wirings, sessions and destinations go with it)."""
    store = ctx.store()
    group = refs.agent_group(store, ref)
    store.delete_agent_group(group.id)
    archived = group_folders.archive(ctx.layout, group.folder)
    if ctx.as_json:
        print_json({"removed": group.id, "archived": str(archived) if archived else None})
    elif archived is not None:
        console.print(
            f"removed agent group {group.id}; its folder groups/{group.folder} was moved to"
            f" {archived}"
        )
    else:
        console.print(f"removed agent group {group.id} (it had no folder on disk)")
