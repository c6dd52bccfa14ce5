"""The test-only crash points (``nanoclaw_common.faults``): inert without the variable; with
it, an armed point SIGKILLs the process that reaches it, once, after logging a marker."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from nanoclaw_common.faults import FAULTS_ENV, FIRED_LOG, CrashPoints

REACH = """
import os, sys
from nanoclaw_common.faults import CrashPoints
points = CrashPoints.from_environ(os.environ, "demo")
points.crash("demo.somewhere", session="sess-1", seq=7)
print("survived", flush=True)
"""


def reach(folder: Path | None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin"}
    if folder is not None:
        env[FAULTS_ENV] = str(folder)
    return subprocess.run(
        [sys.executable, "-c", REACH], env=env, capture_output=True, text=True, check=False
    )


def test_without_the_variable_nothing_is_armed(tmp_path: Path) -> None:
    (tmp_path / "demo.somewhere").touch()  # an armed file nobody is told about
    done = reach(None)
    assert done.returncode == 0 and "survived" in done.stdout
    points = CrashPoints()
    assert not points.enabled and not points.armed("demo.somewhere")
    points.crash("demo.somewhere")  # returns


def test_an_armed_point_kills_once_and_says_so(tmp_path: Path) -> None:
    assert reach(tmp_path).returncode == 0  # not armed: nothing happens
    (tmp_path / "demo.somewhere").touch()
    assert CrashPoints(tmp_path, "demo").armed("demo.somewhere")
    killed = reach(tmp_path)
    assert killed.returncode == -signal.SIGKILL
    assert "survived" not in killed.stdout
    [record] = [json.loads(line) for line in (tmp_path / FIRED_LOG).read_text().splitlines()]
    assert record["point"] == "demo.somewhere"
    assert record["program"] == "demo"
    assert (record["session"], record["seq"]) == ("sess-1", 7)
    assert record["pid"] > 0 and record["at_ms"] > 0
    # Taken by the process that fired: the restarted process runs on.
    assert not (tmp_path / "demo.somewhere").exists()
    assert reach(tmp_path).returncode == 0


def test_an_armed_point_waits_for_matching_facts(tmp_path: Path) -> None:
    armed = tmp_path / "demo.somewhere"
    armed.write_text(json.dumps({"session": "sess-1", "seq": 8}))
    assert reach(tmp_path).returncode == 0  # seq 7: not this one; still armed
    assert armed.exists()
    armed.write_text(json.dumps({"session": "sess-1", "seq": 7}))
    assert reach(tmp_path).returncode == -signal.SIGKILL
    assert not armed.exists()
