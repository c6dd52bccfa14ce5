"""The one interface every channel adapter implements, and the registry that holds them.

An adapter has two halves in one class:
- the **inbound** half runs in the router: ``run_inbound(sink)`` receives platform events,
  normalizes them to ``InboundEvent`` / ``ActionEvent`` and awaits the sink. The sink returns
  only after the rows are committed, and the adapter acknowledges the platform (Telegram's
  update offset, Slack's envelope ack, an HTTP 200, the CLI reply) only **after** that. A
  crash in between makes the platform re-send; the idempotent insert ignores the duplicate.
- the **outbound** half runs in delivery: ``send_text``, ``edit_text``, ``add_reaction``,
  ``send_question``, ``send_card``, ``set_typing`` and ``open_dm``.

Outbound errors are classified by raising ``RetryLater`` (network trouble, 429, 5xx, a
disconnected client) or ``PermanentFailure`` (unknown chat, forbidden). Anything else is
treated as retryable by the caller. A send never "succeeds" without reaching the platform.

Platform base URLs come from settings, so tests point the real client libraries at local fakes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Final, Protocol

import msgspec

from nanoclaw_common.errors import ConfigError
from nanoclaw_common.messages import ActionEvent, AskQuestion, InboundEvent, SendCard

if TYPE_CHECKING:
    from nanoclaw_common.settings import Settings


#: ``InboundSink.on_invalid`` codes (the drop's reason): input we could not decode or that
#: failed its signature, and authentic input past a rate limit.
INVALID_INPUT: Final = "invalid_input"
RATE_LIMITED: Final = "rate_limited"


class InboundSink(Protocol):
    """What the router gives an adapter's inbound half."""

    async def on_event(self, event: InboundEvent) -> None:
        """Route and commit one message. Returns after the commit; raises if it could not be
        committed (the adapter must then *not* acknowledge the platform)."""

    async def on_action(self, action: ActionEvent) -> None:
        """Route a button click (a question answer or an approval decision)."""

    async def on_invalid(
        self, channel_type: str, platform_id: str, reason: str, *, code: str = INVALID_INPUT
    ) -> None:
        """Record an input that could not be decoded, or was refused (``code``): a recorded
        drop, never a crash. It may return before the drop is written when the same chat and
        code were recorded within the last second (a flood is counted, not written each
        time); it raises when the drop could not be recorded."""


class OutgoingFile(msgspec.Struct, frozen=True):
    """A file to send, already checked by delivery (a regular file inside the outbox)."""

    name: str
    path: Path


class ChannelAdapter(ABC):
    """Base class of every platform adapter."""

    channel_type: ClassVar[str]
    text_limit: ClassVar[int] = 4000  # characters per message; delivery splits longer text
    supports_threads: ClassVar[bool] = False  # threads are separate conversations
    supports_cards: ClassVar[bool] = False  # False: delivery sends the card's text fallback

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open clients/connections needed by either half."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what ``start`` opened."""

    def is_connected(self) -> bool:
        return True

    # -- inbound half (router) ------------------------------------------------------------

    @abstractmethod
    async def run_inbound(self, sink: InboundSink) -> None:
        """Receive events until cancelled."""

    # -- outbound half (delivery) ---------------------------------------------------------

    @abstractmethod
    async def send_text(
        self,
        platform_id: str,
        thread_id: str | None,
        text: str,
        files: list[OutgoingFile] | None = None,
    ) -> str | None:
        """Send one message (``text`` is within ``text_limit``); return the platform
        message id."""

    @abstractmethod
    async def edit_text(
        self, platform_id: str, thread_id: str | None, message_id: str, text: str
    ) -> None: ...

    @abstractmethod
    async def add_reaction(
        self, platform_id: str, thread_id: str | None, message_id: str, emoji: str
    ) -> None: ...

    @abstractmethod
    async def send_question(
        self, platform_id: str, thread_id: str | None, question: AskQuestion
    ) -> str | None:
        """Post a card with one button per option. Button data carries the question id and
        the option index; a click comes back through the inbound half as an ``ActionEvent``."""

    async def send_card(
        self, platform_id: str, thread_id: str | None, card: SendCard
    ) -> str | None:
        """Display card. Default: its text fallback (for platforms without cards)."""
        return await self.send_text(platform_id, thread_id, card_fallback_text(card))

    async def set_typing(self, platform_id: str, thread_id: str | None) -> None:  # noqa: B027
        """Show a typing indicator (best effort; errors are swallowed by the caller)."""

    async def open_dm(self, user_handle: str) -> str:
        """The platform id of a direct chat with this user. Default: the handle itself
        (platforms where a user id is also a DM chat id, like Telegram)."""
        return user_handle


def command_after_self_mention(text: str, mention: str) -> str:
    """``@bot /clear`` is the command ``/clear``.

    In a group people address the bot before the command. The router's command gate and the
    runner look at the first word, so the leading mention of *this* bot is dropped when a
    command follows it. Anything else keeps its text; a mention of someone else is not ours
    to remove."""
    stripped = text.lstrip()
    if not mention or stripped[: len(mention)].lower() != mention.lower():
        return text
    rest = stripped[len(mention) :]
    command = rest.lstrip()
    return command if rest[:1].isspace() and command.startswith("/") else text


def card_fallback_text(card: SendCard) -> str:
    if card.fallback_text:
        return card.fallback_text
    parts = [card.card.title, card.card.description, *card.card.children]
    parts += [f"{a.label}: {a.url}" for a in card.card.actions]
    return "\n\n".join(p for p in parts if p)


AdapterFactory = Callable[["Settings"], ChannelAdapter | None]
_FACTORIES: dict[str, AdapterFactory] = {}


def register_adapter(channel_type: str, factory: AdapterFactory) -> None:
    """Register a factory; it returns None when the channel is not configured (no token)."""
    if channel_type in _FACTORIES:
        raise ConfigError(f"channel {channel_type!r} registered twice")
    _FACTORIES[channel_type] = factory


def registered_channels() -> list[str]:
    return sorted(_FACTORIES)


def build_adapters(settings: Settings) -> dict[str, ChannelAdapter]:
    """Every configured adapter, keyed by channel type."""
    built: dict[str, ChannelAdapter] = {}
    for channel_type, factory in sorted(_FACTORIES.items()):
        adapter = factory(settings)
        if adapter is not None:
            built[channel_type] = adapter
    return built
