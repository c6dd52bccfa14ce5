"""One install for delivery tests (unit, integration, chaos, the CLI's): ``opened_world``.
Test doubles and a small world: real SQLite files under tmp_path,
recording adapters (``tests.fakes.recording``: real ``ChannelAdapter`` subclasses that record
instead of calling a platform), a settable clock, and the real image builder running a
stand-in ``podman`` executable (a child process that records its arguments)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from nanoclaw_common import messages as m
from nanoclaw_common.paths import Layout, SessionPaths
from nanoclaw_common.sandbox.group_image import GroupImageBuilder
from nanoclaw_common.sessions import ensure_session_files, refresh_projections
from nanoclaw_common.settings import Settings
from nanoclaw_common.states import EngageMode, Role
from nanoclaw_common.store import CentralStore, InboundStore, NewInbound, OutboundStore
from nanoclaw_common.store.async_central import AsyncCentral
from nanoclaw_common.store.outbound import NewOutbound, Written
from nanoclaw_common.store.owner_notices import OwnerNotices
from nanoclaw_common.store.rows import AgentGroup, MessagingGroup, Session
from nanoclaw_delivery.context import Deps, Offload
from nanoclaw_delivery.engine import SessionWorker
from tests.fakes.podman_cli import FakePodmanCli
from tests.fakes.recording import RecordingAdapter

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
                central=AsyncCentral.inline(self.central),
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


@contextlib.contextmanager
def opened_world(settings: Settings, clock: Clock | None = None) -> Iterator[World]:
    """``make_world`` for a fixture: its stores closed when the test is done."""
    world = make_world(settings, clock)
    try:
        yield world
    finally:
        world.close()
        world.central.close()
