"""Shedding the model SDK: the decision (a pure function of what the runner observes and the
monotonic clock, passed in), the runner's use of it, and what a resumed runner does. The
exec itself is exercised for real in tests/integration/agents/test_runner_shed.py."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from agent_runner.hardening import TOKEN_FD_ENV
from agent_runner.shed import (
    REEXEC_ENV,
    Activity,
    reexec_argv,
    reexec_environment,
    sdk_loaded,
    seconds_until_shed,
    should_shed,
    touch_heartbeat,
)

from .conftest import NOW, Harness, Session, say

Make = Callable[..., Harness]
IDLE = Activity(
    sdk_loaded=True, due_rows=0, claimed=0, in_turn=False, tool=None, idle_since_s=1000.0
)


def activity(**changes: Any) -> Activity:
    return dataclasses.replace(IDLE, **changes)


def test_shed_after_the_idle_time_only() -> None:
    assert not should_shed(IDLE, shed_after_s=120, now_s=1119.9)
    assert should_shed(IDLE, shed_after_s=120, now_s=1120.0)
    assert should_shed(IDLE, shed_after_s=120, now_s=5000.0)
    assert seconds_until_shed(IDLE, shed_after_s=120, now_s=1100.0) == 20.0
    assert seconds_until_shed(IDLE, shed_after_s=120, now_s=1200.0) == 0.0


@pytest.mark.parametrize(
    "changes",
    [
        {"sdk_loaded": False},  # nothing to shed (scripted model, or no model call yet)
        {"due_rows": 1},
        {"claimed": 2},
        {"in_turn": True},
        {"tool": "bash"},
        {"tool": "ask_user_question"},  # a question waiting for its answer
    ],
)
def test_never_shed_with_nothing_to_shed_or_something_in_hand(changes: dict[str, Any]) -> None:
    state = activity(**changes)
    assert not should_shed(state, shed_after_s=120, now_s=10_000.0)
    assert seconds_until_shed(state, shed_after_s=120, now_s=10_000.0) is None


def test_zero_disables_shedding() -> None:
    for off in (0, -1):  # a negative value (refused by the host's Settings) disables too
        assert not should_shed(IDLE, shed_after_s=off, now_s=1e9)
        assert seconds_until_shed(IDLE, shed_after_s=off, now_s=1e9) is None


def test_sdk_loaded_looks_at_the_imported_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "anthropic", raising=False)
    assert sdk_loaded() is False
    monkeypatch.setitem(sys.modules, "anthropic", sys)  # any module object will do
    assert sdk_loaded() is True


def test_the_reexec_environment_carries_the_run_and_the_markers(tmp_path: Path) -> None:
    heartbeat = tmp_path / "agent" / "heartbeat"
    env = reexec_environment(
        {"PATH": "/usr/bin", "TZ": "UTC"},
        private={"NANOCLAW_RUN_ID": "run-1"},
        heartbeat=heartbeat,
        token_fd=7,
    )
    # The token itself is not there: only the number of the socket that holds it.
    assert env == {
        "PATH": "/usr/bin",
        "TZ": "UTC",
        "NANOCLAW_RUN_ID": "run-1",
        REEXEC_ENV: str(heartbeat),
        TOKEN_FD_ENV: "7",
    }
    no_token = reexec_environment({}, private={"NANOCLAW_RUN_ID": "run-1"}, heartbeat=heartbeat)
    assert TOKEN_FD_ENV not in no_token  # the scripted model has none to pass


def test_the_reexec_is_always_isolated() -> None:
    image_cmd = ["/opt/venv/bin/python", "-I", "-B", "-u", "-m", "agent_runner"]
    assert reexec_argv(image_cmd, isolated=True) == image_cmd
    # Started without -I (an older image's CMD, a host run): the new process gets it, so the
    # working folder, PYTHON* variables and the user site are off its import path.
    assert reexec_argv(
        ["/usr/bin/python3", "-m", "agent_runner", "--workspace", "/w"], isolated=False
    ) == [
        "/usr/bin/python3",
        "-I",
        "-m",
        "agent_runner",
        "--workspace",
        "/w",
    ]
    script = ["/opt/venv/bin/python", "/opt/venv/bin/nanoclaw-agent-runner"]
    assert reexec_argv(script, isolated=False) == [script[0], "-I", script[1]]


def test_touch_heartbeat_creates_and_refreshes_but_follows_no_symlink(tmp_path: Path) -> None:
    beat = tmp_path / "heartbeat"
    touch_heartbeat(beat)
    os.utime(beat, ns=(0, 0))
    touch_heartbeat(beat)
    assert beat.stat().st_mtime_ns > 0
    link = tmp_path / "link"
    link.symlink_to(beat)
    with pytest.raises(OSError):
        touch_heartbeat(link)


# -- the runner ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now_s = 500.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    handler = logger.add(lambda message: lines.append(str(message)), format="{message}")
    yield lines
    logger.remove(handler)


def test_the_runner_sheds_once_idle_for_shed_after_s(
    session: Session, make_runner: Make, log_lines: list[str]
) -> None:
    clock = Clock()
    harness = make_runner(
        say('<message to="main">hi</message>'),
        shed_after_s=30,
        runner_options={"monotonic": clock, "sdk_loaded": lambda: True},
    )
    runner = harness.runner
    session.chat("hello")
    clock.now_s = 600.0  # the batch ends at 600: idle from then on
    assert harness.step() is True
    assert harness.step() is False
    assert not runner.shed_due(now_s=629.9)
    # The idle wait ends when it is time to shed (not after the 2 s safety wake).
    assert runner.idle_timeout_s(now_s=629.5) == pytest.approx(0.5)
    assert runner.shed_due(now_s=630.0)
    assert log_lines[-1].strip() == "shedding the model SDK after 30 s idle"


def test_a_recorded_tool_or_new_work_keeps_the_sdk(session: Session, make_runner: Make) -> None:
    clock = Clock()
    harness = make_runner(
        say('<message to="main">hi</message>'),
        shed_after_s=30,
        runner_options={"monotonic": clock, "sdk_loaded": lambda: True},
    )
    runner = harness.runner
    # A question waiting for its answer (the tool in flight, as container_state says).
    session.outbound.set_tool("ask_user_question", declared_timeout_ms=300_000)
    assert not runner.shed_due(now_s=10_000.0)
    assert runner.idle_timeout_s(now_s=10_000.0) == 2.0
    session.outbound.set_tool(None)
    assert runner.shed_due(now_s=10_000.0)
    # Context-only rows wait for a trigger: they are not work, the SDK may go.
    session.chat("chatter", trigger=False)
    assert harness.step() is False
    assert runner.shed_due(now_s=10_000.0)


def test_no_sdk_or_no_shed_after_s_means_no_shedding(session: Session, make_runner: Make) -> None:
    clock = Clock()
    no_sdk = make_runner(
        shed_after_s=30, runner_options={"monotonic": clock, "sdk_loaded": lambda: False}
    )
    assert not no_sdk.runner.shed_due(now_s=1e6)
    assert no_sdk.runner.idle_timeout_s(now_s=1e6) == 2.0
    disabled = make_runner(
        shed_after_s=0, runner_options={"monotonic": clock, "sdk_loaded": lambda: True}
    )
    assert not disabled.runner.shed_due(now_s=1e6)
    assert disabled.runner.idle_timeout_s(now_s=1e6) == 2.0


def test_a_resumed_runner_continues_its_run(session: Session, make_runner: Make) -> None:
    # The fixture's run-1 started at NOW; the first process claimed a row and counted turns.
    session.outbound.start_run("run-1", now=NOW)
    session.outbound.claim(["kept:ag-1"], "run-1", now=NOW + 1)
    session.outbound.count_turn(now=NOW + 2)
    note = session.chat("packages installed", on_wake=True)
    harness = make_runner(
        say('<message to="main">ok</message>'),
        runner_options={"resumed": True},
        setup_now=NOW + 60_000,
    )
    state = session.outbound.container_state()
    assert state is not None
    assert (state.run_id, state.started_at_ms, state.turns) == ("run-1", NOW, 1)
    assert session.outbound.claimed_ids("run-1") == {"kept:ag-1"}
    # Its first poll is not the run's first poll: on_wake rows wait for a new container.
    assert harness.step() is False
    assert session.ack(note) is None


def test_a_resumed_runner_whose_run_was_replaced_starts_afresh(
    session: Session, make_runner: Make
) -> None:
    session.outbound.start_run("run-0", now=NOW)  # container_state names another run
    make_runner(runner_options={"resumed": True}, setup_now=NOW + 5)
    state = session.outbound.container_state()
    assert state is not None and (state.run_id, state.started_at_ms) == ("run-1", NOW + 5)
