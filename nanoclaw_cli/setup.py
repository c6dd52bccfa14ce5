"""``nanoclaw init``: create the data folder, the central DB, the owner and the default
agent group ``main`` wired to the local CLI chat. Safe to run again."""

from __future__ import annotations

import getpass

import click
from rich.text import Text

from nanoclaw_cli.context import CliContext, json_option, pass_context
from nanoclaw_cli.output import console, print_json, styled
from nanoclaw_common import group_folders
from nanoclaw_common.group_folders import Memory
from nanoclaw_common.states import EngageMode, Role, SessionMode, UnknownSenderPolicy
from nanoclaw_common.store import CentralStore

CLI_OWNER = "cli:local"
DEFAULT_GROUP_FOLDER = "main"
AGENT_MD = """# Agent memory

This file is yours: keep notes here that should survive across conversations.
"""


def initialise(store: CentralStore, ctx: CliContext) -> dict[str, object]:
    """Create what is missing; report what exists. Idempotent."""
    created: list[str] = []
    warnings: list[str] = []
    if store.get_user(CLI_OWNER) is None:
        created.append(f"user {CLI_OWNER}")
    store.upsert_user(CLI_OWNER, "cli", getpass.getuser())
    if store.grant_role(CLI_OWNER, Role.OWNER):
        created.append(f"owner role for {CLI_OWNER}")

    group = store.find_agent_group(DEFAULT_GROUP_FOLDER)
    if group is None:
        # A new group never reuses a folder on disk: an old one named "main" (an older
        # version's, kept when its group was removed) is archived first, and said so.
        archived = group_folders.archive(ctx.layout, DEFAULT_GROUP_FOLDER)
        if archived is not None:
            warnings.append(f"an old groups/{DEFAULT_GROUP_FOLDER} was moved to {archived}")
        group_folders.claim_exact_folder(ctx.layout, DEFAULT_GROUP_FOLDER)
        group = store.create_agent_group("Main", DEFAULT_GROUP_FOLDER)
        created.append(f"agent group {group.id} ({DEFAULT_GROUP_FOLDER})")
    # Created only when the name is free (O_EXCL), so a re-run never writes through a link.
    if group_folders.write_first_memory(ctx.layout, group.folder, AGENT_MD) is Memory.REFUSED:
        # The agent may have planted a link there (to /etc/cron.d/...): never written
        # through, never removed (the operator may want to look at it).
        warnings.append(
            f"groups/{group.folder}/{group_folders.MEMORY_FILE} is not a regular file (a"
            " symlink?); left as it is, not written"
        )

    chat = store.find_messaging_group("cli", "local")
    if chat is None:
        chat = store.create_messaging_group(
            "cli", "local", name="terminal", unknown_sender_policy=UnknownSenderPolicy.PUBLIC
        )
        created.append(f"chat {chat.id} (cli/local)")
    if not any(w.agent_group_id == group.id for w in store.list_wirings(chat.id)):
        wiring = store.create_wiring(
            chat.id,
            group.id,
            engage_mode=EngageMode.PATTERN,
            engage_pattern=".",
            session_mode=SessionMode.SHARED,
        )
        created.append(f"wiring {wiring.id} (terminal -> {group.folder})")
    return {
        "home": str(ctx.layout.home),
        "database": str(ctx.layout.central_db),
        "schema_version": store.schema_version(),
        "owner": CLI_OWNER,
        "agent_group": group.id,
        "created": created,
        "warnings": warnings,
    }


@click.command()
@json_option
@pass_context
def init(ctx: CliContext) -> None:
    """Create the data folder and database, the owner and the default agent group."""
    ctx.layout.ensure()
    report = initialise(
        ctx.store() if ctx.layout.central_db.exists() else CentralStore.open(ctx.layout.central_db),
        ctx,
    )
    if ctx.as_json:
        print_json(report)
        return
    console.print(Text("NanoClaw data folder: ").append(styled(str(report["home"]), "bold")))
    created = report["created"]
    assert isinstance(created, list)
    for line in created or ["nothing to do: already initialised"]:
        console.print(f"  - {line}")
    warnings = report["warnings"]
    assert isinstance(warnings, list)
    for line in warnings:
        console.print(styled(f"  ! {line}", "yellow"))
