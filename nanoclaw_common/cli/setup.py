"""``nanoclaw init``: create the data folder, the central DB, the owner and the default
agent group ``main`` wired to the local CLI chat. Safe to run again."""

from __future__ import annotations

import getpass

import click
from rich.text import Text

from nanoclaw_common.cli.context import CliContext, json_option, pass_context
from nanoclaw_common.cli.output import console, print_json, styled
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
    if store.get_user(CLI_OWNER) is None:
        created.append(f"user {CLI_OWNER}")
    store.upsert_user(CLI_OWNER, "cli", getpass.getuser())
    if store.grant_role(CLI_OWNER, Role.OWNER):
        created.append(f"owner role for {CLI_OWNER}")

    group = store.find_agent_group(DEFAULT_GROUP_FOLDER)
    if group is None:
        group = store.create_agent_group("Main", DEFAULT_GROUP_FOLDER)
        created.append(f"agent group {group.id} ({DEFAULT_GROUP_FOLDER})")
    group_dir = ctx.layout.group_dir(group.folder)
    group_dir.mkdir(parents=True, exist_ok=True)
    memory = group_dir / "AGENT.md"
    if not memory.exists():
        memory.write_text(AGENT_MD)

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
