"""The Sandbox's pure parts and its failure paths, without a Podman service."""

from __future__ import annotations

import threading
from pathlib import Path

import msgspec
import pytest

from nanoclaw_common.errors import Refused
from nanoclaw_common.paths import Layout
from nanoclaw_common.runner_config import McpServer, decode_runner_config
from nanoclaw_common.sandbox.core import Sandbox, WakeBusy, wake_lock, write_atomic
from nanoclaw_common.settings import Settings
from nanoclaw_common.store import CentralStore, rows
from tests.conftest import SettingsFactory


@pytest.fixture
def group(central: CentralStore) -> rows.AgentGroup:
    return central.create_agent_group("Helper Bot", "helper")


def test_runner_config_from_settings_and_group(
    make_settings: SettingsFactory, central: CentralStore, group: rows.AgentGroup
) -> None:
    settings = make_settings(model="claude-x", tz="Europe/Paris", max_messages_per_prompt=7)
    session = central.create_session(group.id, None)
    box = Sandbox(settings)
    config = box.runner_config(session, group, central.get_container_config(group.id))
    assert (config.session_id, config.agent_group_id) == (session.id, group.id)
    assert (config.provider, config.model, config.tz) == ("anthropic", "claude-x", "Europe/Paris")
    assert (config.assistant_name, config.max_messages_per_prompt) == ("Helper Bot", 7)
    assert config.proxy_socket == "/run/nanoclaw/proxy.sock"
    assert config.script_path is None and config.mcp_servers == {}


def test_group_config_wins(
    settings: Settings, central: CentralStore, group: rows.AgentGroup
) -> None:
    central.update_container_config(
        group.id,
        provider="scripted",
        model="claude-y",
        assistant_name="Ada",
        max_messages_per_prompt=3,
        mcp_servers='{"files": {"command": "mcp-files", "args": ["--ro"]}}',
    )
    session = central.create_session(group.id, None)
    config = Sandbox(settings).runner_config(session, group, central.get_container_config(group.id))
    assert (config.provider, config.model, config.assistant_name) == ("scripted", "claude-y", "Ada")
    assert config.max_messages_per_prompt == 3
    assert config.script_path == "/session/agent/script.json"
    assert config.mcp_servers == {"files": McpServer("mcp-files", ["--ro"])}


def test_provider_names(settings: Settings, central: CentralStore, group: rows.AgentGroup) -> None:
    box = Sandbox(settings)
    config = central.get_container_config(group.id)
    session = central.create_session(group.id, None)
    claude = msgspec.structs.replace(session, agent_provider="Claude")
    assert box.runner_config(claude, group, config).provider == "anthropic"
    other = msgspec.structs.replace(session, agent_provider="opencode")
    with pytest.raises(Refused, match="unknown agent provider"):
        box.runner_config(other, group, config)


def test_wake_never_raises_for_podman_trouble(
    make_settings: SettingsFactory, central: CentralStore, group: rows.AgentGroup, tmp_path: Path
) -> None:
    """No service on the socket: wake logs and returns False (the sweeper retries)."""
    settings = make_settings(podman_url=f"unix://{tmp_path / 'nobody.sock'}")
    session = central.create_session(group.id, None)
    box = Sandbox(settings)
    try:
        assert box.wake(session) is False
    finally:
        box.close()
    fresh = central.get_session(session.id)
    assert fresh is not None and fresh.container_status == "stopped"


def test_wake_lock_is_exclusive(layout: Layout) -> None:
    with wake_lock(layout, "sess-1"):
        # Another holder (a second descriptor, as another thread or process would open) waits;
        # with no time left it gives up at once instead of sleeping.
        failed: list[BaseException] = []

        def other() -> None:
            try:
                with wake_lock(layout, "sess-1", timeout_s=0):
                    pass
            except WakeBusy as exc:
                failed.append(exc)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert len(failed) == 1
        with wake_lock(layout, "sess-2", timeout_s=0):  # other sessions are independent
            pass
    with wake_lock(layout, "sess-1", timeout_s=0):  # released
        pass
    with pytest.raises(Refused), wake_lock(layout, "../escape"):
        pass


def test_write_atomic(tmp_path: Path) -> None:
    target = tmp_path / "runner.json"
    write_atomic(target, b'{"session_id": "s", "agent_group_id": "g"}')
    assert decode_runner_config(target.read_bytes()).session_id == "s"
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["runner.json"]
