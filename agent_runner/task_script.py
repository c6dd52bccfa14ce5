"""Pre-task scripts (upstream-container.md §8.3): a scheduled task may carry a bash script
that decides whether the agent needs to wake. Its last stdout line must be JSON
``{"wakeAgent": true|false, "data": ...}``; ``false``, a failure, a timeout or malformed
output skips this run (the row is acked, so a recurring series goes on). ``data`` is shown to
the agent as "Script output"."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loguru import logger

from agent_runner.reaper import ToolProcesses
from agent_runner.tools.shell import run_command

log = logger.bind(component="task-script")

SCRIPT_TIMEOUT_S = 30.0


class ScriptResult:
    def __init__(self, wake: bool, data: Any = None) -> None:
        self.wake = wake
        self.data = data


def parse_script_output(stdout: str) -> ScriptResult:
    lines = stdout.strip().splitlines()
    if not lines or not lines[-1].strip():
        return ScriptResult(False)
    try:
        decision = json.loads(lines[-1])
    except json.JSONDecodeError:
        return ScriptResult(False)
    if not isinstance(decision, dict) or not isinstance(decision.get("wakeAgent"), bool):
        return ScriptResult(False)
    return ScriptResult(decision["wakeAgent"], decision.get("data"))


def run_task_script(
    script: str, cwd: Path, task_id: str, processes: ToolProcesses | None = None
) -> ScriptResult:
    """Run the script; with ``processes``, whatever it started is killed when it ends."""
    if processes is not None:
        processes.begin()
    try:
        stdout, code = run_command(
            script, str(cwd), SCRIPT_TIMEOUT_S, merge_stderr=False, processes=processes
        )
    finally:
        if processes is not None:
            processes.sweep()
    if code is None:
        log.warning("task {} script timed out after {}s; skipping", task_id, SCRIPT_TIMEOUT_S)
        return ScriptResult(False)
    if code != 0:
        log.warning("task {} script exited {}; skipping", task_id, code)
        return ScriptResult(False)
    return parse_script_output(stdout)
