"""``nanoclaw_common.program.run_program``, the skeleton of the five supervised programs:
a bad setting exits 2 with a log record, an uncaught error is logged as "<name> died"
(masked) and exits 1, a second instance on the data folder is refused naming the holder.

Each case runs in a subprocess (``run_program`` configures the process's logging), first
with a small ``serve`` of the test's, then with the five real console modules."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nanoclaw_common.paths import Layout
from nanoclaw_common.program import (
    EXIT_CONFIG,
    EXIT_DIED,
    EXIT_LOCKED,
    AlreadyRunning,
    lock_path,
    take_lock,
)
from tests.unit.test_logs import API_KEY, RECORD_START, assert_one_line_records, program_env

PROGRAMS = ["router", "delivery", "sweeper", "proxy", "watchdog"]


def run_demo(serve_body: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``run_program("demo", serve)`` with ``serve(settings, layout)`` = ``serve_body``."""
    script = (
        "import os, subprocess, sys\n"
        "from nanoclaw_common.program import run_program\n"
        "def serve(settings, layout):\n"
        + textwrap.indent(textwrap.dedent(serve_body), "    ")
        + "\nsys.exit(run_program('demo', serve))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**program_env(home), **env},
        cwd=home,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def records(stderr: str, level: str) -> list[str]:
    return [line for line in stderr.splitlines() if RECORD_START.match(line) and level in line]


def test_a_bad_setting_is_logged_and_exits_2_before_serving(home: Path) -> None:
    result = run_demo("open('served', 'w')", home, NANOCLAW_LOG_LEVEL="loud")
    assert result.returncode == EXIT_CONFIG, result.stderr
    (record,) = records(result.stderr, "ERROR")
    assert " demo bad settings: " in record
    assert "NANOCLAW_LOG_LEVEL='loud' is not a log level" in record
    assert result.stdout == ""
    assert not (home / "served").exists()


def test_a_config_error_from_serve_exits_2(home: Path) -> None:
    body = """
    from nanoclaw_common.errors import ConfigError
    raise ConfigError("the proxy has no key to add")
    """
    result = run_demo(body, home)
    assert result.returncode == EXIT_CONFIG, result.stderr
    (record,) = records(result.stderr, "ERROR")
    assert "bad settings: the proxy has no key to add" in record
    assert "Traceback" not in result.stderr


def test_an_uncaught_error_is_logged_as_died_masked_and_exits_1(home: Path) -> None:
    body = """
    def deeper():
        raise RuntimeError("upstream refused " + settings.anthropic_api_key)
    deeper()
    """
    result = run_demo(body, home)
    assert result.returncode == EXIT_DIED, result.stderr
    (record,) = records(result.stderr, "CRITICAL")
    assert "demo died: RuntimeError('upstream refused ***')" in record
    assert "Traceback (most recent call last)" in result.stderr
    assert "in deeper" in result.stderr
    assert API_KEY not in result.stderr + result.stdout
    assert_one_line_records(result.stderr)
    assert result.stdout == ""


def test_serve_returns_the_exit_code_and_holds_the_lock_meanwhile(home: Path) -> None:
    body = """
    held = open(layout.run_dir / "demo.lock").read()
    open("held", "w").write(held)
    return 0 if held == f"{os.getpid()}\\n" else 7
    """
    result = run_demo(body, home)
    assert result.returncode == 0, result.stderr + (home / "held").read_text()
    take_lock(Layout(home), "demo")  # released at exit


def test_a_second_instance_is_refused_naming_the_holder(home: Path) -> None:
    layout = Layout(home)
    layout.ensure()
    held = take_lock(layout, "demo")
    try:
        result = run_demo("open('served', 'w')", home)
    finally:
        os.close(held)
    assert result.returncode == EXIT_LOCKED, result.stderr
    (record,) = records(result.stderr, "ERROR")
    assert f"another demo (pid {os.getpid()}) holds {lock_path(layout, 'demo')}: not starting" in (
        record
    )
    assert not (home / "served").exists()
    assert run_demo("open('served', 'w')", home).returncode == 0  # free again
    assert (home / "served").exists()


def test_take_lock_raises_already_running_in_process(home: Path) -> None:
    layout = Layout(home)
    layout.ensure()
    held = take_lock(layout, "demo")
    try:
        with pytest.raises(AlreadyRunning, match=rf"another demo \(pid {os.getpid()}\) holds"):
            take_lock(layout, "demo")
        take_lock(layout, "other")  # one lock per program
    finally:
        os.close(held)


def test_a_child_process_never_inherits_the_lock(home: Path) -> None:
    """The proxy's socket keeper outlives the proxy: were the lock inherited, the next proxy
    would be locked out until the keeper exits."""
    body = """
    quiet = subprocess.DEVNULL
    child = subprocess.Popen(["sleep", "60"], close_fds=False, stdout=quiet, stderr=quiet)
    open("child", "w").write(str(child.pid))
    """
    result = run_demo(body, home)
    assert result.returncode == 0, result.stderr
    child = int((home / "child").read_text())
    try:
        os.close(take_lock(Layout(home), "demo"))
    finally:
        os.kill(child, signal.SIGKILL)


def run_program_module(program: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"nanoclaw_{program}"],
        capture_output=True,
        text=True,
        env={**program_env(home), "SUPERVISOR_SERVER_URL": "unix:///nonexistent.sock", **env},
        cwd=home,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("program", PROGRAMS)
def test_every_program_logs_a_bad_setting_and_exits_2(program: str, home: Path) -> None:
    """Through the logger, never on stdout (the watchdog's stdout is supervisord's event
    protocol)."""
    result = run_program_module(program, home, NANOCLAW_LOG_LEVEL="loud")
    assert result.returncode == EXIT_CONFIG, result.stderr
    (record,) = records(result.stderr, "ERROR")
    assert f" {program} bad settings: " in record and "NANOCLAW_LOG_LEVEL" in record
    assert result.stdout == ""


@pytest.mark.parametrize("program", PROGRAMS)
def test_every_program_refuses_to_run_beside_another_instance(program: str, home: Path) -> None:
    layout = Layout(home)
    layout.ensure()
    held = take_lock(layout, program)
    try:
        result = run_program_module(program, home)
    finally:
        os.close(held)
    assert result.returncode == EXIT_LOCKED, result.stderr
    (record,) = records(result.stderr, "ERROR")
    assert f"another {program} (pid {os.getpid()}) holds" in record
    assert result.stdout == ""
    assert not layout.central_db.exists()  # nothing opened before the refusal
