from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import SettingsFactory
from tests.delivery_world import World, opened_world
from tests.fakes.slack_api import BOT_TOKEN as SLACK_BOT_TOKEN
from tests.fakes.slack_api import FakeSlack
from tests.fakes.telegram_api import FakeTelegram
from tests.integration.delivery.terminal import FakeTerminal


@pytest.fixture
def fake_telegram() -> Iterator[FakeTelegram]:
    fake = FakeTelegram().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    fake = FakeSlack().start()
    yield fake
    fake.stop()


@pytest.fixture
def world(
    make_settings: SettingsFactory, fake_telegram: FakeTelegram, fake_slack: FakeSlack
) -> Iterator[World]:
    settings = make_settings(
        telegram_bot_token=fake_telegram.token,
        telegram_api_base_url=fake_telegram.base_url,
        slack_bot_token=SLACK_BOT_TOKEN,
        slack_api_base_url=fake_slack.api_url,
    )
    with opened_world(settings) as world:
        yield world


@pytest.fixture
def terminal(world: World) -> Iterator[FakeTerminal]:
    from nanoclaw_common.channels import cli_protocol as wire

    fake = FakeTerminal(wire.chat_socket(world.layout)).start()
    yield fake
    fake.stop()
