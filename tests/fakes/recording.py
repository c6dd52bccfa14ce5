"""Recording stand-ins for the outside world in in-process router tests: a platform adapter
that records what it was asked to send, and a waker that records wakes (and marks the
container ``starting``, as ``Sandbox.wake`` does)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from nanoclaw_common.channels.base import ChannelAdapter, InboundSink, OutgoingFile
from nanoclaw_common.errors import RetryLater
from nanoclaw_common.messages import AskQuestion
from nanoclaw_common.states import ContainerStatus
from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.rows import Session


@dataclass
class Sent:
    kind: str
    platform_id: str
    thread_id: str | None
    payload: Any
    message_id: str


class RecordingAdapter(ChannelAdapter):
    """A platform that accepts everything (or refuses while ``offline``)."""

    channel_type: ClassVar[str] = "chat"
    supports_threads: ClassVar[bool] = False

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.offline = False
        self._n = 0

    async def run_inbound(self, sink: InboundSink) -> None:
        # A quiet platform: these tests feed events to the router directly.
        await asyncio.Event().wait()

    def _record(self, kind: str, platform_id: str, thread_id: str | None, payload: Any) -> str:
        if self.offline:
            raise RetryLater("offline")
        self._n += 1
        message_id = f"m{self._n}"
        self.sent.append(Sent(kind, platform_id, thread_id, payload, message_id))
        return message_id

    async def send_text(
        self,
        platform_id: str,
        thread_id: str | None,
        text: str,
        files: list[OutgoingFile] | None = None,
    ) -> str | None:
        return self._record("text", platform_id, thread_id, text)

    async def edit_text(
        self, platform_id: str, thread_id: str | None, message_id: str, text: str
    ) -> None:
        self._record("edit", platform_id, thread_id, (message_id, text))

    async def add_reaction(
        self, platform_id: str, thread_id: str | None, message_id: str, emoji: str
    ) -> None:
        self._record("reaction", platform_id, thread_id, (message_id, emoji))

    async def send_question(
        self, platform_id: str, thread_id: str | None, question: AskQuestion
    ) -> str | None:
        return self._record("question", platform_id, thread_id, question)

    async def set_typing(self, platform_id: str, thread_id: str | None) -> None:
        self._record("typing", platform_id, thread_id, None)

    def of_kind(self, kind: str) -> list[Sent]:
        return [s for s in self.sent if s.kind == kind]


class ThreadedAdapter(RecordingAdapter):
    channel_type: ClassVar[str] = "threads"
    supports_threads: ClassVar[bool] = True


@dataclass
class MemoryWaker:
    """Counts wakes per session; marks the container starting like the real one."""

    central_path: Path
    wakes: list[str] = field(default_factory=list)
    fail: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wake(self, session: Session) -> bool:
        if self.fail:
            return False
        central = CentralStore(self.central_path)
        try:
            central.set_container_status(session.id, ContainerStatus.STARTING, run_id="run-test")
        finally:
            central.close()
        with self._lock:
            self.wakes.append(session.id)
        return True
