"""Fixtures for the proxy and runner tests: the fake Anthropic API in a thread, a real proxy
process in this test's data folder, and a session with its first run's token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nanoclaw_common.store import CentralStore
from tests.fakes.anthropic_api import FakeAnthropic
from tests.integration.agents.harness import AgentSession, Proxy, make_session, start_proxy


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
