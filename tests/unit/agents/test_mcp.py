"""MCP servers over stdio: a small real server process (written below) and the runner using
its tools."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent_runner.mcp import McpClient, McpError, McpTools, tool_name
from nanoclaw_common.runner_config import McpServer

from .conftest import Harness, Session, call, say

SERVER = r"""
import json, sys

def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()

print("a banner some servers print")
sys.stdout.flush()
for line in sys.stdin:
    message = json.loads(line)
    method, ident = message.get("method"), message.get("id")
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": ident, "result": {"protocolVersion": "2025-06-18",
              "capabilities": {"tools": {}}, "serverInfo": {"name": "demo", "version": "1"}}})
    elif method == "tools/list":
        if not message["params"].get("cursor"):
            schema = {"type": "object", "properties": {"text": {"type": "string"}}}
            tools = [{"name": "echo", "description": "Echo text", "inputSchema": schema}]
            send({"jsonrpc": "2.0", "id": ident, "result": {"tools": tools, "nextCursor": "p2"}})
        else:
            tools = [{"name": "fail"}, {"name": "hang"}, {"name": "env"}]
            send({"jsonrpc": "2.0", "id": ident, "result": {"tools": tools}})
    elif method == "tools/call":
        name, args = message["params"]["name"], message["params"]["arguments"]
        send({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info"}})
        send({"jsonrpc": "2.0", "id": "srv-1", "method": "roots/list"})
        if name == "echo":
            result = {"content": [{"type": "text", "text": "echo: " + args.get("text", "")}]}
        elif name == "env":
            import os
            seen = os.environ.get("NANOCLAW_TOKEN_FD", "-") + " "
            seen += os.environ.get("NANOCLAW_RUN_ID", "-") + " "
            seen += os.environ.get("DEMO_SETTING", "-")
            result = {"content": [{"type": "text", "text": seen}]}
        elif name == "hang":
            continue
        else:
            result = {"content": [{"type": "text", "text": "it broke"}], "isError": True}
        send({"jsonrpc": "2.0", "id": ident, "result": result})
    elif ident is not None and method is None:
        pass  # our answer to a request we made
"""


@pytest.fixture
def server(tmp_path: Path) -> McpServer:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    return McpServer(command=sys.executable, args=[str(script)], env={"DEMO_SETTING": "on"})


def test_client_lists_and_calls_tools(
    server: McpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NANOCLAW_TOKEN_FD", "7")
    monkeypatch.setenv("NANOCLAW_RUN_ID", "run-9")
    client = McpClient("demo", server, tmp_path)
    try:
        client.start(timeout_s=20)
        assert [t["name"] for t in client.tools] == ["echo", "fail", "hang", "env"]
        assert client.call("echo", {"text": "hi"}) == ("echo: hi", False)
        assert client.call("fail", {}) == ("it broke", True)
        assert client.call("env", {}) == ("- - on", False)  # no token socket or run id; its own env
        with pytest.raises(McpError, match="did not answer in time"):
            client.call("hang", {}, timeout_s=0.2)
    finally:
        client.close()
    assert client.process is None


def test_tool_names_fit_the_api() -> None:
    assert tool_name("my server", "get.weather") == "mcp__my_server__get_weather"
    assert len(tool_name("s" * 50, "t" * 50)) == 64


def test_a_broken_server_is_left_out(tmp_path: Path, server: McpServer) -> None:
    tools = McpTools(
        {"gone": McpServer(command=str(tmp_path / "missing")), "demo": server}, tmp_path
    )
    try:
        tools.start()
        assert list(tools.clients) == ["demo"]
        assert tools.handles("mcp__demo__echo") and not tools.handles("mcp__gone__x")
    finally:
        tools.close()


def test_the_runner_offers_and_calls_mcp_tools(
    session: Session, make_runner: Callable[..., Harness], server: McpServer
) -> None:
    harness = make_runner(
        call("mcp__demo__echo", text="over stdio"),
        say('<message to="main">done</message>'),
        mcp_servers={"demo": server},
    )
    session.chat("use the demo tool")
    harness.step()
    first, second = harness.provider.requests
    offered = {t["name"]: t for t in first.tools}
    assert offered["mcp__demo__echo"]["input_schema"]["properties"] == {"text": {"type": "string"}}
    assert first.tools[-1]["name"] == "web_fetch"  # server tools stay last, with the breakpoint
    result = second.messages[-1]["content"][0]
    assert result["type"] == "tool_result" and result["content"] == "echo: over stdio"
    assert "is_error" not in result
    assert json.dumps(session.texts()) == '["done"]'


def test_servers_that_exit_at_once_are_left_out(tmp_path: Path) -> None:
    """An approved server that exits at once (a typo, a missing runtime) is left out: the
    write to its stdin may fail (EPIPE), and so may the flush when its pipe is closed, which
    used to escape ``McpTools.start`` and fail every batch of the group (found by the chaos
    suite, approving ``command="true"``)."""
    servers = {f"quits{n}": McpServer(command="true") for n in range(20)}
    tools = McpTools(servers, tmp_path)
    try:
        tools.start()
        assert tools.clients == {}
    finally:
        tools.close()


def test_closing_a_client_after_a_broken_pipe(tmp_path: Path) -> None:
    client = McpClient("quits", McpServer(command="true"), tmp_path)
    client.process = subprocess.Popen(["true"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    client.process.wait()
    with pytest.raises(McpError, match="is gone"):
        client.request("initialize", {}, timeout_s=1)
    client.close()
    assert client.process is None
