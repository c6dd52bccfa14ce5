"""What the host tells a container run. ``Sandbox.wake`` writes it to
``<session>/runner.json`` (read-only in the container, at ``/session/runner.json``) before
starting the container; the agent runner reads it at start-up. The run id arrives as the
environment variable ``NANOCLAW_RUN_ID`` because it changes per start while the file may be
rewritten by a later wake.

The per-run proxy token does **not** travel in the environment: a container's environment is
also PID 1's (``/proc/1/environ``), which the agent user can read. ``write_proxy_token`` puts
it in ``agent/.proxy-token`` (mode 0600, the container user's) before the container starts;
the runner reads it and unlinks it first thing (``agent_runner.hardening``).

The proxy token is not a credential for anything outside: it only tells the proxy which
session (and so which agent group's budget) a request belongs to. The real API key never
leaves the proxy.

Forward compatibility: the structs here ignore fields they do not know. runner.json is written
by the host (trusted), and a group image built before a host upgrade runs an older runner: a
new field must not stop it. Known fields are still checked strictly (types, no coercion).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path
from typing import Final, Literal

import msgspec

from nanoclaw_common.hostfs import Dir
from nanoclaw_common.messages import decode_as, encode

PROXY_TOKEN_FILE: Final = ".proxy-token"  # in the session's agent/ folder


class McpServer(msgspec.Struct, frozen=True):
    command: str
    args: list[str] = []
    env: dict[str, str] = {}


class RunnerConfig(msgspec.Struct, frozen=True, kw_only=True):
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
    # Compact the conversation once the next call would send about this many tokens (or
    # earlier, near a smaller model's window). Every call pays for its whole input, so a 1M
    # window filled to ~825k makes each call cost ~5x one at upstream's 165k.
    compact_at_tokens: int = 165_000
    proxy_socket: str = "/run/nanoclaw/proxy.sock"
    # How long a model call waits out an absent proxy (a restart) or a busy API before the
    # run gives its claims back to the host's retry path (Settings.proxy_wait_s).
    proxy_wait_s: float = 300.0
    mcp_servers: dict[str, McpServer] = {}
    # For the scripted provider: a JSON file (path inside the container) with the turns to
    # play back. Tests and benchmarks write it into the session's agent/ folder.
    script_path: str | None = None


def encode_runner_config(config: RunnerConfig) -> bytes:
    return encode(config)


def decode_runner_config(data: bytes | str) -> RunnerConfig:
    return decode_as(data, RunnerConfig, "runner config")


def write_proxy_token(agent_dir: Path, token: str, *, owner: tuple[int, int] | None = None) -> Path:
    """Put ``token`` at ``agent_dir/.proxy-token`` for the next runner to take: mode 0600,
    owned by ``owner`` (uid, gid) when given (rootful Podman: the container user), written to
    a fresh temp name and renamed over the old entry, so a reader never sees half a token.
    Returns the path.

    ``agent_dir`` is writable by the container, so an earlier run may have planted anything
    there: the folder is opened without following a symlink, the temp file is created with
    ``O_EXCL | O_NOFOLLOW`` relative to it (``hostfs.Dir.create_file``: nothing that exists
    under its name is ever opened), and
    ``rename`` replaces a planted link at the final name instead of writing through it. A
    planted directory there is removed (it would make the rename fail on every wake)."""
    with Dir.trusted(agent_dir) as agent:
        info = agent.lstat(PROXY_TOKEN_FILE)
        if info is not None and stat.S_ISDIR(info.st_mode):
            agent.remove(PROXY_TOKEN_FILE)  # fd-based: never follows a link out of it
        temp = f".{PROXY_TOKEN_FILE}.{secrets.token_hex(8)}.tmp"
        agent.create_file(temp, token.encode(), mode=0o600, owner=owner)
        try:
            os.rename(temp, PROXY_TOKEN_FILE, src_dir_fd=agent.fd, dst_dir_fd=agent.fd)
        except BaseException:
            os.unlink(temp, dir_fd=agent.fd)
            raise
        agent.sync()
    return agent_dir / PROXY_TOKEN_FILE


def discard_proxy_token(agent_dir: Path) -> None:
    """Remove a token file no runner took (the container did not start). ``unlink`` never
    follows a link, so a planted one is just removed."""
    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
        os.unlink(agent_dir / PROXY_TOKEN_FILE)
