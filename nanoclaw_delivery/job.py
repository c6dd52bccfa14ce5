"""One attempt at one outbound row: the row, its session, and the stores to use."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nanoclaw_common.channels.base import ChannelAdapter
from nanoclaw_common.errors import RetryLater
from nanoclaw_common.paths import SessionPaths
from nanoclaw_common.store import InboundStore
from nanoclaw_common.store.rows import OutboundRow, Session
from nanoclaw_delivery.context import Deps
from nanoclaw_delivery.outcome import Denied
from nanoclaw_delivery.text import bytes_contain_secret, contains_secret


@dataclass
class Job:
    deps: Deps
    session: Session
    paths: SessionPaths
    inbound: InboundStore
    row: OutboundRow
    attempt: int

    @property
    def staging(self) -> Path:
        return self.deps.staging_root / self.session.id / str(self.row.seq)

    def adapter(self, channel_type: str) -> ChannelAdapter:
        """The live adapter for a channel. Missing or disconnected is retryable, never a
        success (upstream marked such rows delivered and lost them)."""
        adapter = self.deps.adapters.get(channel_type)
        if adapter is None:
            raise RetryLater(f"no {channel_type} adapter is configured in delivery")
        if not adapter.is_connected():
            raise RetryLater(f"the {channel_type} adapter is not connected")
        return adapter

    def guard_texts(self, *texts: str) -> None:
        """The leak guard: refuse a reply that contains a configured secret."""
        if contains_secret(texts, self.deps.secrets()):
            raise Denied("leak guard: the reply contains a configured secret")

    def guard_files(self, paths: list[Path]) -> None:
        secrets = self.deps.secrets()
        if not secrets:
            return
        for path in paths:
            if bytes_contain_secret(path.read_bytes(), secrets):
                raise Denied(f"leak guard: file {path.name!r} contains a configured secret")
