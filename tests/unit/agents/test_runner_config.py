"""What the runner is told through runner.json: the defaults, and the fields the sandbox fills
in from the settings (``Sandbox.runner_config``)."""

from __future__ import annotations

import pytest

from nanoclaw_common.errors import ConfigError, DecodeError
from nanoclaw_common.runner_config import (
    McpServer,
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
    assert config.compact_at_tokens == 165_000  # upstream's auto-compact window
    assert Settings().model == "claude-sonnet-5"
    assert Settings().runner_shed_after_s == 120.0
    assert Settings().runner_compact_at_tokens == 165_000


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


def test_a_newer_hosts_fields_do_not_stop_an_older_runner() -> None:
    """A group image built before an upgrade runs the older runner: a field it does not know
    (written by the newer, trusted host) is ignored, at any depth."""
    config = decode_runner_config(
        b'{"session_id": "s", "agent_group_id": "g", "model": "claude-x",'
        b' "a_field_from_the_future": {"any": ["shape"]},'
        b' "mcp_servers": {"files": {"command": "mcp-files", "cwd": "/later"}}}'
    )
    assert (config.session_id, config.model) == ("s", "claude-x")
    assert config.mcp_servers == {"files": McpServer("mcp-files")}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_turns_per_batch", '"7"'),  # no coercion from strings
        ("compact_at_tokens", "165000.5"),
        ("provider", '"openai"'),
        ("mcp_servers", '{"files": {"args": ["--ro"]}}'),  # a known field inside is required
        ("session_id", "null"),
    ],
)
def test_known_fields_are_still_checked_strictly(field: str, value: str) -> None:
    data = f'{{"session_id": "s", "agent_group_id": "g", "{field}": {value}}}'
    with pytest.raises(DecodeError, match="invalid runner config"):
        decode_runner_config(data)


def test_the_sandbox_passes_the_compaction_threshold(
    make_settings: SettingsFactory, central: CentralStore
) -> None:
    settings = make_settings(runner_compact_at_tokens=400_000)
    group = central.create_agent_group("Helper", "helper")
    session = central.create_session(group.id, None)
    config = Sandbox(settings).runner_config(session, group, central.get_container_config(group.id))
    assert config.compact_at_tokens == 400_000
    assert decode_runner_config(encode_runner_config(config)).compact_at_tokens == 400_000


def test_a_tiny_compaction_threshold_is_refused_at_start_up(
    make_settings: SettingsFactory,
) -> None:
    assert make_settings(runner_compact_at_tokens=10_000).runner_compact_at_tokens == 10_000
    with pytest.raises(
        ConfigError, match="NANOCLAW_RUNNER_COMPACT_AT_TOKENS must be at least 10000"
    ):
        make_settings(runner_compact_at_tokens=9_999)
