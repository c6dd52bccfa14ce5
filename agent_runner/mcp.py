"""MCP servers from ``RunnerConfig.mcp_servers`` (the group's approved ``add_mcp_server``
requests): each is a child process speaking MCP over stdio (newline-delimited JSON-RPC 2.0).
Their tools are offered to the model as ``mcp__<server>__<tool>``.

Servers start at the first turn, not at start-up: npx-style commands can take seconds, and
pickup must not wait for them. A server that fails to start or answer is logged and left
out; the others still work. Every read has a deadline, so a hung server costs one tool call
(an error result), never the runner.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from loguru import logger

from agent_runner.hardening import tool_environment
from nanoclaw_common.runner_config import McpServer

log = logger.bind(component="mcp")

PROTOCOL_VERSION = "2025-06-18"
START_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 120.0
MAX_LINE_BYTES = 10_000_000
MAX_RESULT_CHARS = 100_000
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class McpError(Exception):
    pass


def tool_name(server: str, tool: str) -> str:
    """The name the model sees (the API allows ``[A-Za-z0-9_-]{1,64}``)."""
    return f"mcp__{_UNSAFE.sub('_', server)}__{_UNSAFE.sub('_', tool)}"[:64]


class McpClient:
    """One server process and its JSON-RPC conversation."""

    def __init__(self, name: str, server: McpServer, cwd: Path) -> None:
        self.name = name
        self.server = server
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self._next_id = 0
        self.tools: list[dict[str, Any]] = []

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        env = tool_environment()
        env.update(self.server.env)
        self.process = subprocess.Popen(
            [self.server.command, *self.server.args],
            cwd=self.cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.request(
            "initialize",
            {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "nanoclaw", "version": "1"},
            },
            timeout_s,
        )
        self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        cursor: str | None = None
        while True:
            params = {"cursor": cursor} if cursor else {}
            listed = self.request("tools/list", params, timeout_s)
            self.tools += [t for t in listed.get("tools", []) if isinstance(t, dict)]
            cursor = listed.get("nextCursor")
            if not cursor:
                break

    def _send(self, message: dict[str, Any]) -> None:
        assert self.process is not None and self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(message).encode() + b"\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise McpError(f"MCP server {self.name} is gone ({exc})") from None

    def _read_line(self, deadline: float) -> bytes:
        assert self.process is not None and self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise McpError(f"MCP server {self.name} did not answer in time")
            readable, _, _ = select.select([fd], [], [], left)
            if not readable:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise McpError(f"MCP server {self.name} exited")
            self._buffer += chunk
            if len(self._buffer) > MAX_LINE_BYTES:
                raise McpError(f"MCP server {self.name} sent an oversized message")
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def request(self, method: str, params: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        self._next_id += 1
        request_id = self._next_id
        self._send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        deadline = time.monotonic() + timeout_s
        while True:
            line = self._read_line(deadline).strip()
            if not line:
                continue
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue  # a server that prints junk on stdout: skip the line
            if not isinstance(message, dict):
                continue
            if "method" in message:
                if "id" in message:  # a request to us (sampling, roots): not supported
                    self._send(
                        {
                            "jsonrpc": "2.0",
                            "id": message["id"],
                            "error": {"code": -32601, "message": "not supported"},
                        }
                    )
                continue  # notifications (logging, progress) are ignored
            if message.get("id") != request_id:
                continue
            if "error" in message:
                error = message["error"]
                detail = error.get("message") if isinstance(error, dict) else error
                raise McpError(f"{self.name}: {method} failed: {detail}")
            result = message.get("result")
            return result if isinstance(result, dict) else {}

    def call(
        self, tool: str, arguments: Any, timeout_s: float = CALL_TIMEOUT_S
    ) -> tuple[str, bool]:
        result = self.request("tools/call", {"name": tool, "arguments": arguments}, timeout_s)
        parts: list[str] = []
        for item in result.get("content", []):
            if isinstance(item, dict) and item.get("type") == "text":
                parts.append(str(item.get("text", "")))
            elif isinstance(item, dict):
                parts.append(f"[{item.get('type', 'content')} omitted]")
        text = "\n".join(parts) or "(no output)"
        if len(text) > MAX_RESULT_CHARS:
            text = text[:MAX_RESULT_CHARS] + "\n[... output cut]"
        return text, bool(result.get("isError"))

    def close(self) -> None:
        if self.process is None:
            return
        if self.process.stdin is not None:
            # Closing flushes what a failed write left buffered: to a server that is gone,
            # that raises EPIPE again, and a dead server must not fail the caller.
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(2)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None


class McpTools:
    """The configured servers' tools, started on first use."""

    def __init__(self, servers: dict[str, McpServer], cwd: Path) -> None:
        self.servers = servers
        self.cwd = cwd
        self.clients: dict[str, McpClient] = {}
        self.routes: dict[str, tuple[McpClient, str]] = {}
        self.started = False

    def start(self) -> None:
        if self.started:
            return
        self.started = True
        for name, server in self.servers.items():
            client = McpClient(name, server, self.cwd)
            try:
                client.start()
            except (McpError, OSError) as exc:
                log.error("MCP server {} not available: {}", name, exc)
                client.close()
                continue
            self.clients[name] = client
            for tool in client.tools:
                if isinstance(tool.get("name"), str):
                    self.routes[tool_name(name, tool["name"])] = (client, tool["name"])
            log.info("MCP server {} started with {} tool(s)", name, len(client.tools))

    def definitions(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for public, (client, tool) in self.routes.items():
            spec = next(t for t in client.tools if t.get("name") == tool)
            schema = spec.get("inputSchema")
            found.append(
                {
                    "name": public,
                    "description": str(spec.get("description") or f"{tool} ({client.name})")[:4000],
                    "input_schema": schema
                    if isinstance(schema, dict)
                    else {"type": "object", "properties": {}},
                }
            )
        return found

    def handles(self, name: str) -> bool:
        return name in self.routes

    def pids(self) -> set[int]:
        """The server processes: they, and what they run, outlive tool calls."""
        return {
            c.process.pid
            for c in self.clients.values()
            if c.process is not None and c.process.poll() is None
        }

    def call(self, name: str, arguments: Any) -> tuple[str, bool]:
        client, tool = self.routes[name]
        try:
            return client.call(tool, arguments)
        except McpError as exc:
            return f"Error: {exc}", True

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.clients.clear()
        self.routes.clear()
