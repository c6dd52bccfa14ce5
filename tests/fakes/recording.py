"""Recording stand-ins for the outside world in in-process router and delivery tests: a
platform adapter that records what it was asked to send, and a waker that records wakes (and
marks the container ``starting``, as ``Sandbox.wake`` does).

``RecordingAdapter`` is a real ``ChannelAdapter`` subclass, so the code under test runs its own
calls against it. Each call is one ``Sent`` in ``sent``, in order: ``of_kind`` picks them by
kind with their whole payload (the ``AskQuestion``, the text), ``calls`` shows them as flat
tuples (``("text", chat, thread or "", text)``) for exact comparisons. Failures are scripted:
``offline`` refuses every call (``RetryLater``), ``failures`` are raised one per call,
``fail_at`` on the N-th call, ``gate`` holds calls (a slow platform), ``connected`` is what
``is_connected`` answers."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from nanoclaw_common.channels.base import ChannelAdapter, InboundSink, OutgoingFile
from nanoclaw_common.errors import RetryLater
from nanoclaw_common.messages import AskQuestion, SendCard
from nanoclaw_common.states import ContainerStatus
from nanoclaw_common.store import CentralStore
from nanoclaw_common.store.rows import Session


@dataclass(frozen=True)
class Sent:
    """One outbound call: ``payload`` is what the caller passed (the text, the question, the
    ``(message_id, text)`` of an edit), ``call`` the same as a flat tuple of strings."""

    kind: str  # text, edit, reaction, question, card, typing
    platform_id: str
    thread_id: str | None
    payload: Any  # each kind's own type (see the class docstring); tests read it per kind
    message_id: str
    call: tuple[str, ...]


class RecordingAdapter(ChannelAdapter):
    """A platform that accepts everything (unless scripted to fail) and records it.

    Platforms name things differently, and tests rely on the names: ``message_ids`` formats
    the id returned for each accepted call (``{channel}``, ``{n}``: ``telegram-1``; the
    router tests' platform says ``m1``), ``dm_prefix`` makes the chat ``open_dm`` returns
    (``dm-ada``, told apart from group chats; ``""`` where a user id is its DM chat, as on
    Telegram)."""

    channel_type: ClassVar[str] = "telegram"

    def __init__(
        self,
        channel_type: str = "telegram",
        *,
        text_limit: int = 4000,
        supports_cards: bool = False,
        supports_threads: bool = False,
        message_ids: str = "{channel}-{n}",
        dm_prefix: str = "dm-",
    ) -> None:
        # Per instance, where ChannelAdapter has class constants: one class stands in for
        # every platform a test wires up.
        self.channel_type = channel_type  # type: ignore[misc]
        self.text_limit = text_limit  # type: ignore[misc]
        self.supports_cards = supports_cards  # type: ignore[misc]
        self.supports_threads = supports_threads  # type: ignore[misc]
        self.message_ids = message_ids
        self.dm_prefix = dm_prefix
        self.sent: list[Sent] = []
        self.files: list[list[tuple[str, bytes]]] = []  # per accepted text: (name, bytes)
        self.questions: list[AskQuestion] = []  # every card asked for, whole
        self.offline = False
        self.failures: list[BaseException] = []
        self.fail_at: dict[int, BaseException] = {}
        self.connected = True
        self.gate: asyncio.Event | None = None  # when set, calls wait for it (a slow platform)
        self._n = 0
        self._tried = 0

    def is_connected(self) -> bool:
        return self.connected

    async def run_inbound(self, sink: InboundSink) -> None:
        # A quiet platform: these tests feed events to the router directly.
        await asyncio.Event().wait()

    async def _call(
        self, kind: str, platform_id: str, thread_id: str | None, payload: Any, *shown: str
    ) -> str:
        if self.gate is not None:
            await self.gate.wait()
        if self.offline:
            raise RetryLater("offline")
        self._tried += 1
        if self._tried in self.fail_at:
            raise self.fail_at.pop(self._tried)
        if self.failures:
            raise self.failures.pop(0)
        self._n += 1
        message_id = self.message_ids.format(channel=self.channel_type, n=self._n)
        call = (kind, platform_id, thread_id or "", *shown)
        self.sent.append(Sent(kind, platform_id, thread_id, payload, message_id, call))
        return message_id

    async def send_text(
        self,
        platform_id: str,
        thread_id: str | None,
        text: str,
        files: list[OutgoingFile] | None = None,
    ) -> str | None:
        attached = [(f.name, f.path.read_bytes()) for f in files or []]
        message_id = await self._call("text", platform_id, thread_id, text, text)
        self.files.append(attached)  # only what was accepted, like ``sent``
        return message_id

    async def edit_text(
        self, platform_id: str, thread_id: str | None, message_id: str, text: str
    ) -> None:
        await self._call("edit", platform_id, thread_id, (message_id, text), message_id, text)

    async def add_reaction(
        self, platform_id: str, thread_id: str | None, message_id: str, emoji: str
    ) -> None:
        await self._call("reaction", platform_id, thread_id, (message_id, emoji), message_id, emoji)

    async def send_question(
        self, platform_id: str, thread_id: str | None, question: AskQuestion
    ) -> str | None:
        labels = ",".join(o.value for o in question.options)
        self.questions.append(question)
        return await self._call(
            "question",
            platform_id,
            thread_id,
            question,
            question.question_id,
            question.title,
            labels,
        )

    async def send_card(self, platform_id: str, thread_id: str | None, card: SendCard) -> str:
        return await self._call("card", platform_id, thread_id, card, card.card.title)

    async def set_typing(self, platform_id: str, thread_id: str | None) -> None:
        await self._call("typing", platform_id, thread_id, None)

    async def open_dm(self, user_handle: str) -> str:
        if self.failures:
            raise self.failures.pop(0)
        return f"{self.dm_prefix}{user_handle}"

    @property
    def calls(self) -> list[tuple[str, ...]]:
        return [s.call for s in self.sent]

    def of_kind(self, kind: str) -> list[Sent]:
        return [s for s in self.sent if s.kind == kind]

    def texts(self, platform_id: str | None = None) -> list[str]:
        """Texts sent, to every chat except DMs (or to ``platform_id`` only)."""
        return [
            s.payload
            for s in self.of_kind("text")
            if (s.platform_id == platform_id if platform_id else not self._is_dm(s.platform_id))
        ]

    def chat_calls(self) -> list[tuple[str, ...]]:
        """Calls to chats, leaving out DMs (owner notices, approval cards)."""
        return [s.call for s in self.sent if not self._is_dm(s.platform_id)]

    def _is_dm(self, platform_id: str) -> bool:
        return bool(self.dm_prefix) and platform_id.startswith(self.dm_prefix)


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
