"""A sweeper over real session DBs with a recording fake sandbox, for the sweeper's tests in
every layer: ``FakeSandbox`` records what the sweeper asks for (``live`` is what Podman would
report running), ``world`` is the fixture (settings, ``central.db``, group ``main``, the
sweeper), and the helpers write what a runner would (messages, claims, heartbeats)."""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass, field

import msgspec
import pytest

from nanoclaw_common import messages as m
from nanoclaw_common.paths import Layout, SessionPaths
from nanoclaw_common.sessions import ensure_session_files
from nanoclaw_common.settings import Settings
from nanoclaw_common.store import (
    CentralStore,
    InboundReader,
    InboundStore,
    NewInbound,
    OutboundStore,
    rows,
)
from nanoclaw_sweeper.sweeper import Sweeper

T0 = 1_800_000_000_000


@dataclass(frozen=True)
class FakeContainer:
    name: str
    session_id: str
    run_id: str


@dataclass
class FakeSandbox:
    """Records what the sweeper asks for; `live` is what Podman would report running."""

    central: CentralStore
    live: dict[str, FakeContainer] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    now: int = T0
    runs: int = 0
    stop_error: Exception | None = None  # raised by the next stop (Podman trouble)

    def start(self, session: rows.Session) -> str:
        self.runs += 1
        run_id = f"run-{self.runs}"
        self.live[session.id] = FakeContainer(f"nanoclaw-test-{session.id}", session.id, run_id)
        self.central.set_container_status(session.id, "starting", run_id=run_id, now=self.now)
        return run_id

    def running(self) -> list[FakeContainer]:
        return list(self.live.values())

    def wake(self, session: rows.Session) -> bool:
        self.calls.append(("wake", session.id))
        self.start(session)
        return True

    def stop(self, session_id: str, timeout_s: float = 10.0) -> None:
        self.calls.append(("stop", session_id))
        if self.stop_error is not None:
            error, self.stop_error = self.stop_error, None
            raise error
        self.live.pop(session_id, None)
        self.central.set_container_status(session_id, "stopped", now=self.now)

    def orphans(self, live_session_ids: Collection[str]) -> list[FakeContainer]:
        return [c for c in self.live.values() if c.session_id not in live_session_ids]

    def remove(self, name: str) -> bool:
        self.calls.append(("remove", name))
        for session_id, container in list(self.live.items()):
            if container.name == name:
                del self.live[session_id]
                return True
        return False


@dataclass
class World:
    settings: Settings
    central: CentralStore
    layout: Layout
    sandbox: FakeSandbox
    sweeper: Sweeper
    group: rows.AgentGroup

    def session(self) -> tuple[rows.Session, SessionPaths]:
        session = self.central.create_session(self.group.id, None, now=T0)
        return session, ensure_session_files(self.layout, session)

    def refreshed(self, session: rows.Session) -> rows.Session:
        current = self.central.get_session(session.id)
        assert current is not None
        return current


@pytest.fixture
def world(settings: Settings, central: CentralStore, layout: Layout) -> World:
    tuned = msgspec.structs.replace(settings, max_containers=2, max_tries=3)
    sandbox = FakeSandbox(central)
    group = central.create_agent_group("Main", "main", now=T0)
    return World(tuned, central, layout, sandbox, Sweeper(tuned, central, sandbox), group)


def add_message(paths: SessionPaths, message_id: str, **fields: object) -> None:
    store = InboundStore(paths.inbound_db)
    store.insert_message(
        msgspec.structs.replace(
            NewInbound(
                id=message_id,
                content=m.ChatContent(text=message_id, sender_id="cli:local"),
                timestamp_ms=T0,
            ),
            **fields,
        ),
        now=T0,
    )
    store.close()


def claim(paths: SessionPaths, run_id: str, *ids: str, now: int = T0) -> None:
    store = OutboundStore(paths.outbound_db)
    store.start_run(run_id, now=now)
    store.claim(ids, run_id, now=now)
    store.close()


def beat(paths: SessionPaths, at_ms: int) -> None:
    paths.heartbeat.touch()
    os.utime(paths.heartbeat, ns=(at_ms * 1_000_000, at_ms * 1_000_000))


def inbound_row(paths: SessionPaths, message_id: str) -> rows.InboundRow:
    reader = InboundReader(paths.inbound_db)
    row = reader.get_message(message_id)
    reader.close()
    assert row is not None
    return row
