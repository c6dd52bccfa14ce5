"""The real watchdog as the event listener of a real supervisord, against stand-in programs
(``standin.py``) that beat like ours and misbehave on demand: a hung program is restarted
with its reason in the watchdog's log while a healthy one keeps its pid, a program over its
RSS ceiling is restarted, one that keeps hanging is not restarted in a loop, and a restart a
killed watchdog left half done is finished by the next one.

supervisord's finest tick is TICK_5, and the limits here are seconds: each test waits for what
it expects (a new pid, a log line) with a deadline, never for a fixed time."""

from __future__ import annotations

import os
import re
import signal
import time

from tests.integration.watchdog.conftest import HOG_RSS_MAX_MB, STALE_S, Supervised
from tests.waiting import wait_until


def test_a_hung_program_is_restarted_and_a_healthy_one_is_not(supervised: Supervised) -> None:
    healthy = supervised.running_pid("healthy")
    stall = supervised.running_pid("stall")
    wait_until(
        lambda: supervised.proof_s("stall"), timeout_s=10, what="stall's first beat", poll_s=0.1
    )

    os.kill(stall, signal.SIGUSR1)  # its loop blocks: no more beats, TERM ignored
    hung_at = time.time()
    restarted = supervised.new_pid("stall", stall)

    log = supervised.log("watchdog")
    [line] = [ln for ln in log.splitlines() if f"restarting stall (pid {stall})" in ln]
    age_s = int(re.search(r"no proof of life for (\d+) s", line)[1])  # type: ignore[index]
    assert age_s > STALE_S and f"(limit {STALE_S} s)" in line
    assert f"restarted stall: pid {stall} -> {restarted}" in log
    # The new process beats again; the healthy one was never touched.
    wait_until(
        lambda: (supervised.proof_s("stall") or 0) > hung_at + STALE_S,
        timeout_s=10,
        what="a new beat",
        poll_s=0.1,
    )
    assert supervised.pid("healthy") == healthy
    assert "restarting healthy" not in supervised.log("watchdog")


def test_a_program_over_its_rss_ceiling_is_restarted(supervised: Supervised) -> None:
    hog = supervised.running_pid("hog")
    os.kill(hog, signal.SIGUSR2)  # +200 MB, ceiling 100 MB
    restarted = supervised.new_pid("hog", hog)

    log = supervised.log("watchdog")
    [line] = [ln for ln in log.splitlines() if f"restarting hog (pid {hog})" in ln]
    rss_mb = int(re.search(r"RSS (\d+) MB over its ceiling of (\d+) MB", line)[1])  # type: ignore[index]
    assert rss_mb > HOG_RSS_MAX_MB and f"ceiling of {HOG_RSS_MAX_MB} MB" in line
    assert f"restarted hog: pid {hog} -> {restarted}" in log
    # A graceful stop: it was healthy, so it exited on supervisord's TERM, not on its KILL.
    assert "stopped: hog (exit status 0)" in supervised.log("supervisord")


def test_a_program_that_keeps_hanging_is_not_restarted_in_a_loop(
    supervised: Supervised,
) -> None:
    # `stuck` hangs right after its first beat at every start (NANOCLAW_HOME/hang-stuck).
    first = wait_until(
        lambda: re.search(r"restarted stuck: pid (\d+) -> (\d+)", supervised.log("watchdog")),
        timeout_s=60,
        what="the first restart",
        poll_s=0.1,
    )
    again = int(first[2])
    # It hangs again at once; the next look finds it stale, and the backoff holds it back.
    held = wait_until(
        lambda: re.search(
            r"stuck \(pid (\d+)\): no proof of life.*not before (\d+) s from now",
            supervised.log("watchdog"),
        ),
        timeout_s=60,
        what="the held-back restart",
        poll_s=0.1,
    )
    assert int(held[1]) == again
    assert int(held[2]) > 500  # the backoff is 600 s
    log = supervised.log("watchdog")
    assert log.count("restarting stuck") == 1
    assert supervised.pid("stuck") == again


def test_a_restart_a_killed_watchdog_left_half_done_is_finished(
    supervised: Supervised,
) -> None:
    # The watchdog stopped `spare` and was killed before it could start it again: its marker
    # is left in run/watchdog/, and `spare` is STOPPED.
    spare = supervised.running_pid("spare")
    supervised.rpc.supervisor.stopProcess("spare", True)
    (supervised.home / "run" / "watchdog").mkdir(exist_ok=True)
    (supervised.home / "run" / "watchdog" / "spare").touch()
    watchdog = supervised.pid("watchdog")
    os.kill(watchdog, signal.SIGKILL)  # supervisord starts a new one (autorestart)

    restarted = supervised.new_pid("spare", spare)
    assert "finishing the restart of spare that an earlier watchdog began" in supervised.log(
        "watchdog"
    )
    assert supervised.pid("watchdog") != watchdog
    assert not (supervised.home / "run" / "watchdog" / "spare").exists()
    assert restarted != spare
