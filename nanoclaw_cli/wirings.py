"""``nanoclaw wirings``: which agent groups a chat reaches, and when.

- ``wirings list [--chat CHAT]``
- ``wirings add CHAT GROUP [--engage mention|mention-sticky|pattern] [--pattern RE]
  [--senders all|known] [--ignored drop|accumulate] [--sessions shared|per-thread|agent-shared]
  [--priority N]``
- ``wirings update WIRING [same options]``, ``wirings remove WIRING``

``--engage pattern`` needs ``--pattern`` (``.`` answers everything). A pattern that is not
a valid regular expression is refused here; the router would never engage on it.
Adding a wiring also lets the group send to the chat (an ``agent_destinations`` row).
"""

from __future__ import annotations

import re
from typing import Any

import click

from nanoclaw_cli import refs
from nanoclaw_cli.context import CliContext, json_option, pass_context
from nanoclaw_cli.output import console, emit, print_json, to_builtins
from nanoclaw_common.errors import NanoclawError
from nanoclaw_common.states import EngageMode, IgnoredMessagePolicy, SenderScope, SessionMode

ENGAGE = [m.value for m in EngageMode]
SCOPES = [s.value for s in SenderScope]
IGNORED = [p.value for p in IgnoredMessagePolicy]
SESSIONS = [m.value for m in SessionMode]


def check_pattern(engage: str | None, pattern: str | None) -> None:
    if engage == EngageMode.PATTERN and not pattern:
        raise click.ClickException("--engage pattern needs --pattern (use '.' for everything)")
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise click.ClickException(
                f"--pattern is not a valid regular expression: {exc}"
            ) from None


@click.group()
def wirings() -> None:
    """Wirings (chat → agent group): list, add, update, remove."""


@wirings.command("list")
@click.option("--chat", "chat_ref", help="Only this chat.")
@json_option
@pass_context
def list_wirings(ctx: CliContext, chat_ref: str | None) -> None:
    """List wirings in fan-out order."""
    store = ctx.store()
    chat_id = refs.chat(store, chat_ref).id if chat_ref else None
    rows = []
    for wiring in store.list_wirings(chat_id):
        record = to_builtins(wiring)
        chat = store.get_messaging_group(wiring.messaging_group_id)
        group = store.get_agent_group(wiring.agent_group_id)
        record["chat"] = f"{chat.channel_type}/{chat.platform_id}" if chat else "?"
        record["group"] = group.folder if group else "?"
        rows.append(record)
    emit(
        rows,
        ctx.as_json,
        [
            "id",
            "chat",
            "group",
            "engage_mode",
            "engage_pattern",
            "sender_scope",
            "ignored_message_policy",
            "session_mode",
            "priority",
        ],
        title="Wirings",
    )


def _options(func: Any) -> Any:
    for option in reversed(
        [
            click.option("--engage", type=click.Choice(ENGAGE), help="When the agent answers."),
            click.option("--pattern", help="Regex for --engage pattern ('.' = everything)."),
            click.option(
                "--senders",
                type=click.Choice(SCOPES),
                help="known: only members/admins engage, even in public chats.",
            ),
            click.option(
                "--ignored",
                type=click.Choice(IGNORED),
                help="accumulate: keep other messages as context (no wake).",
            ),
            click.option("--sessions", type=click.Choice(SESSIONS), help="Session mode."),
            click.option("--priority", type=int, help="Fan-out order, highest first."),
        ]
    ):
        func = option(func)
    return func


@wirings.command("add")
@click.argument("chat_ref", metavar="CHAT")
@click.argument("group_ref", metavar="GROUP")
@_options
@json_option
@pass_context
def add_wiring(
    ctx: CliContext,
    *,
    chat_ref: str,
    group_ref: str,
    engage: str | None,
    pattern: str | None,
    senders: str | None,
    ignored: str | None,
    sessions: str | None,
    priority: int | None,
) -> None:
    """Wire a chat to an agent group."""
    store = ctx.store()
    chat = refs.chat(store, chat_ref)
    group = refs.agent_group(store, group_ref)
    engage = engage or (EngageMode.PATTERN if pattern else EngageMode.MENTION)
    check_pattern(engage, pattern)
    try:
        wiring = store.create_wiring(
            chat.id,
            group.id,
            engage_mode=engage,
            engage_pattern=pattern,
            sender_scope=senders or SenderScope.ALL,
            ignored_message_policy=ignored or IgnoredMessagePolicy.DROP,
            session_mode=sessions or SessionMode.SHARED,
            priority=priority or 0,
        )
    except NanoclawError as exc:  # AlreadyExists: the chat is wired to the group already
        raise click.ClickException(str(exc)) from None
    if ctx.as_json:
        print_json(wiring)
    else:
        console.print(
            f"wired {chat.channel_type}/{chat.platform_id} → {group.folder} ({wiring.id})"
        )


@wirings.command("update")
@click.argument("wiring_id")
@_options
@json_option
@pass_context
def update_wiring(
    ctx: CliContext,
    *,
    wiring_id: str,
    engage: str | None,
    pattern: str | None,
    senders: str | None,
    ignored: str | None,
    sessions: str | None,
    priority: int | None,
) -> None:
    """Change a wiring's options."""
    store = ctx.store()
    current = store.get_wiring(wiring_id)
    if current is None:
        raise click.ClickException(f"no wiring {wiring_id!r}")
    changes = {
        key: value
        for key, value in {
            "engage_mode": engage,
            "engage_pattern": pattern,
            "sender_scope": senders,
            "ignored_message_policy": ignored,
            "session_mode": sessions,
            "priority": priority,
        }.items()
        if value is not None
    }
    if not changes:
        raise click.ClickException("nothing to change: give at least one option")
    check_pattern(engage or current.engage_mode, pattern or current.engage_pattern)
    wiring = store.update_wiring(wiring_id, **changes)
    if ctx.as_json:
        print_json(wiring)
    else:
        console.print(f"updated wiring {wiring.id}")


@wirings.command("remove")
@click.argument("wiring_id")
@json_option
@pass_context
def remove_wiring(ctx: CliContext, wiring_id: str) -> None:
    """Delete a wiring (the group keeps its destination to the chat)."""
    store = ctx.store()
    try:
        store.delete_wiring(wiring_id)
    except NanoclawError as exc:
        raise click.ClickException(str(exc)) from None
    if ctx.as_json:
        print_json({"removed": wiring_id})
    else:
        console.print(f"removed wiring {wiring_id}")
