"""What the host tells a container run. ``Sandbox.wake`` writes it to
``<session>/runner.json`` (read-only in the container, at ``/session/runner.json``) before
starting the container; the agent runner reads it at start-up. The run id and the proxy token
also arrive as environment variables (``NANOCLAW_RUN_ID``, ``NANOCLAW_PROXY_TOKEN``) because
they change per start while the file may be rewritten by a later wake.

The proxy token is not a credential for anything outside: it only tells the proxy which
session (and so which agent group's budget) a request belongs to. The real API key never
leaves the proxy.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from nanoclaw_common.messages import decode_as, encode


class McpServer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    command: str
    args: list[str] = []
    env: dict[str, str] = {}


class RunnerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    session_id: str
    agent_group_id: str
    assistant_name: str = ""
    provider: Literal["anthropic", "scripted"] = "anthropic"
    model: str = "claude-sonnet-5"
    max_messages_per_prompt: int = 10
    tz: str = "UTC"
    heartbeat_interval_s: float = 2.0
    # The runner ends a turn (and tells the user) after this many model calls: a runaway loop.
    max_turns_per_batch: int = 50
    # After this long with nothing to do (no work, no turn, no tool, no question waiting) a
    # runner that has loaded the model SDK re-execs itself to drop it (~60 MB). 0 disables
    # (so does a negative value; the host's Settings refuse one).
    shed_after_s: float = 120.0
    proxy_socket: str = "/run/nanoclaw/proxy.sock"
    mcp_servers: dict[str, McpServer] = {}
    # For the scripted provider: a JSON file (path inside the container) with the turns to
    # play back. Tests and benchmarks write it into the session's agent/ folder.
    script_path: str | None = None


def encode_runner_config(config: RunnerConfig) -> bytes:
    return encode(config)


def decode_runner_config(data: bytes | str) -> RunnerConfig:
    return decode_as(data, RunnerConfig, "runner config")
