"""``nanoclaw dropped``: the audit of messages the router did not deliver to any agent.

One line per (chat, reason) with a counter: ``no_agent_wired`` (a mention in an unwired chat),
``registration_rate_limited`` (the same, but the owner got too many registration cards
lately), ``no_agent_engaged``, ``unknown_sender_strict`` / ``unknown_sender_request_approval``,
``sender_not_known``, ``command_filtered`` / ``command_denied``, ``invalid_pattern``,
``invalid_input`` (undecodable platform input, or a webhook / Slack Events API request with a
bad signature) and ``missing_agent_group``.

- ``dropped list [--limit N]`` (newest first), ``dropped remove CHAT [--reason R]``,
  ``dropped clear``. ``add`` has no meaning here: only the router records drops.
"""

from __future__ import annotations

import click

from nanoclaw_cli.context import CliContext, json_option, pass_context
from nanoclaw_cli.output import console, emit, print_json, to_builtins
from nanoclaw_common.clock import ms_to_iso


@click.group()
def dropped() -> None:
    """Dropped messages: list, remove, clear."""


@dropped.command("list")
@click.option("--limit", type=int, default=50, show_default=True)
@json_option
@pass_context
def list_dropped(ctx: CliContext, limit: int) -> None:
    """List drops, newest first."""
    rows = []
    for drop in ctx.store().list_drops(limit):
        record = to_builtins(drop)
        record["chat"] = f"{drop.channel_type}/{drop.platform_id}"
        record["first_seen"] = ms_to_iso(drop.first_seen_ms)
        record["last_seen"] = ms_to_iso(drop.last_seen_ms)
        rows.append(record)
    if ctx.as_json:
        print_json(rows)
        return
    table = [
        {
            "chat": r["chat"],
            "reason": r["reason"],
            "count": r["message_count"],
            "sender": r["sender_name"] or r["user_id"],
            "detail": r["detail"],
            "last seen": r["last_seen"][:19].replace("T", " "),
        }
        for r in rows
    ]
    emit(table, False, title="Dropped messages")


@dropped.command("remove")
@click.argument("chat", metavar="CHANNEL/PLATFORM_ID")
@click.option("--reason", help="Only this reason.")
@json_option
@pass_context
def remove_dropped(ctx: CliContext, chat: str, reason: str | None) -> None:
    """Forget the drop records of one chat."""
    if "/" not in chat:
        raise click.ClickException("give the chat as <channel>/<platform id>")
    channel_type, platform_id = chat.split("/", 1)
    removed = ctx.store().clear_drops(channel_type, platform_id, reason=reason)
    if ctx.as_json:
        print_json({"removed": removed})
    else:
        console.print(f"removed {removed} record(s)")


@dropped.command("clear")
@json_option
@pass_context
def clear_dropped(ctx: CliContext) -> None:
    """Forget every drop record."""
    removed = ctx.store().clear_drops()
    if ctx.as_json:
        print_json({"removed": removed})
    else:
        console.print(f"removed {removed} record(s)")
