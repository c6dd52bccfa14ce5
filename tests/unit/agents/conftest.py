"""Fixtures for the agent runner's unit tests: a real session folder (both DBs, destinations,
routing) under tmp_path, a ToolContext over it, and an in-process Runner driven one step at a
time with the scripted provider. Nothing sleeps: waits are injected."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent_runner.destinations import Destinations
from agent_runner.paths import RunnerPaths
from agent_runner.providers.scripted import Script, ScriptedProvider, ScriptTurn
from agent_runner.runner import Runner
from agent_runner.tools import ToolContext
from agent_runner.tools.base import GREP_TIMEOUT_S
from agent_runner.watch import ChangeWatcher
from nanoclaw_common import messages
from nanoclaw_common.paths import SessionPaths
from nanoclaw_common.runner_config import RunnerConfig
from nanoclaw_common.store import InboundStore, NewInbound, OutboundStore, create_session_files
from nanoclaw_common.store.rows import DestinationEntry, Routing

GROUP = "ag-1"
NOW = 1_768_485_660_000  # 2026-01-15 14:01 UTC (3:01 PM in Berlin)


@dataclass
class Session:
    paths: RunnerPaths
    inbound: InboundStore  # the host's writer
    outbound: OutboundStore  # the runner's writer (tools write through it)

    def chat(
        self,
        text: str,
        *,
        id: str | None = None,
        chat: str = "chat-1",
        channel: str = "cli",
        sender: str = "Alice",
        at: int = NOW,
        **fields: Any,
    ) -> str:
        row_id = f"{id or f'm{self.inbound.max_seq() + 2}'}:{GROUP}"
        content = fields.pop("content", None) or messages.ChatContent(
            text=text, sender_id="cli:alice", sender_name=sender
        )
        self.inbound.insert_message(
            NewInbound(
                id=row_id,
                content=content,
                timestamp_ms=at,
                channel_type=channel,
                platform_id=chat,
                **fields,
            ),
            now=at,
        )
        return row_id

    def rows(self) -> list[Any]:
        return self.outbound.messages_after(0, limit=1000)

    def contents(self) -> list[messages.OutboundContent]:
        return [messages.decode_outbound_content(r.content) for r in self.rows()]

    def texts(self) -> list[str]:
        return [c.text for c in self.contents() if isinstance(c, messages.SendText)]

    def ack(self, message_id: str) -> str | None:
        return next((a.status for a in self.outbound.acks() if a.message_id == message_id), None)


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    root = tmp_path / "session"
    workspace = tmp_path / "workspace"
    paths = RunnerPaths(SessionPaths(root), workspace, tmp_path / "proxy.sock")
    for folder in (root, paths.session.inbox, paths.session.state_dir, workspace):
        folder.mkdir(parents=True, exist_ok=True)
    create_session_files(paths.session.inbound_db, paths.session.outbound_db)
    inbound = InboundStore(paths.session.inbound_db)
    inbound.replace_destinations(
        [
            DestinationEntry("main", "Main chat", "channel", "cli", "chat-1", None),
            DestinationEntry("team", None, "channel", "slack", "C42", None),
            DestinationEntry("helper", "Helper", "agent", None, None, "ag-helper"),
        ]
    )
    inbound.set_routing(Routing("cli", "chat-1", "thread-9"))
    outbound = OutboundStore(paths.session.outbound_db)
    outbound.start_run("run-1")
    yield Session(paths, inbound, outbound)
    inbound.close()
    outbound.close()


def make_config(**fields: Any) -> RunnerConfig:
    return RunnerConfig(session_id="sess-1", agent_group_id=GROUP, **fields)


@pytest.fixture
def make_ctx(session: Session) -> Callable[..., ToolContext]:
    def factory(
        *,
        wait: Callable[[float], bool] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        grep_timeout_s: float = GREP_TIMEOUT_S,
        **config: Any,
    ) -> ToolContext:
        return ToolContext(
            inbound=session.inbound,
            outbound=session.outbound,
            destinations=Destinations(session.inbound),
            run_id="run-1",
            config=make_config(**config),
            session=session.paths.session,
            workspace=session.paths.workspace,
            stop=threading.Event(),
            wait_for_inbound=wait or (lambda _s: False),
            monotonic=monotonic,
            grep_timeout_s=grep_timeout_s,
        )

    return factory


@pytest.fixture
def ctx(make_ctx: Callable[..., ToolContext]) -> ToolContext:
    return make_ctx()


def turn(*blocks: dict[str, Any], **fields: Any) -> ScriptTurn:
    return ScriptTurn(content=list(blocks), **fields)


def say(text: str, **fields: Any) -> ScriptTurn:
    return turn({"type": "text", "text": text}, **fields)


def call(name: str, **arguments: Any) -> ScriptTurn:
    return turn({"type": "tool_use", "name": name, "input": arguments})


@dataclass
class Harness:
    runner: Runner
    provider: ScriptedProvider
    stop: threading.Event

    def step(self, now: int | None = None) -> bool:
        return self.runner.step(now=now)


@pytest.fixture
def make_runner(session: Session) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def factory(
        *turns: ScriptTurn,
        fallback: ScriptTurn | None = None,
        runner_options: dict[str, Any] | None = None,
        setup_now: int | None = None,
        **config: Any,
    ) -> Harness:
        """``runner_options``: more ``Runner`` arguments (``resumed``, ``monotonic``,
        ``sdk_loaded``); ``setup_now``: the clock (ms) ``setup`` records."""
        provider = ScriptedProvider(Script(turns=list(turns), fallback=fallback))
        stop = threading.Event()
        runner = Runner(
            config=make_config(**config),
            paths=session.paths,
            run_id="run-1",
            provider=lambda: provider,
            stop=stop,
            watcher=ChangeWatcher(session.paths.session.inbound_db),
            **(runner_options or {}),
        )
        runner.setup(now=setup_now)
        harness = Harness(runner, provider, stop)
        made.append(harness)
        return harness

    yield factory
    for harness in made:
        harness.runner.teardown()
