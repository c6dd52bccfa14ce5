"""The watchdog's rules (``nanoclaw_watchdog.rules``) as a pure function: observations,
memory, limits and ``now`` in; actions and memory out. No clock, no supervisord."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

import msgspec

from nanoclaw_common.settings import Settings
from nanoclaw_watchdog.rules import (
    Action,
    Hold,
    Limits,
    Memory,
    NoFirstProof,
    Observation,
    OverMemory,
    Restart,
    Stale,
    decide,
)

START = 1_000_000.0  # epoch seconds when the program started
LIMITS = Limits(
    stale_s={"sweeper": 60.0, "router": 60.0},
    rss_max_mb={"router": 0, "podman-api": 1024},
    default_rss_max_mb=512,
    start_grace_s=30.0,
    backoff_s=300.0,
    backoff_max_s=3600.0,
)


def seen(
    name: str = "sweeper",
    *,
    proof_s: float | None = START + 1,
    running: bool = True,
    pid: int = 42,
    started_s: float = START,
    rss_mb: float | None = 80.0,
) -> Observation:
    return Observation(name, running, pid, started_s, proof_s, rss_mb)


class Run:
    """Feeds ticks to ``decide``, carrying the memory along, as ``Watchdog.tick`` does."""

    def __init__(self, limits: Limits = LIMITS) -> None:
        self.limits = limits
        self.memory: dict[str, Memory] = {}

    def tick(self, now_s: float, *observations: Observation) -> Sequence[Action]:
        decision = decide(observations, self.memory, self.limits, now_s)
        self.memory = decision.memory
        return decision.actions

    def ticks(self, times: Iterable[float], *observations: Observation) -> list[Action]:
        return [action for now in times for action in self.tick(now, *observations)]


# -- hung -------------------------------------------------------------------------------------


def test_a_fresh_proof_is_healthy() -> None:
    run = Run()
    assert run.ticks([START + 10, START + 15], seen(proof_s=START + 9)) == []


def test_a_stale_proof_restarts_the_program_with_its_age_and_limit() -> None:
    run = Run()
    proof = START + 100
    assert run.tick(proof + 58, seen(proof_s=proof)) == []  # first look
    assert run.tick(proof + 61, seen(proof_s=proof)) == [
        Restart("sweeper", 42, Stale(age_s=61, limit_s=60), restarts=1)
    ]
    assert str(Stale(age_s=61.4, limit_s=60)) == "no proof of life for 61 s (limit 60 s)"


def test_staleness_needs_two_looks_at_the_same_proof() -> None:
    # A wall clock stepped forward an hour: every proof looks old at one tick, but a healthy
    # program has beaten again by the next.
    run = Run()
    assert run.tick(START + 10, seen(proof_s=START + 9)) == []
    assert run.tick(START + 3600, seen(proof_s=START + 14)) == []
    assert run.tick(START + 3605, seen(proof_s=START + 3604)) == []
    # The first look at a program (a watchdog just started) is no evidence either.
    assert Run().tick(START + 3600, seen(proof_s=START + 14)) == []


def test_a_program_that_never_beat_since_its_start_gets_the_start_up_grace() -> None:
    run = Run()
    older_run = START - 500  # the proof file is the previous process's
    assert run.ticks([START + 5, START + 29, START + 59], seen(proof_s=older_run)) == []
    [restart] = run.tick(START + 61, seen(proof_s=older_run))
    assert isinstance(restart, Restart)
    # The grace is never shorter than the program's staleness limit (60 s > 30 s here).
    assert restart.reason == NoFirstProof(age_s=61, grace_s=60)
    assert "since it started 61 s ago" in str(restart.reason)
    # No proof file at all is the same.
    other = Run()
    assert other.tick(START + 59, seen(proof_s=None)) == []
    [restart] = other.tick(START + 61, seen(proof_s=None))
    assert isinstance(restart, Restart) and isinstance(restart.reason, NoFirstProof)


def test_the_start_up_grace_counts_when_it_is_longer_than_the_staleness_limit() -> None:
    limits = msgspec.structs.replace(LIMITS, start_grace_s=120.0)
    run = Run(limits)
    assert run.ticks([START + 61, START + 119], seen(proof_s=None)) == []
    [restart] = run.tick(START + 121, seen(proof_s=None))
    assert isinstance(restart, Restart)
    assert restart.reason == NoFirstProof(age_s=121, grace_s=120)


def test_a_program_that_is_not_running_is_never_judged() -> None:
    # STARTING, BACKOFF, STOPPING, STOPPED, EXITED, FATAL: supervisord's business.
    run = Run()
    hung = seen(proof_s=START + 1, running=False, rss_mb=None)
    assert run.ticks([START + 100, START + 200, START + 300], hung) == []


def test_programs_without_a_staleness_limit_are_not_judged_for_liveness() -> None:
    run = Run()
    podman = seen("podman-api", proof_s=None)
    assert run.ticks([START + 100, START + 1000], podman) == []


# -- memory -----------------------------------------------------------------------------------


def test_rss_over_the_ceiling_restarts_the_program() -> None:
    run = Run()
    assert run.tick(START + 10, seen(rss_mb=512.0)) == []  # at the ceiling is not over it
    assert run.tick(START + 15, seen(rss_mb=530.4)) == [
        Restart("sweeper", 42, OverMemory(rss_mb=530.4, ceiling_mb=512), restarts=1)
    ]
    assert str(OverMemory(rss_mb=530.4, ceiling_mb=512)) == "RSS 530 MB over its ceiling of 512 MB"


def test_rss_ceilings_are_per_program_and_zero_means_none() -> None:
    run = Run()
    router = seen("router", rss_mb=5000.0, pid=7)
    podman = seen("podman-api", rss_mb=900.0, pid=8)
    assert run.tick(START + 10, router, podman) == []
    [restart] = run.tick(START + 15, router, replace(podman, rss_mb=1100.0))
    assert isinstance(restart, Restart) and restart.program == "podman-api"
    assert restart.reason == OverMemory(rss_mb=1100.0, ceiling_mb=1024)


def test_an_unknown_rss_is_not_judged() -> None:
    assert Run().tick(START + 10, seen(rss_mb=None)) == []


def test_a_hang_is_reported_before_the_memory() -> None:
    run = Run()
    both = seen(proof_s=START + 1, rss_mb=9999.0)
    run.tick(START + 2, replace(both, rss_mb=1.0))
    [restart] = run.tick(START + 100, both)
    assert isinstance(restart, Restart) and isinstance(restart.reason, Stale)


# -- backoff ----------------------------------------------------------------------------------


def test_a_program_that_keeps_hanging_is_restarted_with_a_doubling_backoff() -> None:
    run = Run()
    restarts: list[float] = []
    holds: list[Hold] = []
    pid = 42
    # Every process hangs right after its start: its proof is never newer than its start.
    started = START
    now = START
    while now < START + 4 * 3600:
        now += 5  # TICK_5
        for action in run.tick(now, seen(pid=pid, started_s=started, proof_s=None)):
            if isinstance(action, Restart):
                restarts.append(now)
                pid, started = pid + 1, now + 1  # supervisord starts a new process
            else:
                assert isinstance(action, Hold)
                holds.append(action)
    # The first restart comes once the grace is over (60 s, seen at the next tick); then
    # 5, 10, 20 and 40 minutes later, then every hour.
    assert [r - START for r in restarts] == [65, 365, 965, 2165, 4565, 8165, 11765]
    # One log line per wait, not one per tick, naming when the wait ends.
    assert len(holds) == len(restarts)
    assert [h.next_restart_s for h in holds[:-1]] == restarts[1:]
    assert [h.restarts for h in holds] == [1, 2, 3, 4, 5, 6, 7]


def test_the_hold_is_logged_once_per_wait_with_when_the_next_restart_may_come() -> None:
    run = Run()
    proof = START + 1
    run.tick(START + 2, seen(proof_s=proof))
    [first] = run.tick(START + 70, seen(proof_s=proof))
    assert isinstance(first, Restart) and first.restarts == 1
    # The new process (pid 43) beat once at START + 72, then hung.
    new = seen(pid=43, started_s=START + 71, proof_s=START + 72)
    run.tick(START + 75, new)
    [hold] = run.tick(START + 135, new)
    assert hold == Hold(
        program="sweeper",
        pid=43,
        reason=Stale(age_s=63, limit_s=60),
        restarts=1,
        since_restart_s=65,
        next_restart_s=START + 70 + 300,
    )
    assert run.ticks([START + 140 + 5 * i for i in range(46)], new) == []  # until 365
    [second] = run.tick(START + 370, new)
    assert isinstance(second, Restart) and second.restarts == 2


def test_the_backoff_starts_over_after_an_hour_in_health() -> None:
    run = Run()
    hung = seen(proof_s=START + 1)
    run.tick(START + 2, hung)
    [first] = run.tick(START + 70, hung)
    assert isinstance(first, Restart)
    healthy_until = START + 3700
    now = START + 75
    while now < healthy_until:
        assert run.tick(now, seen(pid=43, started_s=START + 71, proof_s=now - 1)) == []
        now += 5
    # Hung again after more than an hour in health: restarted at once, as a first restart.
    proof = now - 1
    run.tick(now, seen(pid=43, started_s=START + 71, proof_s=proof))
    [again] = run.tick(proof + 61, seen(pid=43, started_s=START + 71, proof_s=proof))
    assert isinstance(again, Restart) and again.restarts == 1


def test_trouble_within_the_hour_keeps_the_count() -> None:
    run = Run()
    hung = seen(proof_s=START + 1)
    run.tick(START + 2, hung)
    run.tick(START + 70, hung)  # restart 1
    # Healthy for 20 minutes, then hung again: past the 5 minute wait, so restarted, as the
    # second in a row (the next wait is 10 minutes).
    back = START + 70 + 1200
    new = seen(pid=43, started_s=START + 71, proof_s=back)
    run.tick(back + 1, new)
    [restart] = run.tick(back + 61, new)
    assert isinstance(restart, Restart) and restart.restarts == 2


def test_programs_no_longer_listed_are_forgotten() -> None:
    run = Run()
    run.tick(START + 2, seen(), seen("router", pid=7))
    run.tick(START + 7, seen())
    assert set(run.memory) == {"sweeper"}


# -- limits from settings ---------------------------------------------------------------------


def test_limits_from_settings() -> None:
    settings = Settings(
        watchdog_stale_s=45.0,
        watchdog_program_stale_s={"sweeper": 120.0, "proxy": 0.0, "extra": 5.0},
        watchdog_program_rss_max_mb={"podman-api": 1024, "router": 0},
    )
    limits = Limits.from_settings(settings)
    assert limits.stale_s == {"router": 45.0, "delivery": 45.0, "sweeper": 120.0, "extra": 5.0}
    assert limits.rss_ceiling_mb("podman-api") == 1024
    assert limits.rss_ceiling_mb("router") is None
    assert limits.rss_ceiling_mb("delivery") == 512
    assert limits.backoff_after(1) == 300 and limits.backoff_after(3) == 1200
    assert limits.backoff_after(10) == 3600
