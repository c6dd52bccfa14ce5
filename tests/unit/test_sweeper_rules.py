"""The sweeper's pure rules, driven by `now`: liveness verdicts, capacity, backoff, recurrence."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nanoclaw_common.errors import Refused
from nanoclaw_sweeper.liveness import (
    KILLS,
    Observation,
    Policy,
    Verdict,
    judge,
    plan_capacity,
)
from nanoclaw_sweeper.recurrence import next_occurrence, validate_cron

POLICY = Policy(
    spawn_grace_ms=30_000, heartbeat_timeout_ms=60_000, idle_timeout_ms=1_800_000, max_turns=50
)
T0 = 1_800_000_000_000


def running(**changes: object) -> Observation:
    base = Observation(
        running=True,
        run_started_at_ms=T0,
        heartbeat_ms=T0 + 1_000,
        claims=1,
        due=0,
        pending=1,
        turns=1,
        last_activity_ms=T0,
    )
    return msgspec.structs.replace(base, **changes)


def stopped(**changes: object) -> Observation:
    return msgspec.structs.replace(
        running(running=False, heartbeat_ms=None, claims=0, pending=0), **changes
    )


def test_spawn_grace_then_kill_without_heartbeat() -> None:
    fresh = running(heartbeat_ms=None)
    assert judge(fresh, POLICY, T0 + 29_999) is Verdict.GRACE
    assert judge(fresh, POLICY, T0 + 30_000) is Verdict.KILL_NO_HEARTBEAT


def test_a_previous_runs_heartbeat_does_not_count() -> None:
    """A stale mtime left by the last container must not get the new one killed (#1941)."""
    leftover = running(heartbeat_ms=T0 - 3_600_000)
    assert judge(leftover, POLICY, T0 + 1_000) is Verdict.GRACE


def test_fresh_heartbeat_keeps_a_long_tool_alive() -> None:
    """The timer thread beats during a 20-minute tool call: no kill (#3455, #3251)."""
    obs = running(heartbeat_ms=T0 + 1_200_000)
    assert judge(obs, POLICY, T0 + 1_200_000 + 59_000) is Verdict.OK


def test_stale_heartbeat_kills() -> None:
    obs = running(heartbeat_ms=T0 + 5_000)
    assert judge(obs, POLICY, T0 + 5_000 + 60_000) is Verdict.OK
    assert judge(obs, POLICY, T0 + 5_000 + 60_001) is Verdict.KILL_STALE


def test_turn_ceiling() -> None:
    assert judge(running(turns=50), POLICY, T0 + 2_000) is Verdict.OK
    assert judge(running(turns=51), POLICY, T0 + 2_000) is Verdict.KILL_TURNS


def test_idle_stop_only_without_pending_work() -> None:
    later = T0 + 1_800_000
    quiet = running(claims=0, pending=0, heartbeat_ms=later - 1_000)
    assert judge(quiet, POLICY, later - 1) is Verdict.OK
    assert judge(quiet, POLICY, later) is Verdict.STOP_IDLE
    assert judge(running(claims=0, pending=1, heartbeat_ms=later), POLICY, later) is Verdict.OK
    busy_recently = running(claims=0, pending=0, heartbeat_ms=later, last_activity_ms=later - 10)
    assert judge(busy_recently, POLICY, later) is Verdict.OK


def test_stopped_sessions() -> None:
    assert judge(stopped(), POLICY, T0) is Verdict.OK
    assert judge(stopped(due=2, pending=2), POLICY, T0) is Verdict.WAKE
    # Leftover claims are settled before anything is woken again.
    assert judge(stopped(claims=1, due=1), POLICY, T0) is Verdict.SETTLE


@given(
    heartbeat_age=st.integers(0, 10**7),
    run_age=st.integers(0, 10**7),
    claims=st.integers(0, 5),
    pending=st.integers(0, 5),
)
def test_fresh_beating_runs_are_never_killed(
    heartbeat_age: int, run_age: int, claims: int, pending: int
) -> None:
    """No kill loop: a run whose heartbeat is within the timeout is never killed, whatever
    its claims or age, unless it exceeds the turn ceiling."""
    now = T0 + 10**8
    obs = running(
        run_started_at_ms=now - run_age,
        heartbeat_ms=now - min(heartbeat_age, run_age),
        claims=claims,
        pending=pending,
        turns=3,
    )
    verdict = judge(obs, POLICY, now)
    if min(heartbeat_age, run_age) <= POLICY.heartbeat_timeout_ms:
        assert verdict not in KILLS


def test_plan_capacity() -> None:
    assert plan_capacity(["a", "b"], 0, [], 5) == (["a", "b"], [])
    assert plan_capacity(["a", "b"], 4, [], 5) == (["a"], [])
    assert plan_capacity(["a", "b"], 5, ["idle1", "idle2", "idle3"], 5) == (
        ["a", "b"],
        ["idle1", "idle2"],
    )
    assert plan_capacity(["a", "b", "c"], 5, ["idle1"], 5) == (["a"], ["idle1"])
    assert plan_capacity([], 5, ["idle1"], 5) == ([], [])


PARIS = ZoneInfo("Europe/Paris")


def paris(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=PARIS).timestamp() * 1000)


def test_next_occurrence_from_scheduled_time_no_drift() -> None:
    # The 09:00 run completed at 09:07; the next one is 09:00 tomorrow, not 09:07.
    assert next_occurrence(
        "0 9 * * *", paris(2026, 5, 4, 9), "Europe/Paris", paris(2026, 5, 4, 9, 7)
    ) == paris(2026, 5, 5, 9)


def test_next_occurrence_across_dst() -> None:
    # Clocks go forward on 2026-03-29: 09:00 stays 09:00 local time.
    nxt = next_occurrence(
        "0 9 * * *", paris(2026, 3, 28, 9), "Europe/Paris", paris(2026, 3, 28, 9, 1)
    )
    assert nxt == paris(2026, 3, 29, 9)
    assert nxt - paris(2026, 3, 28, 9) == 23 * 3_600_000


def test_missed_occurrences_collapse_into_one() -> None:
    down_until = paris(2026, 5, 10, 12)
    first = next_occurrence("0 9 * * *", paris(2026, 5, 1, 9), "Europe/Paris", down_until)
    assert first == paris(2026, 5, 10, 9)  # the latest missed slot: runs once, now
    second = next_occurrence("0 9 * * *", first, "Europe/Paris", down_until + 60_000)
    assert second == paris(2026, 5, 11, 9)  # then back on schedule


def test_invalid_cron_is_refused() -> None:
    with pytest.raises(Refused, match="invalid cron"):
        validate_cron("every day at nine")
    with pytest.raises(Refused):
        next_occurrence("61 * * * *", T0, "UTC", T0)


def test_a_hung_tool_is_killed_though_the_heartbeat_is_fresh() -> None:
    """The heartbeat thread beats while the main thread is stuck in a tool (a FIFO read, a
    runaway regex): the tool's own wall-clock ceiling catches it."""
    start = T0 + 2_000
    now = start + POLICY.tool_ceiling_ms + POLICY.ceiling_grace_ms
    hung = running(heartbeat_ms=now - 1_000, tool_started_at_ms=start, oldest_claim_ms=start)
    assert judge(hung, POLICY, now) is Verdict.OK
    assert judge(hung, POLICY, now + 1) is Verdict.KILL_TOOL_TIME


def test_a_declared_long_tool_is_not_a_hang() -> None:
    """`bash` with a 2-hour timeout, or a question waiting a day, widens both ceilings."""
    start = T0 + 2_000
    declared = 2 * 3_600_000
    now = start + declared + POLICY.ceiling_grace_ms
    long_tool = running(
        heartbeat_ms=now - 1_000,
        tool_started_at_ms=start,
        tool_declared_timeout_ms=declared,
        oldest_claim_ms=start,
    )
    assert judge(long_tool, POLICY, now) is Verdict.OK
    assert judge(long_tool, POLICY, now + 1) is Verdict.KILL_TOOL_TIME


def test_a_batch_in_work_too_long_is_killed() -> None:
    """No tool in flight, but the batch has been claimed for longer than the ceiling: a model
    loop that never finishes its turn."""
    claimed = T0 + 2_000
    now = claimed + POLICY.claim_ceiling_ms
    looping = running(heartbeat_ms=now - 1_000, oldest_claim_ms=claimed)
    assert judge(looping, POLICY, now) is Verdict.OK
    assert judge(looping, POLICY, now + 1) is Verdict.KILL_CLAIM_TIME
