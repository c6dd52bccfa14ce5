"""An idle runner sheds the model SDK by re-executing itself (agent_runner/shed.py), as a host
process: the real SDK talks to the fake Messages API through the real credential proxy, the
runner goes idle, re-execs (same pid, lower RSS), and answers the next message with the
conversation intact, as the same run."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from nanoclaw_common import messages
from nanoclaw_common.runner_config import McpServer
from nanoclaw_common.store import NewInbound
from tests.fakes.anthropic_api import FakeAnthropic, text
from tests.integration.agents.harness import (
    AgentSession,
    Proxy,
    ack_status,
    send_chat,
    start_runner,
    texts,
    write_config,
)
from tests.waiting import wait_until

MODEL = "claude-sonnet-5"
SHED = "shedding the model SDK after"
RESUMED = "agent runner resumed after shedding the model SDK"


def container_state(agent: AgentSession) -> Any:
    reader = agent.outbound()
    try:
        return reader.container_state()
    finally:
        reader.close()


def test_an_idle_runner_sheds_the_sdk_and_goes_on(
    proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession
) -> None:
    write_config(agent, proxy.socket, model=MODEL, shed_after_s=1.0)
    seen: dict[str, Any] = {}

    def second_answer(body: dict[str, Any]) -> dict[str, Any]:
        seen["history"] = json.dumps(body["messages"])
        return text('<message to="main">You are Ada.</message>')

    fake_api.reply(text('<message to="main">Nice to meet you, Ada.</message>'), second_answer)
    runner = start_runner(agent)
    pid = runner.process.pid
    try:
        first = send_chat(agent, "my name is Ada")
        wait_until(
            lambda: ack_status(agent, first) == "completed",
            timeout_s=20.0,
            what="the first ack",
        )
        with_sdk_kb = runner.rss_kb()
        started = container_state(agent)
        # An on_wake note arrives while the runner is up: it is for the next container
        # start, and the re-exec'd runner must not take it for one.
        store = agent.inbound()
        store.insert_message(
            NewInbound(
                id="note-on-wake",
                content=messages.ChatContent(text="packages installed", sender_id="system"),
                timestamp_ms=int(time.time() * 1000),
                on_wake=True,
            )
        )
        store.close()

        runner.wait_for_log(SHED)
        runner.wait_for_log(RESUMED)
        assert runner.process.pid == pid and runner.process.poll() is None  # same process
        shed_kb = runner.rss_kb()
        assert "shedding the model SDK after 1 s idle" in runner.log()
        # The SDK's ~60 MB are gone (measured: ~93 MB with it, ~30 MB without).
        assert with_sdk_kb - shed_kb > 40 * 1024, (with_sdk_kb, shed_kb)
        assert shed_kb < 80 * 1024
        # The same run goes on: its start time (the sweeper's spawn grace) is kept.
        resumed = container_state(agent)
        assert (resumed.run_id, resumed.started_at_ms) == (agent.run_id, started.started_at_ms)
        assert resumed.run_id == started.run_id and resumed.current_tool is None
        assert time.time() - agent.paths.heartbeat.stat().st_mtime < 2
        # The token crossed the exec in an inherited socket: the new program's environment
        # (what /proc/<pid>/environ shows for its whole life) names the socket, not the token.
        try:
            exec_env = Path(f"/proc/{pid}/environ").read_bytes()
        except PermissionError:
            assert os.geteuid() != 0  # not root: closed to us too (the runner is non-dumpable)
        else:
            assert b"NANOCLAW_TOKEN_FD=" in exec_env and agent.token.encode() not in exec_env

        second = send_chat(agent, "what is my name?")
        wait_until(
            lambda: ack_status(agent, second) == "completed",
            timeout_s=20.0,
            what="the second ack",
        )
        assert texts(agent) == ["Nice to meet you, Ada.", "You are Ada."]
        # The conversation came through the exec, and the proxy still knows the token.
        assert "my name is Ada" in seen["history"] and "Nice to meet you, Ada." in seen["history"]
        assert "what is my name?" in seen["history"]
        assert "packages installed" not in seen["history"]
        assert ack_status(agent, "note-on-wake") is None
        requests = fake_api.message_requests()
        assert len(requests) == 2 and {r.headers["x-api-key"] for r in requests} == {
            fake_api.api_key
        }
        # With the SDK loaded again, the runner sheds again once idle.
        runner.wait_for_log(RESUMED, count=2)
    finally:
        assert runner.terminate() == 0, runner.log()
    log = runner.log()
    assert agent.token not in log
    assert log.count("agent runner starting") == 1  # one start, the rest were re-execs


def test_the_heartbeat_beats_across_the_exec(
    proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession
) -> None:
    # A long interval: the only beats are at start-up and the two around the exec.
    write_config(agent, proxy.socket, model=MODEL, shed_after_s=0.5, heartbeat_interval_s=60)
    fake_api.reply(text('<message to="main">hi</message>'))
    beats: list[int] = []
    done = threading.Event()

    def watch() -> None:
        # Every distinct mtime of the heartbeat file, sampled every millisecond.
        while not done.wait(0.001):
            try:
                mtime = agent.paths.heartbeat.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            if not beats or mtime != beats[-1]:
                beats.append(mtime)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    runner = start_runner(agent)
    try:
        message_id = send_chat(agent, "hello")
        wait_until(
            lambda: ack_status(agent, message_id) == "completed",
            timeout_s=20.0,
            what="the ack",
        )
        idle_from_ns = time.time_ns()
        runner.wait_for_log(RESUMED)
    finally:
        done.set()
        watcher.join(5)
        assert runner.terminate() == 0, runner.log()
    around_exec = [b for b in beats if b > idle_from_ns]
    # The old process's last beat (after half a second of idling), then the new process's
    # first, before its imports: the host never sees the beat pause.
    assert len(around_exec) >= 2, beats
    last_of_old, first_of_new = around_exec[0], around_exec[1]
    assert last_of_old - idle_from_ns >= 400_000_000
    gap_ms = (first_of_new - last_of_old) / 1e6
    assert gap_ms < 500, f"heartbeat gap across the exec: {gap_ms:.1f} ms"


def test_a_message_sent_during_the_exec_is_answered(
    proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession
) -> None:
    """The new process's first poll finds what arrived while the old one wound down (no
    wake-up is lost across the exec)."""
    write_config(agent, proxy.socket, model=MODEL, shed_after_s=0.5)
    fake_api.reply(
        text('<message to="main">one</message>'), text('<message to="main">two</message>')
    )
    runner = start_runner(agent)
    try:
        first = send_chat(agent, "first")
        wait_until(
            lambda: ack_status(agent, first) == "completed",
            timeout_s=20.0,
            what="the first ack",
        )
        runner.wait_for_log(SHED)
        second = send_chat(agent, "second")  # the old process is tearing down or exec'ing
        wait_until(
            lambda: ack_status(agent, second) == "completed",
            timeout_s=20.0,
            what="the second ack",
        )
        assert texts(agent) == ["one", "two"]
        assert runner.log().count(RESUMED) >= 1
    finally:
        assert runner.terminate() == 0, runner.log()


# A minimal MCP server (stdio, newline-delimited JSON-RPC) that records its pid.
MCP_SERVER = r"""
import json, os, sys
with open(sys.argv[1], "a") as pids:
    pids.write(f"{os.getpid()}\n")
for line in sys.stdin:
    message = json.loads(line)
    if message.get("id") is None:
        continue
    result = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}}}
    if message["method"] == "tools/list":
        result = {"tools": []}
    print(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}), flush=True)
"""


def test_mcp_servers_are_closed_before_the_exec(
    proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession, tmp_path: Path
) -> None:
    script, pids = tmp_path / "server.py", tmp_path / "pids"
    script.write_text(MCP_SERVER)
    server = McpServer(command=sys.executable, args=[str(script), str(pids)])
    write_config(agent, proxy.socket, model=MODEL, shed_after_s=0.5, mcp_servers={"demo": server})
    fake_api.reply(
        text('<message to="main">one</message>'), text('<message to="main">two</message>')
    )
    runner = start_runner(agent)
    try:
        first = send_chat(agent, "first")
        wait_until(
            lambda: ack_status(agent, first) == "completed",
            timeout_s=20.0,
            what="the first ack",
        )
        (old,) = map(int, pids.read_text().split())
        assert Path(f"/proc/{old}").exists()  # started by the first turn, still serving
        runner.wait_for_log(RESUMED)
        # Closed and reaped before the exec: not even a zombie is left behind.
        assert not Path(f"/proc/{old}").exists()
        second = send_chat(agent, "second")
        wait_until(
            lambda: ack_status(agent, second) == "completed",
            timeout_s=20.0,
            what="the second ack",
        )
        assert texts(agent) == ["one", "two"]
        assert len(pids.read_text().split()) == 2  # the new process started its own
    finally:
        assert runner.terminate() == 0, runner.log()
