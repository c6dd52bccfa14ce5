"""The real watchdog and the real programs under the real supervisord, as ``nanoclaw up`` runs
them from the checkout's ``supervisord.conf``: every program proves it is alive, and a sweeper
that stops dead in the middle of its loop (SIGSTOP: RUNNING to supervisord, no progress at
all, deaf to SIGTERM, which is what a sweeper blocked forever in one ``open()`` looks like from
outside) is restarted by the watchdog with the reason in its log; the other programs keep
their pids, and ``nanoclaw down`` still stops everything."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import PROGRAMS, Stack
from tests.waiting import wait_until

pytestmark = pytest.mark.podman

BEATING = ("router", "delivery", "sweeper", "proxy")
SWEEPER_STALE_S = 3
SWEEPER_STOPWAIT_S = 30  # supervisord.conf: a hung sweeper ignores TERM and is KILLed then


@pytest.fixture
def stack() -> Iterator[Stack]:
    # No model call is made: the proxy needs a key and an address, nothing answers there.
    stack = Stack.create(api_url="http://127.0.0.1:9", api_key="sk-ant-unused", prefix="nc-wd-")
    # supervisord passes its environment on to every program, the watchdog included.
    stack.env["NANOCLAW_WATCHDOG_PROGRAM_STALE_S"] = f"sweeper={SWEEPER_STALE_S}"
    try:
        yield stack
    finally:
        stack.destroy()


def proof_s(stack: Stack, program: str) -> float:
    path = stack.layout.alive_dir / program
    return path.stat().st_mtime if path.exists() else 0.0


@pytest.mark.timeout(300)
def test_the_watchdog_restarts_a_sweeper_that_stopped_making_progress(stack: Stack) -> None:
    assert stack.nanoclaw("init").returncode == 0
    started = stack.nanoclaw("--json", "up", "--timeout", "120", timeout=180)
    assert started.returncode == 0, started.stderr + started.stdout
    assert json.loads(started.stdout) == dict.fromkeys(PROGRAMS, "RUNNING")
    assert "watchdog" in PROGRAMS

    # Every program proves it is alive, from its loop, about every second.
    up_at = time.time()
    wait_until(
        lambda: all(proof_s(stack, program) > up_at + 1 for program in BEATING),
        timeout_s=30,
        what="every program's beat",
        poll_s=0.2,
    )
    pids = stack.pids()
    assert set(pids) == PROGRAMS

    sweeper = pids["sweeper"]
    os.kill(sweeper, signal.SIGSTOP)
    try:
        done = wait_until(
            lambda: re.search(rf"restarted sweeper: pid {sweeper} -> (\d+)", stack.log("watchdog")),
            timeout_s=SWEEPER_STALE_S + 2 * 5 + SWEEPER_STOPWAIT_S + 60,
            what="the watchdog's restart of the sweeper",
            poll_s=0.2,
        )
    finally:
        if Path(f"/proc/{sweeper}").exists():
            os.kill(sweeper, signal.SIGCONT)
    restarted = int(done[1])
    line = next(
        ln
        for ln in stack.log("watchdog").splitlines()
        if f"restarting sweeper (pid {sweeper})" in ln
    )
    age = re.search(r"no proof of life for (\d+) s \(limit (\d+) s\)", line)
    assert age is not None and int(age[1]) > SWEEPER_STALE_S and int(age[2]) == SWEEPER_STALE_S
    # supervisord KILLed it at the end of its stopwaitsecs: TERM reached a stopped process.
    assert "killing 'sweeper'" in stack.log("supervisord")

    # The new sweeper sweeps (its proof moves again); nothing else was touched.
    restarted_at = time.time()
    wait_until(
        lambda: proof_s(stack, "sweeper") > restarted_at,
        timeout_s=30,
        what="the new sweeper's beat",
        poll_s=0.2,
    )
    wait_until(
        lambda: stack.processes()["sweeper"]["statename"] == "RUNNING",
        timeout_s=30,
        what="RUNNING",
        poll_s=0.2,
    )
    stack.assert_up({**pids, "sweeper": restarted})
    assert stack.log("sweeper").count("sweeping every") == 2

    stopped = stack.nanoclaw("down", timeout=180)
    assert stopped.returncode == 0, stopped.stderr + stopped.stdout
    assert not any(Path(f"/proc/{pid}").exists() for pid in (restarted, pids["watchdog"]))
