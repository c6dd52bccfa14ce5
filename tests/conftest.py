"""Shared fixtures: real SQLite files under tmp_path, settings built per test, factories with
test defaults. Nothing here sleeps or patches time; tests pass ``now``.

Every test is marked with its layer, the folder it lives in (tests/README.md says what each
layer may use and how long it takes): ``pytest -m unit`` is the quick loop."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import msgspec
import pytest
from hypothesis import settings as hypothesis_settings

from nanoclaw_common.paths import Layout
from nanoclaw_common.settings import Settings
from nanoclaw_common.store import CentralStore, sqlite
from tests.environ import AGENT_IMAGE

# A central.db call on an event loop fails the test that reaches it (in this process and in
# the programs tests start: tests.environ.clean_environ passes it on). Test code itself may
# look at central.db from a coroutine: it stands for another process.
sqlite.strict_off_loop = True
sqlite.exempt_callers = (str(Path(__file__).parent) + "/",)

# No per-example deadline: property tests check behaviour, not speed (speed is bench/'s job),
# and on a loaded 2-core machine one example can take 400 ms for reasons of its own.
hypothesis_settings.register_profile("nanoclaw", deadline=None)
hypothesis_settings.load_profile("nanoclaw")

SettingsFactory = Callable[..., Settings]

TESTS: Final = Path(__file__).resolve().parent
LAYERS: Final = ("unit", "integration", "sandbox", "chaos", "security", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its layer (its first folder under tests/), so a new test gets the
    marker by where it is put; a test outside the layers is a usage error, not a stray."""
    for item in items:
        layer = item.path.resolve().relative_to(TESTS).parts[0]
        if layer not in LAYERS:
            raise pytest.UsageError(
                f"{item.nodeid}: tests live in one layer, tests/{{{','.join(LAYERS)}}}/"
            )
        item.add_marker(layer)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def make_settings(home: Path) -> SettingsFactory:
    """``make_settings(max_containers=1)``: test settings in this test's data folder."""

    def factory(**overrides: Any) -> Settings:
        base = Settings(home=str(home), install_id="test", image=AGENT_IMAGE)
        return msgspec.structs.replace(base, **overrides).validate()

    return factory


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings()


@pytest.fixture
def layout(settings: Settings) -> Layout:
    layout = Layout(settings.home_path)
    layout.ensure()
    return layout


@pytest.fixture
def central(layout: Layout) -> Iterator[CentralStore]:
    store = CentralStore.open(layout.central_db)
    yield store
    store.close()
