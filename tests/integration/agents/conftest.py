"""Fixtures for the proxy and runner tests: the fake Anthropic API in a thread, a real proxy
process in this test's data folder (or the proxy app in a thread of this process, with its
clock in the test's hands), and a session with its first run's token."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from nanoclaw_common.paths import Layout
from nanoclaw_common.store import CentralStore
from nanoclaw_proxy.app import STATE, ProxyState, make_app
from nanoclaw_proxy.guard import ConnectionGuard
from nanoclaw_proxy.handover import bind_listener
from nanoclaw_proxy.server import serve
from tests.conftest import SettingsFactory
from tests.fakes.anthropic_api import FakeAnthropic
from tests.integration.agents.harness import (
    AgentSession,
    Proxy,
    make_session,
    start_proxy,
    uds_client,
)
from tests.waiting import wait_until


@pytest.fixture
def fake_api() -> Iterator[FakeAnthropic]:
    api = FakeAnthropic().start()
    yield api
    api.stop()


@pytest.fixture
def proxy(home: Path, central: CentralStore, fake_api: FakeAnthropic) -> Iterator[Proxy]:
    # `central` first: the test's store has migrated central.db before the proxy opens it.
    running = start_proxy(home, fake_api.api_key, fake_api.url)
    yield running
    running.stop()


@pytest.fixture
def agent(central: CentralStore, home: Path) -> AgentSession:
    return make_session(central, home)


@dataclass
class LocalProxy:
    """The proxy app served in a thread of the test process, on the real socket path."""

    state: ProxyState
    socket: Path
    clock: list[float]  # the monotonic seconds the proxy's token cache and limiter see


@pytest.fixture
def make_local_proxy(
    make_settings: SettingsFactory, layout: Layout, central: CentralStore, fake_api: FakeAnthropic
) -> Iterator[Callable[..., LocalProxy]]:
    """Start the proxy app in a thread of this process; ``guard`` options (limits,
    deadlines) as keyword arguments."""
    running: list[Callable[[], None]] = []

    def start(**guard_options: Any) -> LocalProxy:
        settings = make_settings(
            anthropic_api_key=fake_api.api_key, anthropic_base_url=fake_api.url
        )
        guard = ConnectionGuard(**{"total": 1024, **guard_options})
        app = make_app(settings, layout.central_db, guard)
        clock = [1_000.0]
        app[STATE].monotonic = lambda: clock[0]
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        stopped = asyncio.Event()
        listener = bind_listener(layout.proxy_socket)
        served = asyncio.run_coroutine_threadsafe(serve(app, listener, stopped, drain_s=10), loop)

        def healthy() -> bool:
            if served.done():
                served.result()  # raises what stopped it
            try:
                with uds_client(layout.proxy_socket) as client:
                    return client.get("http://proxy/nanoclaw/health").status_code == 200
            except httpx2.TransportError:
                return False

        def stop() -> None:
            loop.call_soon_threadsafe(stopped.set)
            served.result(15)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
            listener.close()

        running.append(stop)
        wait_until(healthy, timeout_s=20.0, what="the in-process proxy")
        return LocalProxy(app[STATE], layout.proxy_socket, clock)

    yield start
    for stop in running:
        stop()


@pytest.fixture
def local_proxy(make_local_proxy: Callable[..., LocalProxy]) -> LocalProxy:
    return make_local_proxy()
