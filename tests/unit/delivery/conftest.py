from __future__ import annotations

from collections.abc import Iterator

import pytest
from loguru import logger

from nanoclaw_common.settings import Settings
from tests.conftest import SettingsFactory
from tests.delivery_world import SECRET, World, opened_world


@pytest.fixture
def world(make_settings: SettingsFactory) -> Iterator[World]:
    settings: Settings = make_settings(
        delivery_max_attempts=4,
        delivery_backoff_base_s=2.0,
        delivery_backoff_max_s=60.0,
        anthropic_api_key=SECRET,
    )
    with opened_world(settings) as world:
        yield world


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Every log message (loguru) while the test runs."""
    lines: list[str] = []
    handler = logger.add(lambda message: lines.append(str(message)), format="{message}")
    yield lines
    logger.remove(handler)
