"""Tool processes end with their call, in a real runner process (a child subreaper): a
command that detaches with ``setsid`` is killed when its call ends, whether the call
finished or timed out, and the runner reaps it."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from tests.fakes.anthropic_api import FakeAnthropic, text, tool_use
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

MODEL = "claude-sonnet-4-6"


def alive(pid: int) -> bool:
    """True while the process exists, as a zombie too (an unreaped orphan counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_detached_children_die_with_their_tool_call(
    proxy: Proxy, fake_api: FakeAnthropic, agent: AgentSession
) -> None:
    write_config(agent, proxy.socket, model=MODEL)
    # A daemon left behind by a call that ends normally (its own session, no pipe held) ...
    daemon = (
        "setsid sh -c 'echo $$ > daemon.pid; exec sleep 300' >/dev/null 2>&1 </dev/null & "
        "while [ ! -s daemon.pid ]; do sleep 0.01; done; echo started"
    )
    # ... and one that holds the output pipe of a call that times out.
    holder = "setsid sh -c 'echo $$ > holder.pid; exec sleep 300' & sleep 60"
    fake_api.reply(
        tool_use("bash", {"command": daemon}, "toolu_1"),
        tool_use("bash", {"command": holder, "timeout_s": 1}, "toolu_2"),
        text('<message to="main">done</message>'),
    )
    runner = start_runner(agent)
    pids: list[int] = []
    try:
        message_id = send_chat(agent, "start some daemons")
        wait_until(
            lambda: ack_status(agent, message_id) == "completed",
            timeout_s=20.0,
            what="the ack",
        )
        assert texts(agent) == ["done"]
        pids = [int((agent.workspace / f"{n}.pid").read_text()) for n in ("daemon", "holder")]
        assert [alive(pid) for pid in pids] == [False, False]
        _first, second, third = fake_api.wait_for_requests(3)
        result = second.body["messages"][-1]["content"][0]
        assert result["tool_use_id"] == "toolu_1" and result["content"] == "started"
        result = third.body["messages"][-1]["content"][0]
        assert result["tool_use_id"] == "toolu_2" and result["is_error"] is True
        assert result["content"].startswith("Error: command timed out after 1s")
        # The pipe the detached child held did not keep the timed-out call waiting (it used
        # to wait 5 s more for the pipe to close, then give up on it).
        assert third.at - second.at < 3.5
        assert "killed 1 process(es) it left running" in runner.log()
    finally:
        for pid in pids or _pids_from(agent.workspace):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert runner.terminate() == 0, runner.log()


def _pids_from(workspace: Path) -> list[int]:
    found = []
    for name in ("daemon.pid", "holder.pid"):
        with contextlib.suppress(OSError, ValueError):
            found.append(int((workspace / name).read_text()))
    return found
