"""What the runner is told through runner.json: the defaults, and the fields the sandbox fills
in from the settings (``Sandbox.runner_config``)."""

from __future__ import annotations

import pytest

from nanoclaw_common.errors import ConfigError
from nanoclaw_common.runner_config import (
    RunnerConfig,
    decode_runner_config,
    encode_runner_config,
)
from nanoclaw_common.sandbox.core import Sandbox
from nanoclaw_common.settings import Settings
from nanoclaw_common.store import CentralStore
from tests.conftest import SettingsFactory


def test_defaults() -> None:
    config = RunnerConfig(session_id="s", agent_group_id="g")
    assert config.model == "claude-sonnet-5"
    assert config.shed_after_s == 120.0
    assert Settings().model == "claude-sonnet-5"
    assert Settings().runner_shed_after_s == 120.0


def test_shed_after_s_round_trips() -> None:
    config = RunnerConfig(session_id="s", agent_group_id="g", shed_after_s=0)
    assert decode_runner_config(encode_runner_config(config)).shed_after_s == 0
    older = decode_runner_config(b'{"session_id": "s", "agent_group_id": "g"}')
    assert older.shed_after_s == 120.0  # a runner.json written before the field existed


def test_the_sandbox_passes_the_turn_limit_and_shed_time(
    make_settings: SettingsFactory, central: CentralStore
) -> None:
    settings = make_settings(max_turns_per_batch=7, runner_shed_after_s=30.5)
    group = central.create_agent_group("Helper", "helper")
    session = central.create_session(group.id, None)
    config = Sandbox(settings).runner_config(session, group, central.get_container_config(group.id))
    assert (config.max_turns_per_batch, config.shed_after_s) == (7, 30.5)
    disabled = make_settings(runner_shed_after_s=0)
    config = Sandbox(disabled).runner_config(session, group, central.get_container_config(group.id))
    assert config.shed_after_s == 0


def test_a_negative_shed_time_is_refused_at_start_up(make_settings: SettingsFactory) -> None:
    with pytest.raises(ConfigError, match="NANOCLAW_RUNNER_SHED_AFTER_S must not be negative"):
        make_settings(runner_shed_after_s=-1)
