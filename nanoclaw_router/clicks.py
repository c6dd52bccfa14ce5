"""Which clicks count for a host card: an install approval (sent by delivery), a chat
registration or an unknown-sender approval (sent by the router).

A card's question id alone does not prove the click was made on that card: an agent can post
a card of its own (delivery keys those ``aq-…``, but defence in depth does not rely on one
layer) and a forwarded or look-alike message can carry any button data. So a click counts
for a host card only when it arrives **on that card**: from the chat the card was posted in
and, where the platform names the clicked message (Telegram, Slack), on the message the card
was posted as, as recorded when it was sent (``pending_approvals.platform_message_id``, or
``router_outbox`` for the router's own cards). A card whose message id was never recorded
(its send's answer was lost in a crash) cannot be clicked; a newer copy of it can.

The terminal chat's click frames name the question but no message (the chat client shows
each card once and answers with its question id): there the chat must match. Nothing else
can post into the terminal with a host card's id, because agent questions are re-keyed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from nanoclaw_common.messages import ActionEvent
from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.rows import (
    PendingApproval,
    PendingChannelApproval,
    PendingSenderApproval,
)

# Channels whose clicks never name the clicked message (see the module docstring).
NO_MESSAGE_IN_CLICKS: Final = frozenset({"cli"})

CardMessage = tuple[str | None, str | None, str | None]  # channel, chat, platform message
HostCard = PendingApproval | PendingChannelApproval | PendingSenderApproval


def clicked_on(action: ActionEvent, cards: Iterable[CardMessage]) -> bool:
    """True when ``action`` was made on one of ``cards``."""
    for channel_type, platform_id, platform_message_id in cards:
        if (channel_type, platform_id) != (action.channel_type, action.platform_id):
            continue
        if action.platform_message_id is None:
            if action.channel_type in NO_MESSAGE_IN_CLICKS:
                return True
            continue
        if platform_message_id is not None and platform_message_id == action.platform_message_id:
            return True
    return False


def card_messages(central: CentralStore, card: HostCard, card_id: str) -> list[CardMessage]:
    """Where the card (``card_id``: the question id its buttons carry) was posted."""
    if isinstance(card, PendingApproval):
        return [(card.channel_type, card.platform_id, card.platform_message_id)]
    return list(central.router_card_messages(card_id))
