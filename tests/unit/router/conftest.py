"""An in-process router over real SQLite files: events go straight to ``Ingest.route``,
platforms are ``RecordingAdapter``s, wakes are recorded. Tests are synchronous and drive one
asyncio loop per test with ``harness.run``."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from nanoclaw_common.channels.common import make_action, make_event
from nanoclaw_common.clock import now_ms
from nanoclaw_common.messages import InboundEvent
from nanoclaw_common.paths import Layout
from nanoclaw_common.settings import Settings
from nanoclaw_common.states import Role
from nanoclaw_common.store import CentralStore, InboundReader
from nanoclaw_common.store.async_central import AsyncCentral
from nanoclaw_common.store.rows import AgentGroup, InboundRow, MessagingGroup, Session, Wiring
from nanoclaw_router.app import Router
from nanoclaw_router.commit import Stored
from tests import entities
from tests.fakes.recording import MemoryWaker, RecordingAdapter

T = TypeVar("T")
ON_THE_CARD = "<the card's own message>"


class Harness:
    def __init__(self, settings: Settings, central: CentralStore, layout: Layout) -> None:
        self.settings = settings
        self.central = central
        self.layout = layout
        # The router's platforms number messages m1, m2... and a user's id is their DM chat.
        self.chat = RecordingAdapter("chat", message_ids="m{n}", dm_prefix="")
        self.threads = RecordingAdapter(
            "threads", supports_threads=True, message_ids="m{n}", dm_prefix=""
        )
        self.waker = MemoryWaker(layout.central_db)
        self.doors = AsyncCentral(layout.central_db)
        self.router = Router(
            settings,
            self.doors,
            {"chat": self.chat, "threads": self.threads},
            self.waker,
            commit_threads=4,
            wake_threads=2,
        )
        self._ids = itertools.count(1)
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.run(self.router.wakes.idle())
        self.router.writer.close()
        self.router.wakes.close()
        self.doors.close()
        self.loop.close()

    # -- setup helpers ----------------------------------------------------------------------

    def group(self, name: str = "Main") -> AgentGroup:
        return entities.new_group(self.central, name)

    def chat_row(
        self,
        platform_id: str = "c1",
        *,
        channel: str = "chat",
        is_group: bool = True,
        policy: str = "public",
        name: str | None = None,
    ) -> MessagingGroup:
        return self.central.create_messaging_group(
            channel, platform_id, name=name, is_group=is_group, unknown_sender_policy=policy
        )

    def wire(self, chat: MessagingGroup, group: AgentGroup, **options: Any) -> Wiring:
        return entities.wire(self.central, chat, group, **options)

    def user(
        self,
        user_id: str,
        *,
        role: str | None = None,
        scope: str | None = None,
        member_of: AgentGroup | None = None,
    ) -> str:
        self.central.upsert_user(user_id, user_id.split(":", 1)[0], user_id)
        if role is not None:
            self.central.grant_role(user_id, Role(role), scope)
        if member_of is not None:
            self.central.add_member(user_id, member_of.id)
        return user_id

    def owner(self, user_id: str = "chat:owner") -> str:
        return self.user(user_id, role="owner")

    # -- driving ----------------------------------------------------------------------------

    def event(
        self,
        text: str = "hello",
        *,
        channel: str = "chat",
        chat: str = "c1",
        sender: str = "chat:u1",
        mention: bool = False,
        group: bool = True,
        thread: str | None = None,
        message_id: str | None = None,
        **extra: Any,
    ) -> InboundEvent:
        return make_event(
            channel_type=channel,
            platform_id=chat,
            message_id=message_id or f"m{next(self._ids)}",
            sender_id=sender,
            sender_name=sender.split(":", 1)[-1],
            text=text,
            timestamp_ms=now_ms(),
            is_mention=mention,
            is_group=group,
            thread_id=thread,
            **extra,
        )

    def send(self, text: str = "hello", **kwargs: Any) -> list[Stored]:
        event = kwargs.pop("event", None) or self.event(text, **kwargs)
        return self.route(event)

    def route(self, event: InboundEvent) -> list[Stored]:
        async def go() -> list[Stored]:
            stored = await self.router.ingest.route(event)
            await self.router.wakes.idle()
            await self.router.bookkeeping.flush()
            return stored

        return self.run(go())

    def click(
        self,
        question_id: str,
        option: int,
        *,
        user: str,
        channel: str = "chat",
        chat: str = "owner",
        message_id: str | None = ON_THE_CARD,
    ) -> str:
        """A click on the card with ``question_id``: by default on the message the router
        sent that card as (host cards count only clicks made on them), else ``m1``."""
        if message_id == ON_THE_CARD:
            posted = [
                s.message_id
                for s in self.chat.of_kind("question") + self.threads.of_kind("question")
                if s.payload.question_id == question_id
            ]
            message_id = posted[-1] if posted else "m1"
        action = make_action(
            channel_type=channel,
            platform_id=chat,
            user_id=user,
            question_id=question_id,
            value=str(option),
            platform_message_id=message_id,
        )

        async def go() -> str:
            outcome = await self.router.clicks.handle_action(action)
            await self.router.wakes.idle()
            return outcome

        return self.run(go())

    def flush(self) -> int:
        """Send what the router queued for platforms."""
        return self.run(self.router.outbox.drain())

    def rows(self, session: Session | str) -> list[InboundRow]:
        sid = session if isinstance(session, str) else session.id
        found = self.central.get_session(sid)
        assert found is not None
        paths = self.layout.session(found.agent_group_id, found.id)
        reader = InboundReader(paths.inbound_db)
        try:
            return reader.list_messages()
        finally:
            reader.close()

    def sessions(self, group: AgentGroup | None = None) -> list[Session]:
        return self.central.list_sessions(agent_group_id=group.id if group else None)

    def drops(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for drop in self.central.list_drops(1000):
            totals[drop.reason] = totals.get(drop.reason, 0) + drop.message_count
        return totals


@pytest.fixture
def harness(settings: Settings, central: CentralStore, layout: Layout) -> Iterator[Harness]:
    h = Harness(settings, central, layout)
    yield h
    h.close()
