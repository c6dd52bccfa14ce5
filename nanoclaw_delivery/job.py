"""One attempt at one outbound row: the row, its session, and the stores to use."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from nanoclaw_common.channels.base import ChannelAdapter
from nanoclaw_common.errors import RetryLater
from nanoclaw_common.paths import SessionPaths
from nanoclaw_common.store import InboundStore
from nanoclaw_common.store.rows import OutboundRow, Session
from nanoclaw_delivery.acl import ChatAddress
from nanoclaw_delivery.context import Deps
from nanoclaw_delivery.outcome import Denied
from nanoclaw_delivery.text import bytes_contain_secret, contains_secret, redact

LEAK_REASON = "leak guard: the request contains a configured secret"


@dataclass
class Job:
    deps: Deps
    session: Session
    paths: SessionPaths
    inbound: InboundStore
    row: OutboundRow
    attempt: int
    # The chat row's route (``acl.route_chat``), read from central.db while the attempt
    # began: ``operations.send_chat`` awaits it instead of reading it then.
    route: asyncio.Future[tuple[ChatAddress, Denied | None]] | None = None

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

    def guard_texts(self, *texts: str | None) -> None:
        """The leak guard: refuse a request in which any string that would leave the host
        (text, names, ids, options) contains a configured secret. The reason never quotes
        the string."""
        if contains_secret([t for t in texts if t], self.deps.secrets()):
            raise Denied(LEAK_REASON)

    def guard_files(self, paths: list[Path]) -> None:
        """The leak guard for files: their names and their bytes."""
        secrets = self.deps.secrets()
        if not secrets:
            return
        self.guard_texts(*(path.name for path in paths))
        for index, path in enumerate(paths, start=1):
            if bytes_contain_secret(path.read_bytes(), secrets):
                raise Denied(f"leak guard: attached file #{index} contains a configured secret")

    def redact(self, text: str) -> str:
        """``text`` with configured secrets blanked (for reasons that quote the container)."""
        return redact(text, self.deps.secrets())
