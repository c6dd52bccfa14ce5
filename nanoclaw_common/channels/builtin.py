"""The built-in adapters and their registration.

Each factory imports its platform module only when the channel is configured: an unused
channel costs no import time and no memory (python-telegram-bot and slack-sdk are ~20 MB).
Router and delivery both do::

    adapters = build_builtin_adapters(settings)   # {channel_type: adapter}, configured only
    for adapter in adapters.values():
        await adapter.start()
"""

from __future__ import annotations

# Lazy imports are the point of this module.
# ruff: noqa: PLC0415
from nanoclaw_common.channels.base import (
    ChannelAdapter,
    build_adapters,
    register_adapter,
    registered_channels,
)
from nanoclaw_common.paths import Layout
from nanoclaw_common.settings import Settings


def _cli(settings: Settings) -> ChannelAdapter:
    from nanoclaw_common.channels.cli import CliAdapter

    return CliAdapter(Layout(settings.home_path))  # needs no token: always on


def _telegram(settings: Settings) -> ChannelAdapter | None:
    if not settings.telegram_bot_token:
        return None
    from nanoclaw_common.channels.telegram import TelegramAdapter

    return TelegramAdapter(settings.telegram_bot_token, settings.telegram_api_base_url)


def _slack(settings: Settings) -> ChannelAdapter | None:
    if not settings.slack_bot_token:
        return None
    from nanoclaw_common.channels.slack import SlackAdapter

    return SlackAdapter(
        settings.slack_bot_token,
        settings.slack_api_base_url,
        app_token=settings.slack_app_token,
        signing_secret=settings.slack_signing_secret,
        events_host=settings.webhook_host,
        events_port=settings.slack_events_port,
    )


def _webhook(settings: Settings) -> ChannelAdapter | None:
    if not settings.webhook_port or not settings.webhook_secrets:
        return None
    from nanoclaw_common.channels.webhook import WebhookAdapter

    return WebhookAdapter(
        settings.webhook_secrets,
        settings.webhook_host,
        settings.webhook_port,
        rate_per_minute=settings.webhook_rate_per_minute,
        burst=settings.webhook_burst,
    )


BUILTIN = {"cli": _cli, "telegram": _telegram, "slack": _slack, "webhook": _webhook}


def load_builtin() -> None:
    """Register the built-in factories (once per process)."""
    present = set(registered_channels())
    for channel_type, factory in BUILTIN.items():
        if channel_type not in present:
            register_adapter(channel_type, factory)


def build_builtin_adapters(settings: Settings) -> dict[str, ChannelAdapter]:
    load_builtin()
    return build_adapters(settings)
