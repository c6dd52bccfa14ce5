"""Agent groups, chats and wirings with test defaults, for every harness that sets them up."""

from __future__ import annotations

from typing import Any

from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.rows import AgentGroup, MessagingGroup, Wiring


def new_group(central: CentralStore, name: str = "Main") -> AgentGroup:
    return central.create_agent_group(name, central.unique_folder(name))


def wire(central: CentralStore, chat: MessagingGroup, group: AgentGroup, **options: Any) -> Wiring:
    """A wiring that engages on everything unless ``options`` say otherwise."""
    options.setdefault("engage_mode", "pattern")
    if options["engage_mode"] == "pattern":
        options.setdefault("engage_pattern", ".")
    return central.create_wiring(chat.id, group.id, **options)


def wire_platform_chat(
    central: CentralStore, channel: str, platform_id: str, group: AgentGroup, **options: Any
) -> MessagingGroup:
    """Register ``channel/platform_id`` (a public group chat unless ``is_group``/``policy``
    say otherwise) and wire it to ``group``."""
    chat = central.create_messaging_group(
        channel,
        platform_id,
        is_group=options.pop("is_group", True),
        unknown_sender_policy=options.pop("policy", "public"),
    )
    wire(central, chat, group, **options)
    return chat
