"""``nanoclaw chats``: messaging groups (one chat on one platform).

- ``chats list``
- ``chats add CHANNEL/PLATFORM_ID [--name N] [--group|--dm] [--policy P]``: the platform id
  is the chat as the channel names it (Telegram: the chat id, e.g. ``telegram/-1001234``;
  Slack: the channel id, ``slack/C0123``; the terminal: ``cli/local``). One argument, so a
  negative Telegram id is not mistaken for an option. ``--policy`` is the unknown-sender policy:
  ``strict`` (default), ``request_approval`` or ``public``.
- ``chats update CHAT [--name N] [--policy P]``, ``chats remove CHAT``.

CHAT is a chat id or ``<channel>/<platform id>``.
"""

from __future__ import annotations

import click

from nanoclaw_cli import refs
from nanoclaw_cli.context import CliContext, json_option, pass_context
from nanoclaw_cli.output import console, emit, print_json, to_builtins
from nanoclaw_common.clock import ms_to_iso
from nanoclaw_common.states import UnknownSenderPolicy

POLICIES = [p.value for p in UnknownSenderPolicy]


@click.group()
def chats() -> None:
    """Chats (messaging groups): list, add, update, remove."""


@chats.command("list")
@json_option
@pass_context
def list_chats(ctx: CliContext) -> None:
    """List chats."""
    store = ctx.store()
    rows = []
    for chat in store.list_messaging_groups():
        record = to_builtins(chat)
        record["address"] = f"{chat.channel_type}/{chat.platform_id}"
        record["kind"] = "group" if chat.is_group else "dm"
        record["wirings"] = len(store.list_wirings(chat.id))
        record["denied"] = ms_to_iso(chat.denied_at_ms) if chat.denied_at_ms else ""
        rows.append(record)
    emit(
        rows,
        ctx.as_json,
        ["id", "address", "name", "kind", "unknown_sender_policy", "wirings", "denied"],
        title="Chats",
    )


@chats.command("add")
@click.argument("address", metavar="CHANNEL/PLATFORM_ID")
@click.option("--name", help="A readable name (also the default destination name).")
@click.option("--group/--dm", "is_group", default=True, show_default=True)
@click.option(
    "--policy",
    type=click.Choice(POLICIES),
    default="strict",
    show_default=True,
    help="What happens to messages from senders who are not members.",
)
@json_option
@pass_context
def add_chat(
    ctx: CliContext,
    *,
    address: str,
    name: str | None,
    is_group: bool,
    policy: str,
) -> None:
    """Register a chat (returns the existing one if it is known)."""
    channel_type, sep, platform_id = address.partition("/")
    if not sep or not channel_type or not platform_id:
        raise click.ClickException("give the chat as <channel>/<platform id>, e.g. telegram/-1001")
    store = ctx.store()
    chat = store.create_messaging_group(
        channel_type, platform_id, name=name, is_group=is_group, unknown_sender_policy=policy
    )
    if ctx.as_json:
        print_json(chat)
    else:
        console.print(f"chat {chat.id} is {channel_type}/{platform_id}")


@chats.command("update")
@click.argument("ref")
@click.option("--name")
@click.option("--policy", type=click.Choice(POLICIES))
@click.option("--allow", is_flag=True, help="Clear a rejected registration.")
@json_option
@pass_context
def update_chat(
    ctx: CliContext, ref: str, name: str | None, policy: str | None, allow: bool
) -> None:
    """Rename a chat, change its unknown-sender policy, or undo a rejection."""
    store = ctx.store()
    chat = refs.chat(store, ref)
    if name is not None or policy is not None:
        chat = store.update_messaging_group(chat.id, name=name, unknown_sender_policy=policy)
    if allow:
        store.set_messaging_group_denied(chat.id, None)
        found = store.get_messaging_group(chat.id)
        assert found is not None
        chat = found
    if ctx.as_json:
        print_json(chat)
    else:
        console.print(f"updated chat {chat.id}")


@chats.command("remove")
@click.argument("ref")
@json_option
@pass_context
def remove_chat(ctx: CliContext, ref: str) -> None:
    """Forget a chat, with its wirings."""
    store = ctx.store()
    chat = refs.chat(store, ref)
    store.delete_messaging_group(chat.id)
    if ctx.as_json:
        print_json({"removed": chat.id})
    else:
        console.print(f"removed chat {chat.id} ({chat.channel_type}/{chat.platform_id})")
