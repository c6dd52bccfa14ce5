"""Real channel adapters, with their real client libraries, against the fake platforms, feeding
a real in-process router (real central and session DBs; wakes recorded)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import apsw
import pytest

from nanoclaw_common.channels.base import INVALID_INPUT, ChannelAdapter
from nanoclaw_common.messages import ActionEvent, InboundEvent
from nanoclaw_common.paths import Layout
from nanoclaw_common.settings import Settings
from nanoclaw_common.store import CentralStore, InboundReader
from nanoclaw_common.store.async_central import AsyncCentral
from nanoclaw_common.store.rows import AgentGroup, InboundRow, MessagingGroup, Session
from nanoclaw_router.app import Router
from tests import entities
from tests.fakes.recording import MemoryWaker
from tests.fakes.slack_api import FakeSlack
from tests.fakes.telegram_api import FakeTelegram


class FlakySink:
    """The router, behind a database that is locked for the first ``failures`` commits
    (``apsw.BusyError``, what SQLite raises when ``busy_timeout`` runs out). ``on_refuse``
    runs at each refusal (to look at the platform at that moment)."""

    def __init__(
        self, router: Router, failures: int, on_refuse: Callable[[], None] | None = None
    ) -> None:
        self.router = router
        self.failures = failures
        self.on_refuse = on_refuse
        self.refused: list[str] = []

    async def on_event(self, event: InboundEvent) -> None:
        if self.failures > 0:
            self.failures -= 1
            self.refused.append(event.message_id)
            if self.on_refuse is not None:
                self.on_refuse()
            raise apsw.BusyError("database is locked")
        await self.router.on_event(event)

    async def on_action(self, action: ActionEvent) -> None:
        await self.router.on_action(action)

    async def on_invalid(
        self, channel_type: str, platform_id: str, reason: str, *, code: str = INVALID_INPUT
    ) -> None:
        await self.router.on_invalid(channel_type, platform_id, reason, code=code)


class Delays:
    """Stands in for ``asyncio.sleep`` in an adapter: records each backoff, waits none."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    async def __call__(self, delay_s: float) -> None:
        self.seen.append(delay_s)
        await asyncio.sleep(0)


class Live:
    def __init__(self, settings: Settings, central: CentralStore, layout: Layout) -> None:
        self.settings = settings
        self.central = central
        self.layout = layout
        self.waker = MemoryWaker(layout.central_db)
        self.router: Router | None = None

    def group(self, name: str = "Main") -> AgentGroup:
        return entities.new_group(self.central, name)

    def wire(
        self, channel: str, platform_id: str, group: AgentGroup, **options: Any
    ) -> MessagingGroup:
        return entities.wire_platform_chat(self.central, channel, platform_id, group, **options)

    def run(
        self,
        adapters: dict[str, ChannelAdapter],
        scenario: Callable[[Router], Awaitable[None]],
    ) -> None:
        doors = AsyncCentral(self.layout.central_db)

        async def main() -> None:
            router = Router(
                self.settings, doors, adapters, self.waker, commit_threads=4, wake_threads=2
            )
            self.router = router
            await router.start()
            try:
                await scenario(router)
            finally:
                await router.stop()

        try:
            asyncio.run(main())
        finally:
            doors.close()

    def sessions(self) -> list[Session]:
        return self.central.list_sessions()

    def rows(self, session: Session | None = None) -> list[InboundRow]:
        found: list[InboundRow] = []
        for item in [session] if session else self.sessions():
            paths = self.layout.session(item.agent_group_id, item.id)
            if not paths.inbound_db.exists():
                continue
            reader = InboundReader(paths.inbound_db)
            try:
                found += reader.list_messages()
            except apsw.SQLError:
                continue  # the router is creating this file right now
            finally:
                reader.close()
        return found


@pytest.fixture
def live(settings: Settings, central: CentralStore, layout: Layout) -> Live:
    return Live(settings, central, layout)


@pytest.fixture
def telegram() -> Iterator[FakeTelegram]:
    fake = FakeTelegram().start()
    yield fake
    fake.stop()


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    fake = FakeSlack().start()
    yield fake
    fake.stop()
