"""The runner's hardening against its own tools: the non-dumpable flag (checked in real child
processes, so this test process keeps its own) and the tools' environment. That a tool in the
container really cannot read the runner's environment is tests/sandbox/test_runner_hardening.py.
"""

from __future__ import annotations

import subprocess
import sys

from agent_runner.hardening import PRIVATE_ENV, tool_environment

# PR_GET_DUMPABLE (3) as the child sees itself; stdlib only, like hardening.py.
GET_DUMPABLE = "import ctypes; print(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))"


def child(code: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout.split()


def test_forbid_dumps_clears_the_dumpable_flag() -> None:
    assert child(GET_DUMPABLE) == ["1"]  # the default: same-uid processes may read /proc
    assert child(
        f"from agent_runner.hardening import forbid_dumps; print(forbid_dumps()); {GET_DUMPABLE}"
    ) == ["True", "0"]


def test_an_exec_sets_the_flag_again() -> None:
    # Why every start calls forbid_dumps(), the runner's re-exec included.
    code = (
        "import os, sys; from agent_runner.hardening import forbid_dumps; forbid_dumps(); "
        f"os.execv(sys.executable, [sys.executable, '-c', {GET_DUMPABLE!r}])"
    )
    assert child(code) == ["1"]


def test_tool_environment_leaves_the_runs_variables_out() -> None:
    assert PRIVATE_ENV == ("NANOCLAW_PROXY_TOKEN", "NANOCLAW_RUN_ID", "NANOCLAW_REEXEC")
    environ = {
        "PATH": "/usr/bin",
        "NANOCLAW_PROXY_TOKEN": "tok",
        "NANOCLAW_RUN_ID": "run-1",
        "NANOCLAW_REEXEC": "/session/agent/heartbeat",
        "NANOCLAW_LOG_LEVEL": "INFO",
    }
    assert tool_environment(environ) == {"PATH": "/usr/bin", "NANOCLAW_LOG_LEVEL": "INFO"}
