"""Test doubles and a small world for delivery tests: real SQLite files under tmp_path, a
recording adapter (a real ``ChannelAdapter`` subclass that records instead of calling a
platform), a settable clock, and the real image builder running a stand-in ``podman``
executable (a child process that records its arguments)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from nanoclaw_common import messages as m
from nanoclaw_common.channels.base import ChannelAdapter, InboundSink, OutgoingFile
from nanoclaw_common.paths import Layout, SessionPaths
from nanoclaw_common.sandbox.group_image import GroupImageBuilder
from nanoclaw_common.sessions import ensure_session_files, refresh_projections
from nanoclaw_common.settings import Settings
from nanoclaw_common.states import EngageMode, Role
from nanoclaw_common.store import CentralStore, InboundStore, NewInbound, OutboundStore
from nanoclaw_common.store.outbound import NewOutbound, Written
from nanoclaw_common.store.owner_notices import OwnerNotices
from nanoclaw_common.store.rows import AgentGroup, MessagingGroup, Session
from nanoclaw_delivery.context import Deps, Offload
from nanoclaw_delivery.engine import SessionWorker
from tests.unit.sandbox.fake_podman import FakePodmanCli

T = TypeVar("T")
NOW = 1_700_000_000_000
SECRET = "sk-test-SECRET-1234567890"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Clock:
    """Epoch ms that only moves when a test moves it."""

    def __init__(self, start: int = NOW) -> None:
        self.value = start

    def __call__(self) -> int:
        return self.value

    def advance(self, ms: int) -> int:
        self.value += ms
        return self.value


class RecordingAdapter(ChannelAdapter):
    """Records every outbound call. ``failures`` are raised, one per call, before recording;
    ``fail_at`` raises its error on that call (1-based, counting every call made), e.g. the
    third chunk of a split text; ``connected`` False makes delivery treat it as
    disconnected."""

    channel_type = "telegram"

    def __init__(
        self,
        channel_type: str = "telegram",
        *,
        text_limit: int = 4000,
        supports_cards: bool = False,
    ) -> None:
        self.channel_type = channel_type  # type: ignore[misc]
        self.text_limit = text_limit  # type: ignore[misc]
        self.supports_cards = supports_cards  # type: ignore[misc]
        self.calls: list[tuple[str, ...]] = []
        self.files: list[list[tuple[str, bytes]]] = []
        self.questions: list[m.AskQuestion] = []  # every card asked for, whole
        self.failures: list[BaseException] = []
        self.fail_at: dict[int, BaseException] = {}
        self.connected = True
        self.gate: asyncio.Event | None = None  # when set, calls wait for it (a slow platform)
        self._n = 0
        self._tried = 0

    def is_connected(self) -> bool:
        return self.connected

    async def run_inbound(self, sink: InboundSink) -> None:
        await asyncio.Event().wait()

    async def _call(self, *record: str) -> str:
        if self.gate is not None:
            await self.gate.wait()
        self._tried += 1
        if self._tried in self.fail_at:
            raise self.fail_at.pop(self._tried)
        if self.failures:
            raise self.failures.pop(0)
        self._n += 1
        self.calls.append(record)
        return f"{self.channel_type}-{self._n}"

    async def send_text(
        self,
        platform_id: str,
        thread_id: str | None,
        text: str,
        files: list[OutgoingFile] | None = None,
    ) -> str | None:
        sent = [(f.name, f.path.read_bytes()) for f in files or []]
        message_id = await self._call("text", platform_id, thread_id or "", text)
        self.files.append(sent)  # only what was accepted, like ``calls``
        return message_id

    async def edit_text(
        self, platform_id: str, thread_id: str | None, message_id: str, text: str
    ) -> None:
        await self._call("edit", platform_id, thread_id or "", message_id, text)

    async def add_reaction(
        self, platform_id: str, thread_id: str | None, message_id: str, emoji: str
    ) -> None:
        await self._call("reaction", platform_id, thread_id or "", message_id, emoji)

    async def send_question(
        self, platform_id: str, thread_id: str | None, question: m.AskQuestion
    ) -> str | None:
        labels = ",".join(o.value for o in question.options)
        self.questions.append(question)
        return await self._call(
            "question", platform_id, thread_id or "", question.question_id, question.title, labels
        )

    async def send_card(self, platform_id: str, thread_id: str | None, card: m.SendCard) -> str:
        return await self._call("card", platform_id, thread_id or "", card.card.title)

    async def open_dm(self, user_handle: str) -> str:
        if self.failures:
            raise self.failures.pop(0)
        return f"dm-{user_handle}"

    def texts(self, platform_id: str | None = None) -> list[str]:
        """Texts sent, to every chat except owner DMs (or to ``platform_id`` only)."""
        return [
            c[3]
            for c in self.calls
            if c[0] == "text"
            and (c[1] == platform_id if platform_id else not c[1].startswith("dm-"))
        ]

    def chat_calls(self) -> list[tuple[str, ...]]:
        """Calls to chats, leaving out DMs (owner notices, approval cards)."""
        return [c for c in self.calls if not c[1].startswith("dm-")]


@dataclass
class World:
    """One install: an owner, an agent group ``main`` wired to telegram chat 100, a second
    chat (200) it has no destination for, and one session on chat 100."""

    settings: Settings
    layout: Layout
    central: CentralStore
    group: AgentGroup
    home_chat: MessagingGroup
    other_chat: MessagingGroup
    session: Session
    paths: SessionPaths
    outbound: OutboundStore
    clock: Clock
    adapters: dict[str, RecordingAdapter]
    podman: FakePodmanCli
    _deps: Deps | None = None

    @property
    def telegram(self) -> RecordingAdapter:
        return self.adapters["telegram"]

    @property
    def notices(self) -> OwnerNotices:
        """The owner-notice queue (``central.owner_notices``)."""
        return OwnerNotices(self.central)

    @property
    def deps(self) -> Deps:
        if self._deps is None:
            self._deps = Deps(
                settings=self.settings,
                layout=self.layout,
                central=self.central,
                adapters=self.adapters,
                images=GroupImageBuilder(self.settings, base_env=self.podman.env()),
                offload=Offload(inline=True),
                clock=self.clock,
            )
        return self._deps

    def write(self, content: m.OutboundContent, **fields: Any) -> Written:
        """A row as the runner writes it: seq above every inbound row (``min_seq``)."""
        store = self.inbound()
        try:
            top = store.max_seq()
        finally:
            store.close()
        return self.outbound.insert_message(
            NewOutbound(content=content, **fields), min_seq=top, now=self.clock()
        )

    def text(self, text: str, **fields: Any) -> Written:
        return self.write(m.SendText(text=text), **fields)

    def worker(self, session: Session | None = None) -> SessionWorker:
        target = session or self.session
        return SessionWorker(
            self.deps, target, self.layout.session(target.agent_group_id, target.id)
        )

    def drain(self, session: Session | None = None) -> int | None:
        worker = self.worker(session)
        try:
            return run(worker.drain())
        finally:
            worker.close()

    def inbound(self, session: Session | None = None) -> InboundStore:
        target = session or self.session
        return InboundStore(self.layout.session(target.agent_group_id, target.id).inbound_db)

    def delivery(self, out_id: str) -> Any:
        store = self.inbound()
        try:
            return store.get_delivery(out_id)
        finally:
            store.close()

    def notes(self, session: Session | None = None) -> list[tuple[str, int, int]]:
        """(text, trigger, on_wake) of every system note in the session."""
        store = self.inbound(session)
        try:
            found = []
            for row in store.list_messages():
                content = m.decode_inbound_content(row.content)
                if isinstance(content, m.ChatContent) and content.sender_id == "system":
                    found.append((content.text, row.trigger, row.on_wake))
            return found
        finally:
            store.close()

    def user_message(
        self, message_id: str, sender: str, text: str = "hi", chat: MessagingGroup | None = None
    ) -> str:
        """An inbound chat row as the router would write it; returns its id."""
        where = chat or self.home_chat
        store = self.inbound()
        try:
            store.insert_message(
                NewInbound(
                    id=message_id,
                    content=m.ChatContent(text=text, sender_id=sender, sender_name=sender),
                    timestamp_ms=self.clock(),
                    channel_type=where.channel_type,
                    platform_id=where.platform_id,
                ),
                now=self.clock(),
            )
        finally:
            store.close()
        return message_id

    def due(self, session: Session | None = None) -> list[str]:
        """Ids of the session's rows that would make the sweeper wake a stopped container
        now (pending, ``trigger=1``, due), oldest first."""
        store = self.inbound(session)
        try:
            now = self.clock()
            return [
                row.id
                for row in store.list_messages()
                if row.status == "pending"
                and row.trigger
                and (row.process_after_ms is None or row.process_after_ms <= now)
            ]
        finally:
            store.close()

    def built(self) -> list[tuple[str, list[str], list[str]]]:
        """(image tag, apt names, pip names) of every image build, in order."""
        found = []
        for tag, containerfile in self.podman.builds():
            apt = re.search(r"--no-install-recommends (.+?) &&", containerfile)
            pip = re.search(r"/opt/venv/bin/pip install (.+)$", containerfile, re.MULTILINE)
            found.append((tag, apt[1].split() if apt else [], pip[1].split() if pip else []))
        return found

    def restart_requests(self) -> list[tuple[str, str]]:
        """(session id, reason) of every restart request waiting for the sweeper."""
        return [(r.session_id, r.reason) for r in self.central.list_restart_requests()]

    def new_session(self, group: AgentGroup, chat: MessagingGroup | None) -> Session:
        session = self.central.create_session(group.id, chat.id if chat else None, now=self.clock())
        ensure_session_files(self.layout, session)
        refresh_projections(self.central, self.layout, session)
        return session

    def close(self) -> None:
        self.outbound.close()


def make_world(settings: Settings, clock: Clock | None = None) -> World:
    clock = clock or Clock()
    layout = Layout(settings.home_path)
    layout.ensure()
    central = CentralStore.open(layout.central_db)
    central.upsert_user("telegram:owner", "telegram", "Olive", now=clock())
    central.grant_role("telegram:owner", Role.OWNER, now=clock())
    group = central.create_agent_group("Main", "main", now=clock())
    layout.group_dir("main").mkdir(parents=True, exist_ok=True)
    home = central.create_messaging_group("telegram", "100", name="home", now=clock())
    other = central.create_messaging_group("telegram", "200", name="other", now=clock())
    central.create_wiring(home.id, group.id, engage_mode=EngageMode.MENTION, now=clock())
    session = central.create_session(group.id, home.id, now=clock())
    paths = ensure_session_files(layout, session)
    refresh_projections(central, layout, session)
    outbound = OutboundStore(paths.outbound_db)
    adapters = {"telegram": RecordingAdapter("telegram"), "slack": RecordingAdapter("slack")}
    return World(
        podman=FakePodmanCli.install(settings.home_path.parent / "fake-podman"),
        settings=settings,
        layout=layout,
        central=central,
        group=group,
        home_chat=home,
        other_chat=other,
        session=session,
        paths=paths,
        outbound=outbound,
        clock=clock,
        adapters=adapters,
    )
