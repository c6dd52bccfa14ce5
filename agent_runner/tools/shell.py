"""The ``bash`` tool. The container is the sandbox: commands may do anything the container's
user can, but they run in their own process group with a timeout, and when it passes
everything the call started is killed: the group, and (``reaper.ToolProcesses``) whatever
left it with ``setsid``, so a runaway command cannot outlive its call. Commands get the
runner's environment without the run's private variables (``hardening.tool_environment``):
they have no use for the proxy token or the run id."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Any

import msgspec

from agent_runner.hardening import tool_environment
from agent_runner.reaper import ToolProcesses
from agent_runner.tools.base import Tool, ToolContext, ToolError, schema, string

DEFAULT_TIMEOUT_S = 120.0
MAX_TIMEOUT_S = 1800.0
MAX_OUTPUT_CHARS = 30_000


class BashInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    command: str
    timeout_s: float = DEFAULT_TIMEOUT_S


def timeout_of(args: BashInput) -> float:
    return min(max(args.timeout_s, 1.0), MAX_TIMEOUT_S)


def clip_output(text: str) -> str:
    """Keep the head and the tail: errors tend to be at the end."""
    if len(text) <= MAX_OUTPUT_CHARS:
        return text
    half = MAX_OUTPUT_CHARS // 2
    return f"{text[:half]}\n[... {len(text) - MAX_OUTPUT_CHARS} characters cut ...]\n{text[-half:]}"


def run_command(
    command: str,
    cwd: str,
    timeout_s: float,
    *,
    merge_stderr: bool = True,
    processes: ToolProcesses | None = None,
) -> tuple[str, int | None]:
    """(stdout, with stderr when ``merge_stderr``; exit code, or None on timeout).
    ``processes``: the call's process tracking, swept on a timeout so that a detached child
    holding the output pipe cannot keep the call waiting."""
    process = subprocess.Popen(
        ["/bin/bash", "-c", command],
        cwd=cwd,
        env=tool_environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        out, _ = process.communicate(timeout=timeout_s)
        code: int | None = process.returncode
    except subprocess.TimeoutExpired as expired:
        if processes is not None:
            # bash itself is the Popen's to reap: it is killed here, not reaped.
            processes.sweep(exclude=(process.pid,))
        _kill_group(process.pid)
        try:
            out, _ = process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            # A child escaped the group (setsid) and holds the pipe: give up on the rest.
            out = expired.output or b""
            if process.stdout is not None:
                process.stdout.close()
            process.kill()
            process.wait()
        code = None
    finally:
        # Children the command left in the background die with the call.
        _kill_group(process.pid)
    return out.decode("utf-8", errors="replace"), code


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def bash(ctx: ToolContext, args: BashInput) -> str:
    if not args.command.strip():
        raise ToolError("command is required")
    timeout_s = timeout_of(args)
    output, code = run_command(args.command, str(ctx.workspace), timeout_s, processes=ctx.processes)
    output = clip_output(output.rstrip("\n"))
    if code is None:
        raise ToolError(f"command timed out after {timeout_s:g}s\n{output}".rstrip())
    if code != 0:
        return f"{output}\n[exit code {code}]".lstrip("\n")
    return output or "(no output)"


TOOLS: list[Tool[Any]] = [
    Tool(
        "bash",
        "Run a bash command in /workspace and return its combined stdout and stderr. The "
        f"command is killed after timeout_s seconds (default {DEFAULT_TIMEOUT_S:g}, at most "
        f"{MAX_TIMEOUT_S:g}), with anything it started in the background.",
        schema(
            {
                "command": string("The command line."),
                "timeout_s": {"type": "number", "description": "Timeout in seconds."},
            },
            ["command"],
        ),
        BashInput,
        bash,
        declared_timeout_ms=lambda _ctx, args: int(timeout_of(args) * 1000),
    ),
]
