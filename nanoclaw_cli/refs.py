"""Resolving what an operator types into rows: an agent group by id or folder, a chat by id
or ``<channel>/<platform id>``. Shared by the admin command modules."""

from __future__ import annotations

import click

from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.rows import AgentGroup, MessagingGroup


def agent_group(store: CentralStore, ref: str) -> AgentGroup:
    group = store.find_agent_group(ref)
    if group is None:
        raise click.ClickException(f"no agent group {ref!r} (give its id or folder)")
    return group


def chat(store: CentralStore, ref: str) -> MessagingGroup:
    """``mg-…`` or ``telegram/-1001234`` (the first ``/`` separates the channel)."""
    found = store.get_messaging_group(ref)
    if found is None and "/" in ref:
        channel_type, platform_id = ref.split("/", 1)
        found = store.find_messaging_group(channel_type, platform_id)
    if found is None:
        raise click.ClickException(f"no chat {ref!r} (give its id or <channel>/<platform id>)")
    return found
